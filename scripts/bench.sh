#!/usr/bin/env bash
# `make bench`: the standard load scenarios against fresh local servers; writes docs/BENCHMARKS.md.
#
# Builds the release binaries, then for each scenario starts its own redis-server (no
# persistence) and enigma-server replicas on free loopback ports, runs enigma-bench, and stops
# them again. Everything it starts is killed on exit (trap), also on Ctrl-C or an error.
#
#   memory engine           ramp to saturation, then a fixed-rate run at half of it
#   Redis, 1 replica        fixed 20,000 msgs/s (the p99 target), then a ramp
#   Redis, 2 replicas       same, each pair's sender and recipient on different replicas
#   Redis Cluster           3 masters (redis.mode = cluster), 1 replica: fixed 20,000 msgs/s,
#                           then a ramp
#   idle connections        as many sockets as the file-descriptor limit allows (≤ 50,000),
#                           memory and Redis engines, server RSS per connection
#   cost per message        the fixed 20,000 msgs/s runs (memory engine included): CPU time of
#                           each relay and redis-server from /proc per delivered message
#   floors                  the same load on a bare WebSocket forwarder (enigma-floor forwarder)
#                           and Redis's own XADD + PUBLISH + XDEL per message (enigma-floor redis):
#                           each engine's cost is reported as a ratio to its floor
#   one core                ramps with the servers pinned to core 0 (`taskset`) and the generator
#                           to core 1 (the first two CPUs it may use): the bare forwarder, then one relay and its redis-server
#                           sharing the core (and the memory engine): what one core carries
#
# Every run gets freshly started servers (and Redis), so none inherits another's backlog.
#
# Environment: BENCH_STEP (seconds per ramp step, default 3), BENCH_FIXED (seconds of the
# fixed-rate runs, default 10), BENCH_PAIRS (default 100), BENCH_IDLE (idle sockets, default: as
# many as fit), BENCH_OUT (default docs/BENCHMARKS.md), BENCH_SKIP_BUILD=1,
# BENCH_LIMITS (default `on`; `off`; `shipped`), BENCH_ONLY (a regular expression of run names,
# e.g. `memory-20k|redis1-20k|floor-.*`: the other runs are skipped and reported as not run).
#
# Limits: the scenarios are floods by design — 100 users on one address sending hundreds of
# messages a second each, up to 50,000 sockets from 127.0.0.1 — which the shipped per-client
# limits (docs/operations.md, "Limits") exist to refuse. So every server here runs with the
# per-address limits OFF, no inbox share and the per-replica connection cap raised to 100,000;
# the per-user send budgets stay ON but far above the load (`on`: their leases are part of what
# a message costs), or go off too (`BENCH_LIMITS=off`: compare the two for the limits' cost).
# BENCH_LIMITS=shipped measures with the defaults instead (expect `rate_limited` refusals).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
out=${BENCH_OUT:-$root/docs/BENCHMARKS.md}
step=${BENCH_STEP:-3}
fixed=${BENCH_FIXED:-10}
pairs=${BENCH_PAIRS:-100}
started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# What is measured: taken before the build, in case work goes on in the tree meanwhile.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit="$commit + uncommitted changes"; fi
t0=$SECONDS

for tool in redis-server redis-cli jq python3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is needed (apt-get install redis-server jq python3)" >&2; exit 1; }
done

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --locked --bin enigma-server --bin enigma-bench --bin enigma-floor
fi

target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
work=$(mktemp -d "${TMPDIR:-/tmp}/enigma-bench.XXXXXX")
# A snapshot of the binaries: a concurrent `cargo build` cannot swap them mid-run, and under
# its own name a `pkill enigma-server` run by other work on the machine does not stop it.
cp "$target_dir/release/enigma-server" "$work/enigma-relay"
cp "$target_dir/release/enigma-bench" "$work/enigma-bench"
server_bin=$work/enigma-relay
bench_bin=$work/enigma-bench
cp "$target_dir/release/enigma-floor" "$work/enigma-floor"
floor_bin=$work/enigma-floor
mkdir -p "$work/results"

pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    stop_all
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Servers and the generator inherit this; each side needs one descriptor per socket.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)

# free_port, limits_env, start_redis, start_relay, start_listening.
source scripts/measure.sh

# The one-core runs pin the servers (relay, redis-server, forwarder) to core 0 and the generator
# to core 1 (the first two CPUs this process may use, named 0 and 1 in the document): `pin_servers` and `pin_gen` prefix their commands (empty otherwise). taskset execs
# the command, so `$!` is still the server's pid.
pin_servers=()
pin_gen=()
# The first two CPUs this process may run on (a cpuset need not hold CPUs 0 and 1).
server_cpu= gen_cpu=
if command -v taskset >/dev/null; then
    read -r server_cpu gen_cpu _ < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0))[:2], "-")')
    [[ $gen_cpu == - ]] && gen_cpu=
fi
can_pin=
if [[ -n $server_cpu && -n $gen_cpu ]] && taskset -c "$server_cpu,$gen_cpu" true 2>/dev/null; then can_pin=1; fi

# The redis-servers of the current setup, `LABEL=PID,…` for enigma-bench --cpu-pid.
redis_pids=
# bench_redis: one redis-server (measure.sh's start_redis), as the setup's only one.
bench_redis() {
    start_redis --maxclients 1000
    redis_pids=redis-server=$redis_pid
}

# start_cluster N: N cluster-enabled redis-servers joined as N masters; sets cluster_urls.
cluster_urls=
start_cluster() {
    local i port nodes=()
    cluster_urls=
    local pid up
    for i in $(seq 1 "$1"); do
        # The cluster bus listens on port + 10000, which may be taken (even by a connection
        # in TIME_WAIT, which Redis's bus listener does not tolerate): retry on another port.
        up=
        for _ in $(seq 1 20); do
            port=$(free_port)
            redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --maxclients 1000 \
                --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --dir "$work" \
                --logfile "$work/redis-$port.log" --daemonize no &
            pid=$!
            for _ in $(seq 1 50); do
                [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && up=1 && break
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            [[ -n $up ]] && break
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
        [[ -n $up ]] || { echo "bench: could not start a cluster node" >&2; return 1; }
        pids+=("$pid")
        redis_pids=${redis_pids:+$redis_pids,}redis-$i=$pid
        nodes+=("127.0.0.1:$port")
        cluster_urls=${cluster_urls:+$cluster_urls,}redis://127.0.0.1:$port/
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$work/cluster-create.log"
    for _ in $(seq 1 100); do
        redis-cli -p "$port" cluster info | grep -q cluster_state:ok && return
        sleep 0.1
    done
    echo "bench: the Redis Cluster did not come up" >&2
    return 1
}

# The per-client limits for every server (see the header; measure.sh's limits_env).
limits_env "${BENCH_LIMITS:-on}" || exit 2

# start_server REDIS_URL [MODE] (empty URL: memory engine, or ENGINE_NO_REDIS=embedded with its data
# directory under $work); sets server_url and server_pid.
server_url=
server_pid=
servers_started=0
start_server() {
    local engine_env=()
    servers_started=$((servers_started + 1))
    [[ -z $1 ]] && engine_env=(ENIGMA__ENGINE="${ENGINE_NO_REDIS:-memory}" ENIGMA__DATA_DIR="$work/data-$servers_started")
    start_relay "$server_bin" "$work/server-$servers_started.log" "${engine_env[@]}" ENIGMA__REDIS__URL="$1" \
        ENIGMA__REDIS__MODE="${2:-single}" ENIGMA__SERVER__SHUTDOWN_GRACE_MS=2000
    server_pid=$relay_pid
    server_url=http://127.0.0.1:$relay_port
}

# not_run NAME WHY: run NAME's results say it was not run, and why (Markdown).
not_run() {
    echo '{}' >"$work/results/$1.json"
    echo "*Not run: $2.*" >"$work/results/$1.md"
    echo "# not run" >"$work/results/$1.cmd"
}

# wanted NAME: whether BENCH_ONLY lets run NAME go; if not, its results say so.
wanted() {
    [[ -z ${BENCH_ONLY:-} || $1 =~ ^(${BENCH_ONLY})$ ]] && return
    not_run "$1" "BENCH_ONLY"
    return 1
}

# start_forwarder: the relay floor (enigma-floor forwarder) on a free port; sets server_url and
# server_pid like start_server.
start_forwarder() {
    local port
    port=$(free_port)
    start_listening "enigma-floor forwarder" "$work/forwarder-$port.log" "$floor_bin" forwarder --addr "127.0.0.1:$port"
    server_pid=$listening_pid
    server_url=http://127.0.0.1:$port
}

# bench NAME ARGS...: runs enigma-bench, keeps its JSON and Markdown, records the command.
bench() {
    local name=$1
    shift
    wanted "$name" || return 0
    local shown="enigma-bench $*"
    shown=$(sed -E 's/--server-pid [0-9,]+/--server-pid PID/; s/--cpu-pid [^ ]+/--cpu-pid PID/; s/127\.0\.0\.1:[0-9]+/127.0.0.1:PORT/g' <<<"$shown")
    if ((${#pin_gen[@]})); then shown="${pin_gen[*]} $shown   # servers under: ${pin_servers[*]}"; fi
    echo "bench: $shown" >&2
    echo "$shown" >"$work/results/$name.cmd"
    if ! "${pin_gen[@]}" "$bench_bin" --format markdown --json-file "$work/results/$name.json" "$@" \
        >"$work/results/$name.md" 2> >(tee "$work/results/$name.err" >&2); then
        # Keep going: the other scenarios are still worth having; the document says what failed.
        { echo "**This run failed:**"; echo; echo '```'; tail -5 "$work/results/$name.err"; echo '```'; } \
            >"$work/results/$name.md"
        echo '{}' >"$work/results/$name.json"
    fi
}

# fresh ENGINE: stops everything, then starts a new setup, so that no run inherits the
# backlog or the allocator state of the one before. ENGINE: memory, redis1, redis2 or cluster3; sets
# urls and server_pids (comma-separated) for enigma-bench.
urls=
server_pids=
cpu=()
fresh() {
    stop_all
    redis_pids=
    case $1 in
    memory)
        start_server ""
        urls=$server_url server_pids=$server_pid
        ;;
    redis1 | redis2)
        bench_redis
        start_server "redis://127.0.0.1:$redis_port/"
        urls=$server_url server_pids=$server_pid
        if [[ $1 == redis2 ]]; then
            start_server "redis://127.0.0.1:$redis_port/"
            urls=$urls,$server_url server_pids=$server_pids,$server_pid
        fi
        ;;
    forwarder)
        start_forwarder
        urls=$server_url server_pids=$server_pid
        ;;
    cluster3)
        start_cluster 3
        start_server "$cluster_urls" cluster
        urls=$server_url server_pids=$server_pid
        ;;
    esac
    cpu=()
    if [[ -n $redis_pids ]]; then cpu=(--cpu-pid "$redis_pids"); fi
}

common=(--pairs "$pairs" --payload-bytes 256 --warmup 1s --drain 10s)
ramp=(--ramp --duration "${step}s" --ramp-factor 1.5 --ramp-refine 3 --ramp-max-steps 16)

# --- memory engine
fresh memory
bench memory-ramp --url "$urls" --server-pid "$server_pids" "${common[@]}" "${ramp[@]}" --rate 20000
half=$(jq '(.saturation.max_sustained_rate // 4000) / 2 | floor' "$work/results/memory-ramp.json")
fresh memory
bench memory-half --url "$urls" --server-pid "$server_pids" "${common[@]}" --duration "${fixed}s" --rate "$half"
# The same fixed load as the Redis runs, for the cost-per-message table.
fresh memory
bench memory-20k --url "$urls" --server-pid "$server_pids" "${common[@]}" --duration "${fixed}s" --rate 20000

# --- Redis engine, one replica, then two (each pair's sender and recipient on different ones)
for setup in redis1 redis2; do
    fresh $setup
    bench $setup-20k --url "$urls" --server-pid "$server_pids" "${cpu[@]}" "${common[@]}" --duration "${fixed}s" --rate 20000
    fresh $setup
    bench $setup-ramp --url "$urls" --server-pid "$server_pids" "${cpu[@]}" "${common[@]}" "${ramp[@]}" --rate 10000
done

# --- Redis Cluster, 3 masters, one replica
fresh cluster3
bench cluster3-20k --url "$urls" --server-pid "$server_pids" "${cpu[@]}" "${common[@]}" --duration "${fixed}s" --rate 20000
fresh cluster3
bench cluster3-ramp --url "$urls" --server-pid "$server_pids" "${cpu[@]}" "${common[@]}" "${ramp[@]}" --rate 10000

# --- idle connections: what fits in the descriptor limit (generator and server have one each)
idle=${BENCH_IDLE:-$((fd_limit - 1000 < 50000 ? fd_limit - 1000 : 50000))}
for setup in memory redis1; do
    fresh $setup
    bench idle-$setup --url "$urls" --server-pid "$server_pids" --connections "$idle" --hold 10s --concurrency 128
done

# --- floors: the cost scenario's load (20,000 msgs/s, $pairs pairs, 256 B) on a bare forwarder,
# and Redis's own commands for it, against a redis-server started like the relay's
fresh forwarder
bench floor-forwarder --url "$urls" --server-pid "$server_pids" "${common[@]}" --duration "${fixed}s" --rate 20000
if wanted floor-redis; then
    stop_all
    bench_redis # no relay: it is not part of this floor
    floor_args=(--rate 20000 --messages $((20000 * fixed)) --recipients "$pairs" --payload-bytes 256 --batch 100)
    echo "enigma-floor redis --url redis://127.0.0.1:PORT/ --redis-pid PID ${floor_args[*]}" >"$work/results/floor-redis.cmd"
    echo "bench: $(cat "$work/results/floor-redis.cmd")" >&2
    if "$floor_bin" redis --url "redis://127.0.0.1:$redis_port/" --redis-pid "${redis_pids#*=}" "${floor_args[@]}" --json \
        >"$work/results/floor-redis.json" 2> >(tee "$work/results/floor-redis.err" >&2); then
        jq -r '"\(.messages) messages in \(.seconds * 10 | round / 10) s (\(.achieved_rate | floor) msgs/s, pipelines of \(.batch), \(.rings_heard) doorbell rings heard): redis-server **\(.redis_us_per_msg * 100 | round / 100) CPU µs per message**"' \
            "$work/results/floor-redis.json" >"$work/results/floor-redis.md"
    else
        { echo "**This run failed:**"; echo; echo '```'; tail -5 "$work/results/floor-redis.err"; echo '```'; } \
            >"$work/results/floor-redis.md"
        echo '{}' >"$work/results/floor-redis.json"
    fi
fi
stop_all

# --- one core: the servers pinned to one core, the generator to another (what one core carries, with
# nothing else on it; the relay's runtime sees one CPU and starts one worker)
if [[ -n $can_pin ]]; then
    pin_servers=(taskset -c "$server_cpu")
    pin_gen=(taskset -c "$gen_cpu")
    for setup in forwarder redis1 memory; do
        fresh $setup
        bench core1-$setup-ramp --url "$urls" --server-pid "$server_pids" "${cpu[@]}" "${common[@]}" "${ramp[@]}" --rate 10000
    done
    pin_servers=()
    pin_gen=()
    stop_all
else
    for setup in forwarder redis1 memory; do
        not_run core1-$setup-ramp "needs \`taskset\` and two CPUs this process may use"
    done
fi

# --- docs/BENCHMARKS.md
r=$work/results
j() { jq -r "if .mode == null then \"n/a (run failed)\" else ($1) end" "$r/$2.json"; }
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
mem_total=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$((SECONDS - t0))

section() { # TITLE NAME...
    echo "### $1"
    echo
    shift
    local name
    for name in "$@"; do
        echo '```sh'
        cat "$r/$name.cmd"
        echo '```'
        echo
        cat "$r/$name.md"
        echo
    done
}

keep_marker='<!-- Everything below this line is kept by `make bench`. -->'
kept=
if [[ -f $out ]]; then
    kept=$(awk -v m="$keep_marker" 'found || $0 == m { found = 1; print }' "$out")
fi
if [[ -z $kept ]]; then
    kept="$keep_marker

## Optimization log

Each server optimization with the figures before and after it (same machine, same command).

| change | scenario | before | after |
|---|---|---|---|"
fi

mem_sat=$(j '.saturation.max_sustained_rate // "below the first step"' memory-ramp)
r1_sat=$(j '.saturation.max_sustained_rate // "below the first step"' redis1-ramp)
r2_sat=$(j '.saturation.max_sustained_rate // "below the first step"' redis2-ramp)
c3_sat=$(j '.saturation.max_sustained_rate // "below the first step"' cluster3-ramp)
p99='.steps[0].latency_ms.p99 * 100 | round / 100'
r1_p99=$(j "$p99" redis1-20k)
outcome='.steps[0] | "\(.achieved_ratio * 100 | floor)% delivered in time, lost \(.lost), dup \(.duplicated), reordered \(.reordered), errors \(.errors)"'
r1_ok=$(j "$outcome" redis1-20k)
r2_p99=$(j "$p99" redis2-20k)
r2_ok=$(j "$outcome" redis2-20k)
c3_p99=$(j "$p99" cluster3-20k)
c3_ok=$(j "$outcome" cluster3-20k)
half_rate=$(j '.steps[0].offered_rate' memory-half)
half_p99=$(j "$p99" memory-half)
half_ok=$(j "$outcome" memory-half)
idle_n=$(j '.idle.opened' idle-redis1)
idle_kib=$(j '.idle.server_kib_per_connection // "n/a" | if type == "number" then (. * 100 | round / 100) else . end' idle-redis1)
idle_mem_kib=$(j '.idle.server_kib_per_connection // "n/a" | if type == "number" then (. * 100 | round / 100) else . end' idle-memory)
logins=$(j '.setup.logins_per_sec // "n/a" | if type == "number" then floor else . end' idle-redis1)

# verdict VALUE ge|le LIMIT: whether a measured figure meets its target; "not measured" when the
# run gave no number (a failed run, "below the first step").
verdict() {
    awk -v v="$1" -v op="$2" -v limit="$3" 'BEGIN {
        if (v !~ /^[0-9]+(\.[0-9]+)?$/) { print "not measured"; exit }
        met = op == "ge" ? v + 0 >= limit + 0 : v + 0 <= limit + 0
        print met ? "met" : "**missed**"
    }'
}

# cost_row TITLE NAME: one row of the cost-per-message table from a fixed-rate run's JSON.
cost_row() {
    jq -r --arg title "$1" '
        def us: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
        def per_core: if . == null or . == 0 then "-" else (1e6 / . / 1000 | round | tostring) + "k" end;
        def role(r): [.cpu[] | select(.role == r) | .us_per_msg] | if length == 0 then null elif any(. == null) then null else add end;
        if .mode == null then "| \($title) | run failed | | | | | | |" else
        .steps[0] as $s | ($s | role("relay")) as $relay | ($s | role("other")) as $redis |
        "| \($title) | \($s.delivered) | \($s.achieved_rate | floor) | **\($relay | us)** | **\($redis | us)** | \($s | role("generator") | us) | \($relay | per_core) | \($redis | per_core) |"
        end' "$r/$2.json"
}

# The floors: each engine's CPU µs per delivered message against its floor's, in this run.
# us_per_msg NAME ROLE: the summed figure of a run's processes of ROLE (empty when unknown).
us_per_msg() {
    jq -r --arg role "$2" '[.steps[0].cpu[]? | select(.role == $role) | .us_per_msg]
        | if length == 0 or any(. == null) then "" else add * 10 | round / 10 end' "$r/$1.json"
}
# ratio A B: A / B as `2.3×`, or `-` when either is unknown.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.1f×\n", a / b }'; }
fwd_us=$(us_per_msg floor-forwarder relay)
mem_us=$(us_per_msg memory-20k relay)
r1_relay_us=$(us_per_msg redis1-20k relay)
r1_redis_us=$(us_per_msg redis1-20k other)
redis_floor_us=$(jq -r '.redis_us_per_msg // "" | if . == "" then . else . * 10 | round / 10 end' "$r/floor-redis.json")
fwd_ok=$(j "$outcome" floor-forwarder)
# One core: the saturation of each setup with its servers on core 0 and the generator on core 1.
sat_on_core() { jq -r '.saturation.max_sustained_rate // ""' "$r/core1-$1-ramp.json"; }
core_fwd=$(sat_on_core forwarder)
core_r1=$(sat_on_core redis1)
core_mem=$(sat_on_core memory)
core_r1_ratio=$(awk -v a="$core_r1" -v b="$core_fwd" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }')
core_mem_ratio=$(awk -v a="$core_mem" -v b="$core_fwd" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }')
floor_table="| engine | CPU µs/msg | its floor | floor CPU µs/msg | ratio to the floor |
|---|---:|---|---:|---:|
| relay on Redis, 1 replica | ${r1_relay_us:--} | bare forwarder | ${fwd_us:--} | **$(ratio "$r1_relay_us" "$fwd_us")** |
| relay, memory engine | ${mem_us:--} | bare forwarder | ${fwd_us:--} | **$(ratio "$mem_us" "$fwd_us")** |
| redis-server (Redis, 1 replica) | ${r1_redis_us:--} | Redis floor (XADD + PUBLISH + XDEL) | ${redis_floor_us:--} | **$(ratio "$r1_redis_us" "$redis_floor_us")** |"
# One row per run in the kept part of the document, so the ratios have a history.
floor_history='## Cost against the floors, run by run'
if ! grep -qxF "$floor_history" <<<"$kept"; then
    kept+="

$floor_history

Written by \`make bench\`, one row per run: the relay's and redis-server's CPU µs per delivered
message at 20,000 msgs/s as a ratio to their floors measured in the same run (see \"Floors\"
under \"How to read the figures\").

| run | commit | forwarder µs/msg | relay on Redis / forwarder | memory engine / forwarder | Redis floor µs/msg | redis-server / Redis floor | one core: relay + Redis saturation / forwarder's |
|---|---|---:|---:|---:|---:|---:|---:|"
fi
# Runs written before the one-core column: the column added, empty for them.
if grep -qxF '|---|---|---:|---:|---:|---:|---:|' <<<"$kept"; then
    kept=$(awk -v heading="$floor_history" '
        $0 == heading { in_section = 1 }
        in_section && /^\| run \|/ { print $0 " one core: relay + Redis saturation / forwarder'"'"'s |"; next }
        in_section && $0 == "|---|---|---:|---:|---:|---:|---:|" { print $0 "---:|"; next }
        in_section && /^\|/ { print $0 " - |"; next }
        in_section && /^## / && $0 != heading { in_section = 0 }
        { print }' <<<"$kept")
fi
floor_row="| $started_at | $commit | ${fwd_us:--} | $(ratio "$r1_relay_us" "$fwd_us") | $(ratio "$mem_us" "$fwd_us") | ${redis_floor_us:--} | $(ratio "$r1_redis_us" "$redis_floor_us") | $([[ $core_r1_ratio == n/a ]] && echo - || echo "${core_r1_ratio}×") |"
kept=$(awk -v heading="$floor_history" -v row="$floor_row" '
    $0 == heading { in_section = 1 }
    in_section && /^\|/ { in_table = 1 }
    in_table && !/^\|/ { print row; in_section = in_table = 0 }
    { print }
    END { if (in_table) print row }' <<<"$kept")

tmp_out=$(mktemp "${TMPDIR:-/tmp}/benchmarks.XXXXXX")
{
    cat <<EOF
# Benchmarks

Written by \`make bench\` ([scripts/bench.sh](../scripts/bench.sh)) on $started_at, commit
$commit, in $((elapsed / 60)) min $((elapsed % 60)) s. Load generator: \`enigma-bench\`
(src/bin/enigma-bench), on the same machine as the servers.

## Machine

- CPU: $cpu_model, $(nproc) cores (\`nproc\`)
- Memory: $mem_total; kernel $(uname -r)
- Load average (1, 5, 15 min) before the run: $load_before; after it: $load_after.
  The generator and the servers share the same $(nproc) cores; anything else running at the time (compiles, tests)
  shares them too and shows up as lower throughput and higher tail latency.
- Open-file limit used: $fd_limit (\`ulimit -n\`, raised to the hard limit by the script).

## Summary against the targets

| target | measured | verdict |
|---|---|---|
| memory engine: saturation ≥ 100,000 msgs/s | $mem_sat msgs/s | $(verdict "$mem_sat" ge 100000) |
| Redis engine, 1 replica: saturation ≥ 40,000 msgs/s | $r1_sat msgs/s | $(verdict "$r1_sat" ge 40000) |
| Redis engine, 1 replica: p99 ≤ 5 ms at 20,000 msgs/s | p99 $r1_p99 ms ($r1_ok) | $(verdict "$r1_p99" le 5) |
| Redis engine, 2 replicas (pairs across replicas): saturation | $r2_sat msgs/s | no target |
| Redis engine, 2 replicas: p99 at 20,000 msgs/s | p99 $r2_p99 ms ($r2_ok) | no target |
| Redis Cluster (3 masters on the same cores), 1 replica: saturation | $c3_sat msgs/s | no target |
| Redis Cluster, 1 replica: p99 at 20,000 msgs/s | p99 $c3_p99 ms ($c3_ok) | no target |
| memory engine: p99 at half the saturation rate ($half_rate msgs/s) | p99 $half_p99 ms ($half_ok) | no target |
| idle connections: ≥ 50,000 on one replica | $idle_n sockets (Redis engine; the open-file limit here is $fd_limit) | $(verdict "$idle_n" ge 50000) |
| idle connections: ≤ 8 KiB RSS each | $idle_kib KiB (Redis engine); $idle_mem_kib KiB (memory engine) | $(verdict "$idle_kib" le 8) (Redis engine); $(verdict "$idle_mem_kib" le 8) (memory engine) |
| idle connections: ≤ 4 KiB RSS each | $idle_kib KiB (Redis engine); $idle_mem_kib KiB (memory engine) | $(verdict "$idle_kib" le 4) (Redis engine); $(verdict "$idle_mem_kib" le 4) (memory engine) |
| logins ≥ 20,000/s on the Redis engine | $logins/s ($idle_n logins, 128 in flight) | $(verdict "$logins" ge 20000) |
| relay CPU on Redis ≤ 15 µs per message (1 replica; cost per message below) | ${r1_relay_us:-n/a} µs | $(verdict "${r1_relay_us:-n/a}" le 15) |
| redis-server CPU ≤ 5 µs per message (1 replica; cost per message below) | ${r1_redis_us:-n/a} µs | $(verdict "${r1_redis_us:-n/a}" le 5) |
| relay on Redis ≤ 1.0× the bare forwarder's CPU per message | $(ratio "$r1_relay_us" "$fwd_us") (${r1_relay_us:-n/a} against ${fwd_us:-n/a} µs) | $(verdict "$(awk -v a="$r1_relay_us" -v b="$fwd_us" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b }')" le 1.0) |
| redis-server ≤ 2× the Redis floor per message | $(ratio "$r1_redis_us" "$redis_floor_us") (${r1_redis_us:-n/a} against ${redis_floor_us:-n/a} µs) | $(verdict "$(awk -v a="$r1_redis_us" -v b="$redis_floor_us" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b }')" le 2.0) |
| one core (relay and redis-server on core 0, generator on core 1): saturation ≥ 0.5× the bare forwarder's on that core | ${core_r1:-n/a} against ${core_fwd:-n/a} msgs/s: ${core_r1_ratio}× (memory engine ${core_mem:-n/a}: ${core_mem_ratio}×) | $(verdict "$core_r1_ratio" ge 0.5) |

## Cost per message

CPU time (user + system, all threads, from \`/proc/PID/stat\`) of each process over the
fixed 20,000 msgs/s run (${fixed} s, drain included), divided by the messages delivered. It is
what decides how many relay replicas and Redis shards a load needs (see the sizing table in
[operations.md](operations.md)). It depends far less than throughput on what else runs on the
machine, but not nothing (steal time and cold caches count as CPU): on a busy machine expect
±20 % between runs. Several relays or Redis nodes: their sum. Targets (one replica on one
Redis): relay ≤ 15 µs, ${r1_relay_us:-n/a} measured, $(verdict "${r1_relay_us:-n/a}" le 15); redis-server ≤ 5 µs,
${r1_redis_us:-n/a} measured, $(verdict "${r1_redis_us:-n/a}" le 5).

| setup | delivered | msgs/s | relay CPU µs/msg | redis-server CPU µs/msg | generator µs/msg | msgs/s per relay core | msgs/s per Redis core |
|---|---:|---:|---:|---:|---:|---:|---:|
$(cost_row "memory engine" memory-20k)
$(cost_row "Redis, 1 replica" redis1-20k)
$(cost_row "Redis, 2 replicas (pairs across them)" redis2-20k)
$(cost_row "Redis Cluster, 3 masters, 1 replica" cluster3-20k)

## Cost against the floors

The same load as the cost table (20,000 msgs/s, $pairs pairs, 256 B payloads), in this run on
the same machine, on the two floors (what they include: "Floors" under "How to read the
figures"): a bare WebSocket forwarder for the relay ($fwd_ok) and Redis's own commands for
redis-server.

$floor_table

What one core carries: ramps (as below) with the servers pinned to core 0 and the generator to
core 1 (\`taskset\`; the relay's runtime then runs one worker), the bare forwarder alone, then
one relay with its redis-server, then the memory engine. Saturation as a fraction of the
forwarder's on the same core:

| on core 0 | saturation msgs/s | against the forwarder |
|---|---:|---:|
| bare forwarder | ${core_fwd:-n/a} | 1.00× |
| relay + redis-server (1 replica) | ${core_r1:-n/a} | ${core_r1_ratio}× |
| relay, memory engine | ${core_mem:-n/a} | ${core_mem_ratio}× |

## How to read the figures

- **Open loop.** Send times are fixed in advance (message \`k\` at \`start + k/rate\`, spread
  over the pairs); a slow server shows up as latency and a shortfall, never as a lower offered
  rate. Latency runs from the scheduled send time to the receipt (from the actual send time
  when the sender released a message up to 2 ms early, which it does to absorb tokio's 1 ms
  timer granularity). *send lag* is how late the generator wrote messages: when it grows, the
  generator or TCP back-pressure is part of the latency.
- **achieved** counts messages received inside the sending window; **lost** is what had not
  arrived within the drain period (up to 10 s) after a step; duplicates and reordering are
  checked per pair with sequence numbers. **errors** are error frames and closed sockets.
  A socket the server closes with 1001, 1012 or 1013 (going away, restarting, try again later)
  is opened again, as a real client would; what was written on a socket refused with 1013
  (the relay refuses a socket before reading from it: at capacity, or Redis unavailable when
  the socket is attached) is counted **refused**, not lost.
- **Saturation** (ramp): the highest step that held: achieved ≥ 95% of offered, p99 ≤ 50 ms,
  nothing lost, duplicated or reordered, no errors. Steps grow by 1.5× until one fails, then
  three bisection steps refine the point; each step lasts ${step} s after a 1 s warm-up.
- **CPU gen/server %**: CPU time of the generator and of the server process(es) during the
  step, in percent of one core (200% is the whole machine).
- **Floors.** The *bare forwarder* (\`enigma-floor forwarder\`) is the relay's stack — axum,
  hyper-util's server, tokio's multi-threaded runtime, jemalloc, the relay's socket buffers,
  \`TCP_NODELAY\` — serving the same wire format, with nothing in between: it reads a frame, finds
  \`to\` in it and writes the frame's own bytes to the recipient's socket (one flush per batch).
  No storage, receipts, acknowledgements, limits, authentication, session state, metrics or logs;
  a message to a user with no socket is dropped; only what the cost scenario's specification
  clients use is spoken (no \`enigma.v1\`, which the scenario does not use). No relay can forward
  for less on this stack, so it is the relay's floor. The *Redis floor* (\`enigma-floor redis\`)
  sends, per message, the three native commands a stored-and-delivered message cannot do without —
  \`XADD\` of the envelope to the recipient's stream, the doorbell \`PUBLISH\` (to a subscriber
  that reads it, as a relay does) and \`XDEL\` once delivered — pipelined 100 messages deep
  through the relay's \`redis\` crate, at the same rate, payload and recipients, against a
  redis-server started like the relay's; it leaves out what the relay's scripts add (the inbox
  share, sequence numbers, TTLs, send budgets, Lua). Its figure is redis-server's CPU time from
  \`/proc\` per message.
- Idle connections: server RSS (\`VmRSS\`) after the users logged in and before the sockets
  opened, and again after holding them 10 s; the difference divided by the sockets.
  The count is bounded by the open-file limit of this machine, not by the server.

## Running the generator yourself

\`\`\`sh
cargo build --release --bin enigma-server --bin enigma-bench
target/release/enigma-server &    # memory engine on 0.0.0.0:8000
target/release/enigma-bench --url http://127.0.0.1:8000 --pairs 100 --rate 20000 --duration 10s
target/release/enigma-bench --url http://127.0.0.1:8000 --ramp --rate 10000 --duration 3s
target/release/enigma-bench --url http://127.0.0.1:8000 --connections 10000 --server-pid \$(pgrep -n enigma-server)
\`\`\`

Several \`--url\`s (comma-separated) spread the pairs over replicas, each pair's sender and
recipient on different ones. \`--cpu-pid [LABEL=]PID\` (repeatable) adds a process, e.g.
redis-server, to the CPU-per-delivered-message figures (the generator and every \`--server-pid\`
are always in them). \`--json\` (or \`--json-file PATH\`) for scripts, \`--format
markdown\` for tables like the ones below, \`--help\` for the rest. Traffic goes to loopback
addresses only.

## Results

EOF
    section "Memory engine (one process, nothing durable)" memory-ramp memory-half memory-20k
    section "Redis engine, 1 replica (stored before announced)" redis1-20k redis1-ramp
    section "Redis engine, 2 replicas (sender and recipient on different replicas)" redis2-20k redis2-ramp
    section "Redis Cluster, 3 masters, 1 replica (sharded pub/sub)" cluster3-20k cluster3-ramp
    section "Idle connections" idle-memory idle-redis1
    section "Floors (bare forwarder; Redis's own commands)" floor-forwarder floor-redis
    section "One core (servers on core 0, generator on core 1)" core1-forwarder-ramp core1-redis1-ramp core1-memory-ramp
    echo "$kept"
} >"$tmp_out"
mv "$tmp_out" "$out"
echo "bench: wrote $out in $((elapsed / 60)) min $((elapsed % 60)) s" >&2
# The sizing figures of docs/operations.md are this run's (a scratch BENCH_OUT leaves them be).
if [[ $out == "$root/docs/BENCHMARKS.md" ]]; then
    python3 "$root/scripts/sizing.py" --write
fi
