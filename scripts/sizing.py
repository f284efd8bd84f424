#!/usr/bin/env python3
"""The benchmark figures of docs/operations.md, taken from docs/BENCHMARKS.md's latest run.

operations.md marks every figure it takes from the benchmarks: a span
`<!-- bench:NAME -->…<!-- /bench:NAME -->` holds what this script renders for NAME (the sizing
paragraph and table, the memory of an idle socket), so a sizing never quotes a run that is no
longer the one in BENCHMARKS.md.

    python3 scripts/sizing.py --check   # make test: exit 1 (with a diff) if operations.md is stale
    python3 scripts/sizing.py --write   # make bench, after writing BENCHMARKS.md: rewrite the spans
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
OPERATIONS = ROOT / "docs" / "operations.md"

SPAN = re.compile(r"<!-- bench:(?P<name>[a-z_]+) -->(?P<body>.*?)<!-- /bench:(?P=name) -->", re.S)

# How a replica and a shard are planned (the operators' rules, not measurements).
REPLICA_CORES = 2
CPU_HEADROOM = 0.6  # of a replica's cores, and of a Redis shard's one core
SOCKETS_PER_REPLICA = 250_000
LOADS = [(100_000, 10_000), (100_000, 100_000), (1_000_000, 10_000), (1_000_000, 100_000)]


class Stale(Exception):
    pass


def fail(message: str) -> None:
    raise Stale(f"sizing: {message}")


def number(text: str) -> float:
    match = re.search(r"\d+(?:\.\d+)?", text.replace(",", ""))
    if not match:
        fail(f"no figure in {text!r} (a failed run in {BENCHMARKS.name}?)")
    return float(match.group())


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under `## heading`, by their first cell."""
    section = text.split(f"\n## {heading}\n", 1)
    if len(section) != 2:
        fail(f"{BENCHMARKS.name} has no section {heading!r}")
    rows: dict[str, list[str]] = {}
    started = False
    for line in section[1].splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif started:
            break
    return rows


class Run:
    """The figures of the latest `make bench` run."""

    def __init__(self, text: str):
        header = re.search(r"on (\d{4}-\d\d-\d\d) [\d:]+ UTC, commit\s+(\w+)", text)
        if not header:
            fail(f"{BENCHMARKS.name} does not say when and at which commit it was written")
        self.date, self.commit = header.groups()
        machine = re.search(r"^- CPU: .*?, (\d+) cores", text, re.M)
        if not machine:
            fail(f"{BENCHMARKS.name} does not say how many cores the machine had")
        self.machine_cores = int(machine.group(1))
        cost = table_rows(text, "Cost per message")
        summary = table_rows(text, "Summary against the targets")
        # Every target says whether it was met: a figure is not quoted without its verdict.
        for name, cells in list(summary.items())[2:]:
            if len(cells) != 2 or not re.match(r"(met|missed|not measured|no target)\b", cells[1]):
                fail(f"{BENCHMARKS.name}'s summary row {name!r} has no verdict (met, missed, not measured, no target)")

        def cost_of(setup: str, column: int) -> float:
            if setup not in cost:
                fail(f"no {setup!r} row in {BENCHMARKS.name}'s cost per message")
            return number(cost[setup][column])

        def measured(target: str) -> str:
            row = next((cells for name, cells in summary.items() if name.startswith(target)), None)
            if row is None:
                fail(f"no {target!r} row in {BENCHMARKS.name}'s summary")
            return row[0]

        # Relay CPU (column 2) and redis-server CPU (column 3), µs per delivered message.
        self.relay_fleet = cost_of("Redis, 2 replicas (pairs across them)", 2)
        self.relay_one = cost_of("Redis, 1 replica", 2)
        self.redis_single = cost_of("Redis, 1 replica", 3)
        self.redis_cluster = cost_of("Redis Cluster, 3 masters, 1 replica", 3)
        self.single_saturation = number(measured("Redis engine, 1 replica: saturation"))
        self.single_p99 = number(measured("Redis engine, 1 replica: p99").removeprefix("p99"))
        self.cluster_saturation = number(measured("Redis Cluster (3 masters on the same cores), 1 replica: saturation"))
        self.cluster_p99 = number(measured("Redis Cluster, 1 replica: p99").removeprefix("p99"))
        self.socket_kib = number(measured("idle connections: ≤ 8 KiB RSS each"))


def thousands(value: float) -> str:
    return f"{round(value):,}"


def cores(value: float) -> str:
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def gigabytes(sockets: int, kib: float) -> str:
    return f"{sockets * kib * 1024 / 1e9:.1f} GB"


def render_sizing(run: Run) -> str:
    replica_budget = REPLICA_CORES * CPU_HEADROOM
    single_shard = CPU_HEADROOM * 1e6 / run.redis_single
    cluster_shard = CPU_HEADROOM * 1e6 / run.redis_cluster
    paragraphs = [
        f"From the CPU each delivered message costs in [BENCHMARKS.md](BENCHMARKS.md)'s latest run "
        f"({run.date}, commit {run.commit}, \"Cost per message\"; a {run.machine_cores}-core machine that the generator "
        f"shares, 256-byte payloads, one send + one delivery + one removal): the **relays ≈ "
        f"{run.relay_fleet} µs** per message (two replicas with each pair across them, both relays "
        f"summed: the fleet case, where sender and recipient are seldom on one replica; "
        f"{run.relay_one} µs when they are), **redis-server ≈ {run.redis_single} µs** on a single "
        f"Redis (Sentinel) and **≈ {run.redis_cluster} µs in sum on a Cluster** (one script call per "
        f"recipient instead of one per round of all sessions), an idle socket ≈ {run.socket_kib} KiB "
        f"of relay memory. The same run saturated one replica on one Redis at "
        f"{thousands(run.single_saturation)} msgs/s (p99 {run.single_p99} ms at 20,000 msgs/s), and "
        f"one replica on a 3-master Cluster sharing the same {run.machine_cores} cores at "
        f"{thousands(run.cluster_saturation)} msgs/s (p99 {run.cluster_p99} ms). Computed as",
        f"- relay cores = msgs/s × {run.relay_fleet} µs ÷ 10⁶; a replica ({REPLICA_CORES} cores) is "
        f"planned at ≤ {CPU_HEADROOM:.0%} of its cores ({cores(replica_budget)} cores) and ≤ "
        f"{thousands(SOCKETS_PER_REPLICA)} sockets (≈ {gigabytes(SOCKETS_PER_REPLICA, run.socket_kib)}), "
        f"plus one spare replica for a failure or a rollout;",
        f"- Redis cores = msgs/s × {run.redis_single} µs ÷ 10⁶ for one shard, × {run.redis_cluster} µs "
        f"on a Cluster; Redis runs commands on one core, so a shard carries ≤ {CPU_HEADROOM:.0%} of one "
        f"core: ≈ {thousands(round(single_shard, -3))} msgs/s alone, ≈ {thousands(round(cluster_shard, -3))} "
        f"msgs/s per Cluster shard; more than one shard means Redis Cluster (each shard with a replica "
        f"for failover; Sentinel for one shard);",
        "- connected users only add memory (sockets on the relays, user records on Redis: ≈ 1 KB each "
        "with a real key, from the Redis memory measurement above), not CPU per message.",
    ]
    lines = [""]
    for text in paragraphs:
        bullet = text.startswith("- ")
        lines += textwrap.wrap(text, width=99, subsequent_indent="  " if bullet else "", break_on_hyphens=False,
                               break_long_words=False)
        if not bullet:
            lines.append("")
    lines += [
        "",
        "| connected users | msgs/s | relay CPU | relay replicas (2 cores) | Redis CPU | Redis shards |",
        "|---:|---:|---:|---|---:|---|",
    ]
    for users, rate in LOADS:
        relay = rate * run.relay_fleet / 1e6
        for_cpu = math.ceil(relay / replica_budget)
        for_sockets = math.ceil(users / SOCKETS_PER_REPLICA)
        needed = max(for_cpu, for_sockets, 1)
        sockets = gigabytes(users, run.socket_kib)
        if needed == 1:
            replicas = f"2 (1 + spare; {sockets} of sockets)"
        elif for_sockets >= for_cpu:
            replicas = (f"{needed + 1} ({needed} for {thousands(SOCKETS_PER_REPLICA)} sockets each + spare; "
                        f"{sockets} of sockets in all)")
        else:
            replicas = (f"{needed + 1} ({needed} for CPU: {cores(relay)} ÷ {cores(replica_budget)}, "
                        f"rounded up, + spare; {sockets} of sockets)")
        redis = rate * run.redis_single / 1e6
        if redis <= CPU_HEADROOM:
            records = f"; ≈ {users * 1000 / 1e9:g} GB of user records" if users >= 1_000_000 else ""
            shards = f"1 (+ replica, Sentinel{records})"
        else:
            redis = rate * run.redis_cluster / 1e6
            shards = f"{math.ceil(redis / CPU_HEADROOM)} (Cluster: {cores(redis)} ÷ {CPU_HEADROOM}, rounded up)"
        lines.append(f"| {thousands(users)} | {thousands(rate)} | {cores(relay)} cores | {replicas} | "
                     f"{cores(redis)} cores | {shards} |")
    lines.append("")
    return "\n".join(lines)


def render(name: str, run: Run) -> str:
    if name == "sizing":
        return render_sizing(run)
    if name == "socket_kib":
        return f"{run.socket_kib} KiB"
    if name == "run":
        return f"{run.date}, commit {run.commit}"
    fail(f"{OPERATIONS.name} marks an unknown figure bench:{name}")
    return ""


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) == 2 else ""
    if mode not in ("--check", "--write"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        run = Run(BENCHMARKS.read_text())
        current = OPERATIONS.read_text()
        names = [m.group("name") for m in SPAN.finditer(current)]
        if "sizing" not in names:
            fail(f"{OPERATIONS.name} has no <!-- bench:sizing --> span")
        wanted = SPAN.sub(lambda m: f"<!-- bench:{m['name']} -->{render(m['name'], run)}<!-- /bench:{m['name']} -->",
                          current)
    except Stale as e:
        print(e, file=sys.stderr)
        return 1
    if wanted == current:
        print(f"sizing: {OPERATIONS.relative_to(ROOT)} quotes {BENCHMARKS.relative_to(ROOT)} "
              f"({run.date}, commit {run.commit}): {len(names)} figures")
        return 0
    if mode == "--write":
        OPERATIONS.write_text(wanted)
        print(f"sizing: rewrote the benchmark figures of {OPERATIONS.relative_to(ROOT)} "
              f"({run.date}, commit {run.commit})")
        return 0
    diff = difflib.unified_diff(current.splitlines(), wanted.splitlines(), str(OPERATIONS.relative_to(ROOT)),
                                "from " + str(BENCHMARKS.relative_to(ROOT)), lineterm="", n=1)
    print("\n".join(diff), file=sys.stderr)
    print(f"sizing: {OPERATIONS.relative_to(ROOT)} does not quote {BENCHMARKS.relative_to(ROOT)}'s latest run: "
          "python3 scripts/sizing.py --write", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
