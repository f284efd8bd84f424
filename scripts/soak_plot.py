"""Plots a soak run's samples (scripts/soak.sh's CSV): relay RSS and CPU, what other processes
and the hypervisor took, Redis memory and keys per minute, one panel each, to a PNG."""

import csv
import sys

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402


def main(csv_path: str, png_path: str) -> None:
    rows = list(csv.DictReader(open(csv_path)))
    after = {"drained": 0.5, "settled": 0.8, "reference-settled": 0.8}
    x = [int(r["minute"]) + after.get(r["phase"], 0) for r in rows]
    series = [
        ("relay RSS (MiB)", [int(r["rss_kb"]) / 1024 for r in rows]),
        ("relay CPU (% of a core)", [float(r["cpu_pct"]) for r in rows]),
        ("others' CPU + steal (%)",
         [float(r.get("others_cpu_pct") or 0) + float(r.get("steal_pct") or 0) for r in rows]),
        ("Redis used_memory (MiB)", [int(r["redis_used_memory"]) / 2**20 for r in rows]),
        ("Redis keys", [int(r["redis_keys"]) for r in rows]),
    ]
    fig, axes = plt.subplots(len(series), 1, sharex=True, figsize=(8, 11))
    for ax, (label, ys) in zip(axes, series):
        ax.plot(x, ys, marker="o")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minute (the reference, settled with no client, the run, its drain, settled)")
    fig.suptitle("Enigma relay soak")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
