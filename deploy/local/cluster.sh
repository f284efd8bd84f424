#!/usr/bin/env bash
# A local Enigma cluster: one Redis, three enigma-server replicas and an nginx load balancer,
# all on 127.0.0.1, all run from deploy/local/run/ (pid files, logs, Redis data).
#
#   bash deploy/local/cluster.sh up       # start everything (make cluster)
#   bash deploy/local/cluster.sh status   # what runs, what is ready
#   bash deploy/local/cluster.sh down     # stop everything this script started (make cluster-down)
#
#   clients:   http://127.0.0.1:8000 and ws://127.0.0.1:8000/ws/<userId>   (nginx, round-robin)
#   replicas:  http://127.0.0.1:8101 .. 8103  (each with its own /metrics, /readyz)
#   redis:     127.0.0.1:6390, appendonly yes, data in deploy/local/run/redis
#   prometheus: http://127.0.0.1:9190 (Debian's `prometheus`), scraping every replica every 5 s
#              with deploy/prometheus/alerts.yml loaded; data in deploy/local/run/prometheus;
#              `up` returns once it has scraped every replica (at most SCRAPE_TIMEOUT seconds)
#
# Environment overrides: ENIGMA_BIN (server binary; default: the newest of target/release,
# target/quick and target/debug, `make quick` if none exists), NGINX (nginx binary), REDIS_PORT, REPLICA_PORTS
# ("8101 8102 8103"), LB_ADDR ("127.0.0.1:8000"), ENIGMA__* settings (passed to the replicas),
# PROMETHEUS (binary), PROMETHEUS_PORT (9190; PROMETHEUS_PORT=off: no Prometheus), SCRAPE_TIMEOUT
# (30: how long `up` waits for Prometheus' first scrape of every replica).
# `down` keeps the Redis data; `rm -rf deploy/local/run` after `down` wipes it.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RUN="$HERE/run"
REDIS_PORT="${REDIS_PORT:-6390}"
REPLICA_PORTS="${REPLICA_PORTS:-8101 8102 8103}"
LB_ADDR="${LB_ADDR:-127.0.0.1:8000}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9190}"
START_TIMEOUT=30 # seconds for any one component to become ready
SCRAPE_TIMEOUT="${SCRAPE_TIMEOUT:-30}" # seconds for Prometheus to scrape every replica once (it scrapes every 5 s)
STOP_TIMEOUT=20  # seconds for any one component to exit (a replica drains for up to 10 s)

say() { printf '%s\n' "$*"; }
die() {
  printf 'cluster: %s\n' "$*" >&2
  exit 1
}

# Whether PID runs (a zombie waiting for its parent to reap it does not).
alive() {
  local state
  state="$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# The pid in FILE if that process is alive and its command line contains NAME (a recycled
# pid is not ours); nothing otherwise.
live_pid() {
  local file="$1" name="$2" pid
  [ -f "$file" ] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [ -n "$pid" ] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name" || return 1
  printf '%s\n' "$pid"
}

# Waits until COMMAND succeeds, at most SECONDS.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${seconds}s waiting for $what"
    sleep 0.2
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

server_binary() {
  if [ -n "${ENIGMA_BIN:-}" ]; then
    [ -x "$ENIGMA_BIN" ] || die "ENIGMA_BIN=$ENIGMA_BIN is not an executable"
    printf '%s\n' "$ENIGMA_BIN"
    return
  fi
  # The newest of the builds (make bench's, make run's, make test's); make run's if there is none.
  local candidate newest=""
  for candidate in "$ROOT"/target/{release,quick,debug}/enigma-server; do
    if [ -x "$candidate" ] && { [ -z "$newest" ] || [ "$candidate" -nt "$newest" ]; }; then
      newest="$candidate"
    fi
  done
  if [ -z "$newest" ]; then
    say "building enigma-server (make quick)…" >&2
    (cd "$ROOT" && make --no-print-directory quick >&2)
    newest="$ROOT/target/quick/enigma-server"
  fi
  printf '%s\n' "$newest"
}

nginx_binary() {
  if [ -n "${NGINX:-}" ]; then
    printf '%s\n' "$NGINX"
  elif command -v nginx >/dev/null 2>&1; then
    command -v nginx
  elif [ -x /usr/sbin/nginx ]; then
    printf '%s\n' /usr/sbin/nginx
  else
    die "nginx not found: apt-get install nginx-light (or set NGINX=/path/to/nginx)"
  fi
}

prometheus_binary() {
  if [ -n "${PROMETHEUS:-}" ]; then
    printf '%s\n' "$PROMETHEUS"
  elif command -v prometheus >/dev/null 2>&1; then
    command -v prometheus
  else
    die "prometheus not found: apt-get install prometheus (or set PROMETHEUS=/path, or PROMETHEUS_PORT=off)"
  fi
}

# Prometheus scraping every replica (job "enigma", which the shipped rules select), the alert
# rules loaded; its configuration and TSDB under run/prometheus.
start_prometheus() {
  [ "$PROMETHEUS_PORT" = off ] && return
  local prom dir="$RUN/prometheus" targets="" port
  if live_pid "$dir/prometheus.pid" prometheus >/dev/null; then
    say "prometheus already running on 127.0.0.1:$PROMETHEUS_PORT"
    return
  fi
  prom="$(prometheus_binary)"
  port_free "$PROMETHEUS_PORT" || die "port $PROMETHEUS_PORT is taken by something else (set PROMETHEUS_PORT)"
  mkdir -p "$dir/data"
  for port in $REPLICA_PORTS; do
    targets+="'127.0.0.1:$port', "
  done
  cat >"$dir/prometheus.yml" <<CONFIG
# Generated by deploy/local/cluster.sh up.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files: ['$ROOT/deploy/prometheus/alerts.yml']
scrape_configs:
  - job_name: enigma
    static_configs:
      - targets: [${targets%, }]
CONFIG
  nohup "$prom" --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >>"$dir/prometheus.log" 2>&1 </dev/null &
  echo $! >"$dir/prometheus.pid"
  wait_for "$START_TIMEOUT" "prometheus on port $PROMETHEUS_PORT (log: $dir/prometheus.log)" \
    http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
  say "prometheus http://127.0.0.1:$PROMETHEUS_PORT   (config: $dir/prometheus.yml, log: $dir/prometheus.log)"
}

# "UP SCRAPED" for the replicas' targets: how many Prometheus found up at their last scrape, and
# how many it has scraped at all (a target not scraped yet is neither up nor down: its health
# is "unknown", and a target Prometheus has not loaded yet is not listed). From the HTTP API,
# which every Prometheus build serves at the same path (the UI's pages move: Debian's package
# serves the classic UI under /classic/).
prometheus_targets() {
  local json
  json="$(curl -fsS --max-time 2 "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/targets?state=active")" || return 1
  printf '%s %s\n' "$(grep -o '"health":"up"' <<<"$json" | wc -l)" \
    "$(grep -o '"health":"\(up\|down\)"' <<<"$json" | wc -l)"
}

# Whether Prometheus has scraped every replica at least once.
prometheus_scraped_all() {
  local up scraped
  read -r up scraped < <(prometheus_targets) || return 1
  [ "$scraped" -ge "$(wc -w <<<"$REPLICA_PORTS")" ]
}

# Waits (bounded) for Prometheus' first scrape of every replica, so that `status` (and its
# targets page) right after `up` shows what is true rather than "0 up".
wait_first_scrape() {
  [ "$PROMETHEUS_PORT" = off ] && return
  local deadline=$((SECONDS + SCRAPE_TIMEOUT))
  until prometheus_scraped_all; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "prometheus has not scraped every replica after ${SCRAPE_TIMEOUT}s (see $RUN/prometheus/prometheus.log)"
      return
    fi
    sleep 0.5
  done
  local up scraped
  read -r up scraped < <(prometheus_targets)
  say "prometheus scraped every replica: targets up $up of $(wc -w <<<"$REPLICA_PORTS")"
}

# Stops the process in FILE (if it is alive and ours) with SIGTERM and waits for it to exit.
stop() {
  local file="$1" name="$2" label="$3" pid
  if pid="$(live_pid "$file" "$name")"; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        say "$label (pid $pid) did not exit within ${STOP_TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
    say "stopped $label (pid $pid)"
  fi
  rm -f "$file"
}

up() {
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found: apt-get install redis-server"
  command -v curl >/dev/null 2>&1 || die "curl not found"
  local nginx bin lb_port="${LB_ADDR##*:}"
  nginx="$(nginx_binary)"
  bin="$(server_binary)"
  mkdir -p "$RUN/redis" "$RUN/nginx/tmp"

  # Redis, with the append-only file (each write logged, fsync every second).
  if live_pid "$RUN/redis.pid" redis-server >/dev/null; then
    say "redis already running on 127.0.0.1:$REDIS_PORT"
  else
    port_free "$REDIS_PORT" || die "port $REDIS_PORT is taken by something else"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN/redis" \
      --appendonly yes --appendfsync everysec \
      --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log"
    wait_for "$START_TIMEOUT" "redis on port $REDIS_PORT" redis-cli -p "$REDIS_PORT" ping
    say "redis      127.0.0.1:$REDIS_PORT   (data: $RUN/redis, log: $RUN/redis.log)"
  fi

  # The replicas: same Redis, same key prefix, JSON logs.
  local port
  for port in $REPLICA_PORTS; do
    if live_pid "$RUN/replica-$port.pid" enigma-server >/dev/null; then
      say "replica on 127.0.0.1:$port already running"
      continue
    fi
    port_free "$port" || die "port $port is taken by something else"
    ENIGMA__SERVER__ADDR="127.0.0.1:$port" \
      ENIGMA__REDIS__URL="redis://127.0.0.1:$REDIS_PORT/" \
      ENIGMA__LOG__FORMAT=json \
      ENIGMA__SERVER__TRUSTED_PROXIES="${ENIGMA__SERVER__TRUSTED_PROXIES:-127.0.0.1}" \
      nohup "$bin" >>"$RUN/replica-$port.log" 2>&1 </dev/null &
    echo $! >"$RUN/replica-$port.pid"
  done
  for port in $REPLICA_PORTS; do
    wait_for "$START_TIMEOUT" "the replica on port $port (log: $RUN/replica-$port.log)" \
      http_ok "http://127.0.0.1:$port/readyz"
    say "replica    127.0.0.1:$port   (pid $(cat "$RUN/replica-$port.pid"), log: $RUN/replica-$port.log)"
  done

  # nginx, from its own prefix and rendered configuration.
  if live_pid "$RUN/nginx/nginx.pid" nginx >/dev/null; then
    say "nginx already running on $LB_ADDR"
  else
    port_free "$lb_port" || die "port $lb_port is taken by something else"
    local upstreams=""
    for port in $REPLICA_PORTS; do
      upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=10s;"$'\n'
    done
    upstreams="${upstreams%$'\n'}"
    local template conf="$RUN/nginx/nginx.conf"
    template="$(<"$HERE/nginx.conf.template")"
    template="${template//@LISTEN@/$LB_ADDR}"
    printf '%s\n' "${template//@UPSTREAMS@/$upstreams}" >"$conf"
    "$nginx" -t -q -p "$RUN/nginx/" -c "$conf" -e "$RUN/nginx/error.log" ||
      die "nginx rejected $conf"
    "$nginx" -p "$RUN/nginx/" -c "$conf" -e "$RUN/nginx/error.log"
    wait_for "$START_TIMEOUT" "nginx on $LB_ADDR (log: $RUN/nginx/error.log)" http_ok "http://$LB_ADDR/readyz"
    say "nginx      $LB_ADDR   (config: $conf, logs: $RUN/nginx/)"
  fi
  start_prometheus
  wait_first_scrape
  say ""
  say "Enigma cluster up: http://$LB_ADDR  ws://$LB_ADDR/ws/<userId>"
  say "stop it with: make cluster-down   (or bash deploy/local/cluster.sh down)"
}

down() {
  # The front first (no new traffic), then the replicas (each drains: 1001 to its sockets),
  # then Redis (SIGTERM: it flushes the append-only file and exits).
  stop "$RUN/nginx/nginx.pid" nginx nginx
  stop "$RUN/prometheus/prometheus.pid" prometheus prometheus
  local port
  for port in $REPLICA_PORTS; do
    stop "$RUN/replica-$port.pid" enigma-server "replica $port"
  done
  stop "$RUN/redis.pid" redis-server redis
}

status() {
  local pid port code=0
  if pid="$(live_pid "$RUN/redis.pid" redis-server)"; then
    say "redis      127.0.0.1:$REDIS_PORT  pid $pid  $(redis-cli -p "$REDIS_PORT" info memory 2>/dev/null | tr -d '\r' | grep '^used_memory_human:' || true)"
  else
    say "redis      not running"
    code=1
  fi
  for port in $REPLICA_PORTS; do
    if pid="$(live_pid "$RUN/replica-$port.pid" enigma-server)"; then
      local ready open
      ready="$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)"
      open="$(curl -s --max-time 2 "http://127.0.0.1:$port/metrics" | awk '$1 == "enigma_connections_open" { print $2 }' || true)"
      say "replica    127.0.0.1:$port  pid $pid  readyz $ready  open connections ${open:-0}"
    else
      say "replica    127.0.0.1:$port  not running"
      code=1
    fi
  done
  if pid="$(live_pid "$RUN/nginx/nginx.pid" nginx)"; then
    say "nginx      $LB_ADDR  pid $pid  readyz $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://$LB_ADDR/readyz" || true)"
  else
    say "nginx      not running"
    code=1
  fi
  if [ "$PROMETHEUS_PORT" != off ]; then
    if pid="$(live_pid "$RUN/prometheus/prometheus.pid" prometheus)"; then
      local up scraped total
      total="$(wc -w <<<"$REPLICA_PORTS")"
      if ! read -r up scraped < <(prometheus_targets); then
        say "prometheus 127.0.0.1:$PROMETHEUS_PORT  pid $pid  not answering its API"
        code=1
      elif [ "$scraped" -lt "$total" ]; then
        say "prometheus 127.0.0.1:$PROMETHEUS_PORT  pid $pid  waiting for the first scrape ($scraped of $total replicas scraped so far, up $up)"
      else
        say "prometheus 127.0.0.1:$PROMETHEUS_PORT  pid $pid  targets up $up of $total"
      fi
    else
      say "prometheus not running"
      code=1
    fi
  fi
  return "$code"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    say "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
