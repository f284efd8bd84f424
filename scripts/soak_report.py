"""A soak run's section of docs/BENCHMARKS.md (scripts/soak.sh): what ran, the verdicts, what
Redis kept, the samples. Reads the samples' CSV and enigma-bench's JSON reports itself (the
run's, then the reference's); prints the section and exits 1 if any verdict fails
(scripts/soak.sh says which criteria and why)."""

import argparse
import csv
import json
import statistics
import sys

# What Redis may keep per user after the drain, by design until its TTL (scripts/soak.sh).
ALLOWED_PER_USER = 8192
# How much higher the relay may settle, with no client, after the run than after the reference.
SETTLED_ALLOWED = 0.05
# What the machine's other processes and the hypervisor (steal) may take in any minute under
# load (% of one core): more, and the relay was starved, so its RSS and latency say nothing
# about the relay (scripts/soak.sh).
OTHERS_ALLOWED_PCT = 25.0
COLUMNS = ("minute", "phase", "rss_kb", "cpu_pct", "others_cpu_pct", "steal_pct", "redis_used_memory", "redis_keys")


def quiet_verdict(load):
    """A valid soak has the machine to itself: no build or test run beside it."""
    if not load or any(r.get("others_cpu_pct") in (None, "") for r in load):
        return False, "- the machine to itself: FAIL (not measured)"
    busiest = max(float(r["others_cpu_pct"]) + float(r.get("steal_pct") or 0) for r in load)
    quiet = busiest <= OTHERS_ALLOWED_PCT
    return quiet, (
        f"- the machine to itself (other processes and steal ≤ {OTHERS_ALLOWED_PCT:.0f} % of a core every "
        f"minute under load): {'PASS' if quiet else 'FAIL: not a valid soak'} (most: {busiest:.1f} %)"
    )


def rss_verdict(load):
    """Every sample of the run within ±10 % of the median of its first 5 minutes."""
    if len(load) < 10:
        return False, "- relay RSS within a band: FAIL (fewer than 10 samples under load)"
    if any(not r["rss_kb"] for r in load):
        return False, "- relay RSS within a band: FAIL (a sample without the relay's RSS: it had exited)"
    rss = [int(r["rss_kb"]) for r in load]
    ref = statistics.median(rss[:5])
    worst = max(abs(v - ref) / ref for v in rss)
    within = worst <= 0.10
    return within, (
        f"- relay RSS within ±10 % of the median of the run's first 5 minutes: {'PASS' if within else 'FAIL'} "
        f"({ref:.0f} KiB; furthest sample {worst * 100:.1f} %; median of the last 5 minutes "
        f"{(statistics.median(rss[-5:]) - ref) / ref * 100:+.1f} %, not judged)"
    )


def kept_verdict(reference, after):
    """The relay with no client settles after the run at most SETTLED_ALLOWED above the reference."""
    if reference is None or after is None or not reference["rss_kb"] or not after["rss_kb"]:
        return False, "- no state kept: FAIL (no settled sample after the reference or after the run)"
    grown = (int(after["rss_kb"]) - int(reference["rss_kb"])) / int(reference["rss_kb"])
    kept = grown <= SETTLED_ALLOWED
    return kept, (
        f"- no state kept (the relay with no client, settled, at most +{SETTLED_ALLOWED * 100:.0f} % after the "
        f"run against after the reference): {'PASS' if kept else 'FAIL'} ({reference['rss_kb']} → "
        f"{after['rss_kb']} KiB, {grown * 100:+.1f} %)"
    )


def redis_verdict(drained, baseline, left, users):
    """Back to the baseline (before any traffic) but for what is kept per user, no message left."""
    if drained is None or not drained["redis_used_memory"] or not baseline or not users:
        return False, "- Redis memory back to baseline after the drain: FAIL (not sampled)"
    baseline = int(baseline)
    grown = int(drained["redis_used_memory"]) - baseline
    back = grown <= users * ALLOWED_PER_USER and left == 0
    return back, (
        f"- Redis memory back to baseline after the drain: {'PASS' if back else 'FAIL'} "
        f"({baseline} → {drained['redis_used_memory']} bytes, +{grown}, {grown / users:.0f} a user of {users}, "
        f"allowed {ALLOWED_PER_USER}; {drained['redis_keys']} keys, {left} messages left in inboxes)"
    )


def loss_verdict(total, status):
    """Nothing lost, unsent, refused, duplicated or failed; enigma-bench exited 0."""
    counts = {k: shown(total(k)) for k in ("lost", "unsent", "refused", "duplicated", "errors")}
    zero = status == 0 and all(v == 0 for v in counts.values())
    return zero, (
        f"- 0 lost: {'PASS' if zero else 'FAIL'} (lost {counts['lost']}, unsent {counts['unsent']}, "
        f"refused {counts['refused']}, duplicated {counts['duplicated']}, re-delivered as enigma.v1 allows "
        f"{shown(total('redelivered'))}, reconnections {shown(total('reconnects'))}, errors {counts['errors']} "
        f"{json.dumps(errors_by_kind(total.steps), separators=(',', ':'))}, enigma-bench exit {status})"
    )


def read_report(path):
    """enigma-bench's JSON report; {} if it failed to write one (every figure `?`, losses FAIL)."""
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return {}


def shown(value):
    """A figure of enigma-bench's report, `?` when there is none."""
    return "?" if value is None else value


def errors_by_kind(steps):
    kinds = {}
    for step in steps:
        for kind, n in (step.get("errors_by_kind") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    return kinds


class Totals:
    """A counter summed over every report's steps; None (shown as `?`, and a failure) when a
    report is missing."""

    def __init__(self, reports):
        self.complete = all(report.get("steps") for report in reports)
        self.steps = [step for report in reports for step in report.get("steps", [])]

    def __call__(self, key):
        if not self.complete:
            return None
        return sum(step.get(key) or 0 for step in self.steps)


def clients(report):
    who = ("acknowledging recipients (enigma.v1, every delivery acknowledged)"
           if report.get("acknowledging") else "specification clients")
    churn = report.get("churn_secs")
    if churn:
        return f"{who}, every socket closed and reopened about every {churn:g} s (jittered)"
    return f"{who}, one set of sockets for the whole run"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("csv")
    p.add_argument("bench_json", nargs="+", help="the run's report, then the reference's")
    for name in ("left", "status", "pairs", "rate", "minutes", "reference"):
        p.add_argument(f"--{name}", type=int, required=True)
    for name in ("stamp", "started", "commit", "residue"):
        p.add_argument(f"--{name}", required=True)
    a = p.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    reports = [read_report(path) for path in a.bench_json]
    report = reports[0]  # the run's
    total = Totals(reports)
    p99 = report["steps"][-1]["latency_ms"]["p99"] if report.get("steps") else None

    load = [r for r in rows if r["phase"] == "load"]
    phase = lambda name: ([r for r in rows if r["phase"] == name] or [None])[-1]  # noqa: E731
    runs = len(a.bench_json)
    verdicts = [
        quiet_verdict([r for r in rows if r["phase"] in ("reference", "load")]),
        rss_verdict(load),
        kept_verdict(phase("reference-settled"), phase("settled")),
        redis_verdict(phase("drained"), phase("baseline")["redis_used_memory"], a.left, 2 * a.pairs * runs),
        loss_verdict(total, a.status),
    ]
    ok = all(passed for passed, _ in verdicts)
    lines = [
        "",
        f"## Soak ({a.started}, commit {a.commit})",
        "",
        f"`make soak` (scripts/soak.sh): one relay, one Redis, {a.pairs} pairs ({clients(report)}),",
        f"{a.rate} msgs/s for {a.reference} min (the reference), then with fresh users for {a.minutes} min "
        f"(the run), sampled every minute; {shown(total('sent'))} messages sent, p99 latency of the run "
        f"{shown(p99)} ms;",
        f"{shown(total('reconnects'))} reconnections, {shown(total('acknowledged'))} deliveries acknowledged, "
        f"{shown(total('redelivered'))} re-delivered as enigma.v1 allows.",
        f"CSV and plot: `docs/soak/soak-{a.stamp}.csv`, `docs/soak/soak-{a.stamp}.png`.",
        "",
        *(line for _, line in verdicts),
        f"- overall: {'PASS' if ok else 'FAIL'}",

        "",
        f"Left in Redis after the drain, by kind of key: {a.residue}.",
        "",
        "| minute | phase | relay RSS KiB | relay CPU % | others' CPU % | steal % | Redis used_memory | Redis keys |",
        "|---|---|---|---|---|---|---|---|",
        *("|" + "|".join(r.get(k, "-") for k in COLUMNS) + "|" for r in rows),
        "",
        f"![soak](soak/soak-{a.stamp}.png)",
    ]
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
