#!/usr/bin/env bash
# scripts/stall_rss.sh: does the relay give back the memory a Redis stall made it take?
# One relay and one Redis (no persistence) on free loopback ports, enigma-bench at RATE msgs/s
# for DURATION s (100 pairs, acknowledging recipients, reconnect churn every 30 s); Redis is
# stopped (SIGSTOP) for STALL s at STALL_AT s, so the relay's bounded in-flight buffers fill up;
# the relay's RSS is printed every 5 s, then once more 12 s after the clients left.
# Used for docs/BENCHMARKS.md (optimization log, the relay's allocator). Not in `make test`.
#
#   scripts/stall_rss.sh [DURATION=120] [STALL_AT=45] [STALL=2] [RATE=33000]
#   RELAY=path/to/enigma-server (default target/release/enigma-server; built if missing; a
#   binary from before a setting of scripts/measure.sh's `limits_env off` refuses it as unknown)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
duration=${1:-120}; stall_at=${2:-45}; stall=${3:-2}; rate=${4:-33000}
cargo build --release --locked --bin enigma-server --bin enigma-bench
((stall_at % 5 == 0)) || { echo "stall_rss: STALL_AT must be a multiple of 5 s (the sampling period)" >&2; exit 2; }
relay=${RELAY:-target/release/enigma-server}
bench=target/release/enigma-bench
work=$(mktemp -d "${TMPDIR:-/tmp}/enigma-stall.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
source scripts/measure.sh # free_port, limits_env, start_redis, start_relay
start_redis
# The per-client limits off, as in `make soak`: one generator address, users far busier than people.
limits_env off
start_relay "$relay" "$work/relay.log" ENIGMA__REDIS__URL="redis://127.0.0.1:$redis_port/"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$relay_pid/status"; }

"$bench" --url "http://127.0.0.1:$relay_port" --pairs 100 --rate "$rate" --duration "${duration}s" --warmup 0s \
    --ack --churn 30s --drain 30s --quiet --json-file "$work/bench.json" >"$work/bench.txt" 2>&1 &
bench_pid=$!
pids+=("$bench_pid")
series=""
for ((t = 0; ; t += 5)); do
    kill -0 "$bench_pid" 2>/dev/null || break
    series+=" $(rss)"
    if ((t == stall_at && stall > 0)); then
        kill -STOP "$redis_pid"
        sleep "$stall"
        kill -CONT "$redis_pid"
        series+=" [Redis stopped ${stall} s]"
    fi
    sleep 5
done
wait "$bench_pid" || true
sleep 12
echo "relay RSS KiB every 5 s:$series; 12 s after the clients left: $(rss)"
jq -c '.steps[-1] | {sent, unsent, refused, lost, duplicated, redelivered, reconnects, errors_by_kind}' "$work/bench.json"
