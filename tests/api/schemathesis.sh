#!/usr/bin/env bash
# `make api-check`: schemathesis, with all its checks, against a live memory-engine server and
# the OpenAPI document that server generates (`/openapi.json`). The server runs on a free
# loopback port and is stopped on exit, also on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

bin=${ENIGMA_BIN:-target/debug/enigma-server}
[ -x "$bin" ] || cargo build --locked --bin enigma-server
st=$(command -v st || command -v schemathesis) || { echo "api-check: schemathesis is needed (pip install -r tests/api/requirements.txt)" >&2; exit 1; }

log=$(mktemp)
ENIGMA__ENGINE=memory ENIGMA__SERVER__ADDR=127.0.0.1:0 ENIGMA__LOG__LEVEL=warn "$bin" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
addr=
for _ in $(seq 1 100); do
    addr=$(sed -n 's/^listening on //p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "api-check: the server did not start" >&2; cat "$log" >&2; exit 1; }

"$st" --config-file tests/api/schemathesis.toml run "http://$addr/openapi.json" --checks all --max-examples "${API_CHECK_EXAMPLES:-100}" --no-color
