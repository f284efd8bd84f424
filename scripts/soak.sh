#!/usr/bin/env bash
# `make soak` (not in `make test`): one relay and one Redis (no persistence) on free loopback
# ports, enigma-bench at a fixed rate for SOAK_MINUTES with acknowledging recipients
# (`--ack`: enigma.v1, every delivery acknowledged) and reconnect churn (`--churn`: every
# socket closed and opened again about every SOAK_CHURN, jittered), sampling every minute the relay's RSS
# and CPU, Redis `used_memory` and `DBSIZE`; then the drain and a last sample. Writes a CSV and a
# PNG plot (scripts/soak_plot.py, matplotlib installed with pip if missing) and appends a
# results section to docs/BENCHMARKS.md with the pass/fail lines:
#   - relay RSS flat: every sample under load within ±10 % of the median of minutes 1–5 (one
#     sample as the reference made the verdict hang on that sample's own noise: reconnect churn
#     moves RSS by ±2 MB), and no trend: the median of the last 5 minutes within ±5 % of it;
#   - Redis memory back to its baseline after the drain (baseline: before any traffic; allowed:
#     what Redis keeps per user by design until its TTL — record, key directory, contacts,
#     storage ledger, the emptied inbox and share record — 8 KiB per user of the run; the
#     residue is listed by key kind) and no message left in any inbox;
#   - 0 messages lost (enigma-bench: sent and not received by the end of its drain), none
#     unsent, no real duplicate (re-deliveries that enigma.v1 allows are reported apart).
#
# Environment: SOAK_MINUTES (default 30), SOAK_RATE (msgs/s; default 21000, half the
# saturation rate of one relay on one Redis on a 2-core machine: 42,300 at ab24c6e, docs/BENCHMARKS.md),
# SOAK_PAIRS (default 100), SOAK_CHURN (default 30s; each socket's reconnection period),
# SOAK_BENCH_FLAGS (default `--ack --churn $SOAK_CHURN`; empty for specification clients on
# one set of sockets), SOAK_OUT (default docs/BENCHMARKS.md), SOAK_KEEP (directory to keep the
# CSV, PNG and logs in; default docs/soak/), BENCH_SKIP_BUILD=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
minutes=${SOAK_MINUTES:-30}
rate=${SOAK_RATE:-21000}
pairs=${SOAK_PAIRS:-100}
churn=${SOAK_CHURN:-30s}
read -r -a bench_flags <<<"${SOAK_BENCH_FLAGS-"--ack --churn $churn"}"
out=${SOAK_OUT:-$root/docs/BENCHMARKS.md}
keep=${SOAK_KEEP:-$root/docs/soak}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')

for tool in redis-server redis-cli jq python3; do
    command -v "$tool" >/dev/null || { echo "soak: $tool is needed" >&2; exit 1; }
done
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check matplotlib ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages matplotlib
fi
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --locked --bin enigma-server --bin enigma-bench
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
work=$(mktemp -d "${TMPDIR:-/tmp}/enigma-soak.XXXXXX")
# Snapshots of the binaries (a concurrent build cannot swap them mid-run).
cp "$target_dir/release/enigma-server" "$work/enigma-relay"
cp "$target_dir/release/enigma-bench" "$work/enigma-bench"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
    done
    echo "soak: no free port" >&2
    return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --logfile "$work/redis.log" --daemonize no &
pids+=($!)
for _ in $(seq 1 100); do [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] && break; sleep 0.1; done
port=$(free_port)
# The per-client limits off, as in `make bench` (BENCH_LIMITS=off): the generator is one address
# whose users each send far more than a person and reconnect all the time; the soak watches
# the relay's memory and losses, not its limiter (which would refuse most of the load).
unlimited_clients=(
    ENIGMA__SERVER__MAX_CONNECTIONS=100000 ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS=0
    ENIGMA__LIMITS__INBOX_SHARE=0 ENIGMA__LIMITS__INBOX_SHARE_BYTES=0
    ENIGMA__LIMITS__MAX_UNUSED_REGISTRATIONS_PER_PREFIX=0
    ENIGMA__RATE__LOGIN_PER_ADDRESS__BURST=0 ENIGMA__RATE__CHALLENGE_PER_ADDRESS__BURST=0
    ENIGMA__RATE__SOCKET_PER_ADDRESS__BURST=0 ENIGMA__RATE__SOCKET_PER_USER__BURST=0
    ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST=0 ENIGMA__RATE__SEND_BYTES_PER_USER__BURST=0
)
env "${unlimited_clients[@]}" \
    ENIGMA__SERVER__ADDR=127.0.0.1:$port ENIGMA__REDIS__URL=redis://127.0.0.1:$redis_port/ ENIGMA__LOG__LEVEL=warn \
    "$work/enigma-relay" >"$work/relay.log" 2>&1 &
relay_pid=$!
pids+=("$relay_pid")
for _ in $(seq 1 300); do grep -q '^listening on' "$work/relay.log" && break; sleep 0.1; done
grep -q '^listening on' "$work/relay.log" || { cat "$work/relay.log" >&2; exit 1; }

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$relay_pid/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$relay_pid/status"; }
redis_info() { redis-cli -p "$redis_port" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }'; }
dbsize() { redis-cli -p "$redis_port" dbsize | tr -d '\r'; }
# Entries still in any inbox stream.
pending() {
    local total=0 key
    while read -r key; do
        [[ -n $key ]] && total=$((total + $(redis-cli -p "$redis_port" xlen "$key" | tr -d '\r')))
    done < <(redis-cli -p "$redis_port" --scan --pattern '*inbox*')
    echo "$total"
}

csv=$work/soak.csv
echo "minute,phase,rss_kb,cpu_pct,redis_used_memory,redis_keys" >"$csv"
last_ticks=$(cpu_ticks)
last_t=$(date +%s.%N)
sample() { # minute phase
    local ticks t cpu
    ticks=$(cpu_ticks)
    t=$(date +%s.%N)
    cpu=$(awk -v a="$last_ticks" -v b="$ticks" -v s="$last_t" -v e="$t" -v c="$clk" \
        'BEGIN { printf "%.1f", (b - a) / c / (e - s) * 100 }')
    last_ticks=$ticks
    last_t=$t
    echo "$1,$2,$(rss_kb),$cpu,$(redis_info),$(dbsize)" | tee -a "$csv" >&2
}
sample 0 baseline
baseline_memory=$(redis_info)

echo "soak: $minutes min at $rate msgs/s, $pairs pairs, ${bench_flags[*]:-no flags}, relay 127.0.0.1:$port, redis $redis_port" >&2
"$work/enigma-bench" --url "http://127.0.0.1:$port" --pairs "$pairs" --rate "$rate" "${bench_flags[@]}" \
    --duration "${minutes}m" --warmup 0s --drain 30s --quiet --json-file "$work/bench.json" \
    --server-pid "$relay_pid" >"$work/bench.txt" 2>&1 &
bench_pid=$!
pids+=("$bench_pid")
start=$SECONDS
for m in $(seq 1 "$minutes"); do
    while ((SECONDS - start < m * 60)); do
        kill -0 "$bench_pid" 2>/dev/null || break 2
        sleep 1
    done
    sample "$m" load
done
bench_status=0
wait "$bench_pid" || bench_status=$?
sample "$minutes" drained
left=$(pending)
# What is left in Redis after the drain, by kind of key (the user id in braces and the address
# prefix left out): count and bytes (`MEMORY USAGE`).
redis-cli -p "$redis_port" --scan | tr -d '\r' >"$work/keys" || true
sed 's/^/MEMORY USAGE /' "$work/keys" | redis-cli -p "$redis_port" | tr -d '\r' >"$work/sizes" || true
residue=$(paste -d' ' "$work/keys" "$work/sizes" | sed -E 's/\{[^}]*\}/{…}/; s/(held:(net|dir):)[^ ]*/\1…/; s/[0-9a-f]{64}/…/' |
    awk '{ n[$1]++; b[$1] += $2 } END { for (k in n) printf "%s %d %d\n", k, n[k], b[k] }' | sort -k3,3nr |
    awk '{ printf "%s`%s` %d keys %d B", sep, $1, $2, $3; sep = "; " }') || residue="not read"

lost=$(jq '[.steps[].lost] | add' "$work/bench.json" 2>/dev/null || echo "?")
unsent=$(jq '[.steps[].unsent] | add' "$work/bench.json" 2>/dev/null || echo "?")
refused=$(jq '[.steps[].refused // 0] | add' "$work/bench.json" 2>/dev/null || echo "?")
duplicated=$(jq '[.steps[].duplicated] | add' "$work/bench.json" 2>/dev/null || echo "?")
redelivered=$(jq '[.steps[].redelivered] | add' "$work/bench.json" 2>/dev/null || echo "?")
acknowledged=$(jq '[.steps[].acknowledged] | add' "$work/bench.json" 2>/dev/null || echo "?")
reconnects=$(jq '[.steps[].reconnects] | add' "$work/bench.json" 2>/dev/null || echo "?")
errors=$(jq -c '[.steps[].errors] | add' "$work/bench.json" 2>/dev/null || echo "?")
error_kinds=$(jq -c '[.steps[].errors_by_kind] | add' "$work/bench.json" 2>/dev/null || echo "?")
if jq -e .acknowledging "$work/bench.json" >/dev/null 2>&1; then
    clients="acknowledging recipients (enigma.v1, every delivery acknowledged)"
else
    clients="specification clients"
fi
churn_secs=$(jq -r '.churn_secs // empty' "$work/bench.json" 2>/dev/null || true)
if [[ -n $churn_secs ]]; then
    clients="$clients, every socket closed and reopened about every ${churn_secs} s (jittered)"
else
    clients="$clients, one set of sockets for the whole run"
fi
sent=$(jq '[.steps[].sent] | add' "$work/bench.json" 2>/dev/null || echo "?")
p99=$(jq '.steps[-1].latency_ms.p99' "$work/bench.json" 2>/dev/null || echo "?")
mkdir -p "$keep"
stamp=$(date -u '+%Y%m%d-%H%M')
cp "$csv" "$keep/soak-$stamp.csv"
python3 scripts/soak_plot.py "$csv" "$keep/soak-$stamp.png"

verdicts=$(python3 - "$csv" "$baseline_memory" "$lost" "$left" "$bench_status" "$unsent" "$duplicated" \
    "$redelivered" "$reconnects" "$errors" "$error_kinds" "$refused" "$pairs" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
baseline, lost, left, status = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
unsent, duplicated, redelivered, reconnects, errors, error_kinds, refused = sys.argv[6:13]
load = [r for r in rows if r["phase"] == "load"]
drained = [r for r in rows if r["phase"] == "drained"][-1]
ok = True
users = 2 * int(sys.argv[13])
if len(load) >= 10:
    import statistics
    rss = [int(r["rss_kb"]) for r in load]
    ref, last = statistics.median(rss[:5]), statistics.median(rss[-5:])
    worst = max(abs(v - ref) / ref for v in rss)
    trend = (last - ref) / ref
    flat = worst <= 0.10 and abs(trend) <= 0.05
    print(f"- RSS flat within ±10 % of minutes 1–5, no trend: {'PASS' if flat else 'FAIL'} "
          f"(median of minutes 1–5: {ref:.0f} KiB, furthest sample: {worst * 100:.1f} %, "
          f"median of the last 5 minutes: {trend * 100:+.1f} %)")
    ok &= flat
else:
    print("- RSS flat: FAIL (fewer than 10 samples under load)")
    ok = False
grown = int(drained["redis_used_memory"]) - baseline
back = grown <= users * 8192 and left == 0
print(f"- Redis memory back to baseline after the drain: {'PASS' if back else 'FAIL'} "
      f"({baseline} → {drained['redis_used_memory']} bytes, +{grown}, {grown / users:.0f} a user of {users}, "
      f"allowed 8192; {drained['redis_keys']} keys, "
      f"{left} messages left in inboxes)")
ok &= back
zero = lost == "0" and unsent == "0" and refused == "0" and duplicated == "0" and errors == "0" and status == 0
print(f"- 0 lost: {'PASS' if zero else 'FAIL'} (lost {lost}, unsent {unsent}, refused {refused}, duplicated {duplicated}, "
      f"re-delivered as enigma.v1 allows {redelivered}, reconnections {reconnects}, errors {errors} {error_kinds}, "
      f"enigma-bench exit {status})")
ok &= zero
print(f"- overall: {'PASS' if ok else 'FAIL'}")
PY
)
echo "$verdicts" >&2

{
    echo
    echo "## Soak ($started_at, commit $commit)"
    echo
    echo "\`make soak\` (scripts/soak.sh): one relay, one Redis, $pairs pairs ($clients),"
    echo "$rate msgs/s for $minutes min, sampled every minute; $sent messages sent, p99 latency $p99 ms;"
    echo "$reconnects reconnections, $acknowledged deliveries acknowledged, $redelivered re-delivered as enigma.v1 allows."
    echo "CSV and plot: \`docs/soak/soak-$stamp.csv\`, \`docs/soak/soak-$stamp.png\`."
    echo
    echo "$verdicts"
    echo
    echo "Left in Redis after the drain, by kind of key: $residue."
    echo
    echo "| minute | phase | relay RSS KiB | relay CPU % | Redis used_memory | Redis keys |"
    echo "|---|---|---|---|---|---|"
    tail -n +2 "$csv" | tr ',' '|' | sed 's/^/|/; s/$/|/'
    echo
    echo "![soak](soak/soak-$stamp.png)"
} >>"$out"
grep -q 'overall: PASS' <<<"$verdicts"
