#!/usr/bin/env bash
# A/B of the cost per message: two relay binaries, alternated, each run against a fresh
# redis-server (or on the memory engine) at a fixed rate, with `make bench`'s limits (`on`: the
# per-address limits off, the per-user send budgets far above the load, every other budget as
# shipped). Prints one row per run: CPU µs per delivered message of the relay and of Redis.
#
#   scripts/ab_cost.sh BEFORE_BIN AFTER_BIN [ROUNDS] [ENGINE]
#
# ENGINE: redis (default) or memory. AB_LEGACY=1 for a binary from before the `engine` setting (see below). ROUNDS (default 2): before, after, before, after, …
# The load generator is this tree's release enigma-bench (the same one for both).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
before=$1 after=$2 rounds=${3:-2} engine=${4:-redis}
rate=${AB_RATE:-20000} duration=${AB_DURATION:-10}
bench_bin=${AB_BENCH:-target/release/enigma-bench}
[[ -x $bench_bin ]] || { echo "ab_cost: build $bench_bin first (cargo build --release --bin enigma-bench)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/enigma-ab.XXXXXX")
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT
source scripts/measure.sh # free_port, limits_env, start_redis, start_relay
limits_env on
# A binary from before a setting refuses it as unknown: AB_LEGACY=1 leaves out the ones added
# since the first A/B (`engine`, the registrations and directory entries per prefix).
if [[ -n ${AB_LEGACY:-} ]]; then
    mapfile -t limit_env < <(printf '%s\n' "${limit_env[@]}" | grep -v -e UNUSED_REGISTRATIONS -e DIRECTORY_PER_PREFIX)
fi
run() {
    local label=$1 bin=$2 url= cpu=()
    if [[ $engine == redis ]]; then
        start_redis
        cpu=(--cpu-pid "redis-server=$redis_pid")
        url=redis://127.0.0.1:$redis_port/
    fi
    # Without Redis the default engine keeps a data file: the memory engine is named.
    local engine_env=()
    [[ $engine == memory && -z ${AB_LEGACY:-} ]] && engine_env=(ENIGMA__ENGINE=memory)
    local log=$work/relay-$label.log
    start_relay "$bin" "$log" "${engine_env[@]}" ENIGMA__REDIS__URL="$url"
    "$bench_bin" --url "http://127.0.0.1:$relay_port" --server-pid "$relay_pid" "${cpu[@]}" --pairs 100 --payload-bytes 256 \
        --warmup 1s --drain 10s --duration "${duration}s" --rate "$rate" --format markdown --json-file "$work/$label.json" >/dev/null 2>"$work/$label.err" || true
    jq -r --arg name "$label" '
        def role(r): [.steps[0].cpu[] | select(.role == r) | .us_per_msg] | if length == 0 then null else add end;
        def us: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
        "| \($name) | \(.steps[0].delivered) | \(.steps[0].achieved_rate | floor) | \(role("relay") | us) | \(role("other") | us) | \(.steps[0].latency_ms.p99 // "-") |"' "$work/$label.json" 2>/dev/null \
        || { echo "| $label | run failed: $(tail -1 "$work/$label.err") |"; cat "$work/$label.err" "$log" >&2; }
    stop_all
}
echo "| run | delivered | msgs/s | relay µs/msg | redis-server µs/msg | p99 ms |"
echo "|---|---:|---:|---:|---:|---:|"
for i in $(seq 1 "$rounds"); do
    run "before-$i" "$before"
    run "after-$i" "$after"
done
