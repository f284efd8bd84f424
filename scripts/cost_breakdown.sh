#!/usr/bin/env bash
# Where a delivered message's cost goes on the Redis engine (issue 27; not in `make test`).
#
#   scripts/cost_breakdown.sh [RELAY_BINARY]
#
# One fresh redis-server and relay (release, `make bench`'s BENCH_LIMITS=on environment) at a
# fixed rate (BREAKDOWN_RATE, default 20000 msgs/s, 100 pairs, 256 B) for BREAKDOWN_SECONDS
# (default 8). Prints enigma-bench's CPU per delivered message, then Redis's own count of the
# commands run per message (`INFO commandstats`, normalised by the `XADD`s: one per message),
# how much of `EVALSHA`'s time the commands inside it take, and — with `perf` installed — the
# share of each library in redis-server's and the relay's samples. Loopback and free ports only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=${1:-target/release/enigma-server}
rate=${BREAKDOWN_RATE:-20000} seconds=${BREAKDOWN_SECONDS:-8}
bench_bin=target/release/enigma-bench
for f in "$bin" "$bench_bin"; do [[ -x $f ]] || { echo "cost_breakdown: build $f first (cargo build --release)" >&2; exit 1; }; done
work=$(mktemp -d "${TMPDIR:-/tmp}/enigma-breakdown.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
source scripts/measure.sh # free_port, limits_env, start_redis, start_relay
start_redis
limits_env on # make bench's BENCH_LIMITS=on
start_relay "$bin" "$work/relay.log" ENIGMA__REDIS__URL="redis://127.0.0.1:$redis_port/"
# The profile: after the warm-up, for the sending window (the generator's --duration is one more).
(
    sleep 1
    redis-cli -p "$redis_port" config resetstat >/dev/null
    if command -v perf >/dev/null; then
        timeout "$seconds" perf record -q -F 999 -p "$redis_pid" -o "$work/redis.perf" >/dev/null 2>&1 &
        timeout "$seconds" perf record -q -F 999 -p "$relay_pid" -o "$work/relay.perf" >/dev/null 2>&1 || true
        wait || true
    else
        sleep "$seconds"
    fi
    redis-cli -p "$redis_port" info commandstats | tr -d '\r' >"$work/commandstats"
) &
profile=$!
if ! "$bench_bin" --url "http://127.0.0.1:$relay_port" --server-pid "$relay_pid" --cpu-pid "redis-server=$redis_pid" --pairs 100 \
    --payload-bytes 256 --warmup 1s --drain 10s --duration "$((seconds + 1))s" --rate "$rate" \
    --json-file "$work/bench.json" --format markdown >/dev/null 2>"$work/bench.err"; then
    echo "cost_breakdown: the generator failed:" >&2
    tail -5 "$work/bench.err" "$work/relay.log" >&2
    exit 1
fi
wait "$profile" || { echo "cost_breakdown: Redis's command counts could not be read" >&2; exit 1; }
jq -r '.steps[0] | "delivered \(.delivered) at \(.achieved_rate | floor) msgs/s, p99 \(.latency_ms.p99) ms; CPU µs per delivered message: "
    + ([.cpu[] | "\(.role) \(.us_per_msg * 10 | round / 10)"] | join(", "))' "$work/bench.json"
awk -F'[:,=]' '
    /^cmdstat_/ { calls[$1] = $3; usec[$1] = $5 }
    END {
        m = calls["cmdstat_xadd"]; if (m == 0) { print "no XADD counted"; exit 1 }
        ev = usec["cmdstat_evalsha"] / m
        printf "Redis, per message (%d messages counted by XADD):\n", m
        for (c in calls) if (calls[c] / m >= 0.005) {
            printf "  %-20s %6.3f calls  %6.2f µs\n", substr(c, 9), calls[c] / m, usec[c] / m
            if (c != "cmdstat_evalsha") { inner += usec[c] / m; n += calls[c] / m }
        }
        printf "  commands %.2f a message taking %.2f µs; EVALSHA %.2f µs in all", n, inner, ev
        if (ev > 0) printf ": the Lua layer %.2f µs (%.0f %%)", ev - inner, 100 * (ev - inner) / ev
        print "  (wall-clock time inside Redis: a busy machine inflates every figure alike)"
    }' "$work/commandstats"
for who in redis relay; do
    [[ -f $work/$who.perf ]] || continue
    echo "$who samples by library:"
    perf report -i "$work/$who.perf" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -6
done
