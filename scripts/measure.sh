# Sourced, not run: what the measurement scripts (bench.sh, ab_cost.sh, cost_breakdown.sh,
# soak.sh, stall_rss.sh) start the same way. The caller has `set -euo pipefail`, a scratch
# directory in `work` and an array `pids` that its exit trap kills; `pin_servers` (a command
# prefix such as `taskset -c 0`) is used when set. Errors name the calling script.

measure_name=${0##*/}
measure_name=${measure_name%.sh}
[[ -v pin_servers ]] || pin_servers=()

# free_port: a free loopback port below the ephemeral range (so no outgoing connection of the
# load generator can be holding it, nor take it before the server binds it).
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "$measure_name: no free port found" >&2
    return 1
}

# limits_env MODE: sets the array `limit_env`, the relay's per-client limits for a measurement.
#   on:      nothing per address (the generator is one address), no inbox share, room for every
#            socket, the per-user send budgets far above the load; every other budget (the
#            strangers' pool, contacts, the storage ledger) as shipped: what a message costs.
#   off:     the same, and the per-user send budgets off too (users far busier than people).
#   shipped: nothing changed (expect `rate_limited` refusals).
limits_env() {
    local clients=(
        ENIGMA__SERVER__MAX_CONNECTIONS=100000 ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS=0
        ENIGMA__LIMITS__INBOX_SHARE=0 ENIGMA__LIMITS__INBOX_SHARE_BYTES=0
        ENIGMA__LIMITS__MAX_UNUSED_REGISTRATIONS_PER_PREFIX=0 ENIGMA__LIMITS__STORAGE__DIRECTORY_PER_PREFIX=0
        ENIGMA__RATE__LOGIN_PER_ADDRESS__BURST=0 ENIGMA__RATE__CHALLENGE_PER_ADDRESS__BURST=0
        ENIGMA__RATE__SOCKET_PER_ADDRESS__BURST=0 ENIGMA__RATE__SOCKET_PER_USER__BURST=0
    )
    case $1 in
        on) limit_env=("${clients[@]}"
                ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST=1000000 ENIGMA__RATE__SEND_MESSAGES_PER_USER__PER_SECOND=1000000
                ENIGMA__RATE__SEND_BYTES_PER_USER__BURST=1000000000 ENIGMA__RATE__SEND_BYTES_PER_USER__PER_SECOND=1000000000
            ) ;;
        off) limit_env=("${clients[@]}" ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST=0 ENIGMA__RATE__SEND_BYTES_PER_USER__BURST=0) ;;
        shipped) limit_env=() ;;
        *) echo "$measure_name: the limits are on, off or shipped, not '$1'" >&2; return 2 ;;
    esac
}

# start_redis [ARGS...]: a redis-server without persistence on a free loopback port (ARGS are
# added to its command line), its log in $work; sets redis_port and redis_pid once it answers.
start_redis() {
    redis_port=$(free_port)
    "${pin_servers[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" --logfile "$work/redis-$redis_port.log" --daemonize no "$@" &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 1 100); do
        [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] && return
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$measure_name: redis-server on $redis_port did not start" >&2
    cat "$work/redis-$redis_port.log" >&2 || true
    return 1
}

# start_listening WHAT LOG COMMAND...: runs COMMAND (after `pin_servers`), its output in LOG;
# sets listening_pid once it prints `listening on` (after 30 s, or if it exits, fails with LOG).
start_listening() {
    local what=$1 log=$2
    shift 2
    "${pin_servers[@]}" "$@" >"$log" 2>&1 &
    listening_pid=$!
    pids+=("$listening_pid")
    for _ in $(seq 1 300); do
        grep -q '^listening on' "$log" && return
        kill -0 "$listening_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$measure_name: $what did not start:" >&2
    cat "$log" >&2
    return 1
}

# start_relay BINARY LOG [NAME=VALUE...]: the relay on a free loopback port with `limit_env`,
# warnings only, and the given environment (which wins over both); sets relay_port and
# relay_pid once it listens.
start_relay() {
    local bin=$1 log=$2
    shift 2
    relay_port=$(free_port)
    start_listening "the relay" "$log" env "${limit_env[@]}" ENIGMA__SERVER__ADDR="127.0.0.1:$relay_port" \
        ENIGMA__LOG__LEVEL=warn "$@" "$bin"
    relay_pid=$listening_pid
}
