"""A soak run's section of docs/BENCHMARKS.md (scripts/soak.sh): what ran, the verdicts, what
Redis kept, the samples. Reads the samples' CSV and enigma-bench's JSON report itself; prints
the section and exits 1 if any verdict fails (scripts/soak.sh says which criteria and why)."""

import argparse
import csv
import json
import statistics
import sys

# What Redis may keep per user after the drain, by design until its TTL (scripts/soak.sh).
ALLOWED_PER_USER = 8192
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
    """Every sample under load within ±10 % of the median of minutes 1–5; last 5 minutes ±5 %."""
    if len(load) < 10:
        return False, "- RSS flat: FAIL (fewer than 10 samples under load)"
    rss = [int(r["rss_kb"]) for r in load]
    ref, last = statistics.median(rss[:5]), statistics.median(rss[-5:])
    worst = max(abs(v - ref) / ref for v in rss)
    trend = (last - ref) / ref
    flat = worst <= 0.10 and abs(trend) <= 0.05
    return flat, (
        f"- RSS flat within ±10 % of minutes 1–5, no trend: {'PASS' if flat else 'FAIL'} "
        f"(median of minutes 1–5: {ref:.0f} KiB, furthest sample: {worst * 100:.1f} %, "
        f"median of the last 5 minutes: {trend * 100:+.1f} %)"
    )


def redis_verdict(drained, baseline, left, users):
    """Back to the baseline (before any traffic) but for what is kept per user, no message left."""
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


def settled_rss(rows):
    settled = [r for r in rows if r["phase"] == "settled"]
    return f"{settled[-1]['rss_kb']} KiB" if settled else "not sampled"


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
    """A counter summed over enigma-bench's steps; None (shown as `?`, and a failure) without a report."""

    def __init__(self, report):
        self.steps = report.get("steps", [])

    def __call__(self, key):
        if not self.steps:
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
    p.add_argument("bench_json")
    for name in ("left", "status", "pairs", "rate", "minutes"):
        p.add_argument(f"--{name}", type=int, required=True)
    for name in ("stamp", "started", "commit", "residue"):
        p.add_argument(f"--{name}", required=True)
    a = p.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    try:
        report = json.load(open(a.bench_json))
    except (OSError, ValueError):
        report = {}  # enigma-bench failed: every figure `?`, the losses verdict FAIL
    total = Totals(report)
    p99 = report["steps"][-1]["latency_ms"]["p99"] if total.steps else None

    load = [r for r in rows if r["phase"] == "load"]
    phase = lambda name: [r for r in rows if r["phase"] == name][-1]  # noqa: E731
    verdicts = [
        quiet_verdict(load),
        rss_verdict(load),
        redis_verdict(phase("drained"), int(phase("baseline")["redis_used_memory"]), a.left, 2 * a.pairs),
        loss_verdict(total, a.status),
    ]
    ok = all(passed for passed, _ in verdicts)
    lines = [
        "",
        f"## Soak ({a.started}, commit {a.commit})",
        "",
        f"`make soak` (scripts/soak.sh): one relay, one Redis, {a.pairs} pairs ({clients(report)}),",
        f"{a.rate} msgs/s for {a.minutes} min, sampled every minute; {shown(total('sent'))} messages sent, "
        f"p99 latency {shown(p99)} ms;",
        f"{shown(total('reconnects'))} reconnections, {shown(total('acknowledged'))} deliveries acknowledged, "
        f"{shown(total('redelivered'))} re-delivered as enigma.v1 allows.",
        f"CSV and plot: `docs/soak/soak-{a.stamp}.csv`, `docs/soak/soak-{a.stamp}.png`.",
        "",
        *(line for _, line in verdicts),
        f"- overall: {'PASS' if ok else 'FAIL'}",
        "",
        f"Not judged: the relay's RSS with no client, settled after the drain, {settled_rss(rows)} "
        f"(before any client: {phase('baseline')['rss_kb']} KiB); compared between a short and a long run, "
        "it tells state that accumulates from the allocator's wandering.",
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
