#!/usr/bin/env python3
"""The key directory's figures (docs/BENCHMARKS.md, "Key directory"), against release binaries.

    cargo build --release --locked --bin enigma-server --bin enigma-bench
    python3 scripts/directory_bench.py [--users 10000]

Starts its own redis-server (no persistence) and enigma-server on free loopback ports, with the
per-address limits off, and kills them on exit. Measures:
  - registrations per second with the directory on and off (enigma-bench's login phase: 2 x
    --pairs fresh keys, --concurrency at once);
  - the users registered at once, then published (one epoch of up to 10,000), and the publish
    time of the epochs that follow at that size (enigma_directory_publish_duration_seconds);
  - the size of a lookup, history and audit answer (JSON bytes, proof bytes);
  - lookup latency, one request at a time over one kept-alive connection;
  - what the directory takes in Redis per user (MEMORY USAGE of its keys).
Prints a Markdown section.
"""

import argparse
import base64
import http.client
import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_redis(work):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(proc)
    wait_for("redis-server", lambda: listening(port))
    return port


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout.strip()


def start_server(binary, redis_port, prefix, directory):
    port = free_port()
    env = dict(os.environ,
               ENIGMA__SERVER__ADDR=f"127.0.0.1:{port}",
               ENIGMA__REDIS__URL=f"redis://127.0.0.1:{redis_port}/",
               ENIGMA__REDIS__PREFIX=prefix,
               ENIGMA__DIRECTORY__ENABLED="true" if directory else "false",
               ENIGMA__RATE__LOGIN_PER_ADDRESS__BURST="0",
               ENIGMA__RATE__DIRECTORY_PER_ADDRESS__BURST="0",
               ENIGMA__RATE__SOCKET_PER_ADDRESS__BURST="0",
               ENIGMA__RATE__SOCKET_PER_USER__BURST="0",
               ENIGMA__RATE__SEND_MESSAGES_PER_USER__BURST="0",
               ENIGMA__RATE__SEND_BYTES_PER_USER__BURST="0",
               ENIGMA__SERVER__MAX_CONNECTIONS="100000",
               ENIGMA__LIMITS__MAX_UNUSED_REGISTRATIONS_PER_PREFIX="0",
               ENIGMA__LIMITS__STORAGE__DIRECTORY_PER_PREFIX="0",
               ENIGMA__SERVER__MAX_CONNECTIONS_PER_ADDRESS="0",
               ENIGMA__LOG__LEVEL="warn")
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(proc)
    wait_for("enigma-server", lambda: listening(port))
    return proc, port


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path):
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, response.read()


def metric(port, name):
    status, body = Client(port).get("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def random_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


def register(port, count, threads=16):
    def worker(n):
        client = Client(port)
        users = []
        for _ in range(n):
            key = random_key()
            status, body = client.get(f"/login/{key}")
            assert status == 200, body
            users.append((json.loads(body)["userId"], key))
        return users
    share = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [u for part in pool.map(worker, share) for u in part]


def logins_per_second(bench, port, pairs, concurrency):
    """enigma-bench's login phase: 2 x pairs fresh registrations, `concurrency` at once."""
    out = subprocess.run([bench, "--url", f"http://127.0.0.1:{port}", "--pairs", str(pairs), "--rate", "100",
                          "--duration", "1s", "--warmup", "0s", "--concurrency", str(concurrency), "--json"],
                         capture_output=True, text=True)
    match = re.search(r'"logins_per_sec":\s*([0-9.]+)', out.stdout + out.stderr)
    if not match:
        sys.exit(f"enigma-bench gave no logins_per_sec:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default=os.path.join(ROOT, "target/release/enigma-server"))
    parser.add_argument("--bench", default=os.path.join(ROOT, "target/release/enigma-bench"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="enigma-directory-bench.")
    redis_port = start_redis(work)
    print(f"host: {os.cpu_count()} cores, load {open('/proc/loadavg').read().split()[:3]}", file=sys.stderr)

    # Registrations per second, the directory on and off, alternated.
    rates = {True: [], False: []}
    for r in range(args.rounds):
        for directory in (True, False):
            proc, port = start_server(args.server, redis_port, f"r{r}{int(directory)}:", directory)
            rates[directory].append(logins_per_second(args.bench, port, args.pairs, args.concurrency))
            if directory:
                wait_for("the registrations to be published",
                         lambda: metric(port, "enigma_directory_pending") == 0, timeout=300)
            proc.kill()
            proc.wait()
    # 10,000 users, published, then epochs at that size.
    proc, port = start_server(args.server, redis_port, "kt:", True)
    started = time.monotonic()
    users = register(port, args.users)
    registered = time.monotonic() - started
    wait_for("every user to be published", lambda: metric(port, "enigma_directory_pending") == 0, timeout=600)
    published = time.monotonic() - started
    first_sum = metric(port, "enigma_directory_publish_duration_seconds_sum")
    first_count = metric(port, "enigma_directory_publish_duration_seconds_count")
    for _ in range(5):
        register(port, 100, threads=4)
        before = metric(port, "enigma_directory_epoch")
        wait_for("the next epoch", lambda: metric(port, "enigma_directory_pending") == 0
                 and metric(port, "enigma_directory_epoch") > before, timeout=60)
    later_sum = metric(port, "enigma_directory_publish_duration_seconds_sum") - first_sum
    later_count = metric(port, "enigma_directory_publish_duration_seconds_count") - first_count
    client = Client(port)
    status, body = client.get("/directory/root")
    latest = json.loads(body)["epoch"]
    sizes = {}
    user, _ = users[len(users) // 2]
    for name, path in (("lookup", f"/directory/lookup/{user}"), ("history", f"/directory/history/{user}"),
                       ("audit (1 epoch)", f"/directory/audit/{latest - 1}/{latest}"),
                       ("audit", f"/directory/audit/1/{latest}")):
        t = time.perf_counter()
        status, body = client.get(path)
        took = time.perf_counter() - t
        assert status == 200, (path, status, body)
        answer = json.loads(body)
        if name == "audit":
            # An answer stops at its budget (docs/protocol.md): say which epochs it covered.
            name = f"audit asked for epochs 1 to {latest}: answered 1 to {answer['to']} in {took:.1f} s,"
        sizes[name] = (len(body), len(base64.b64decode(answer["proof"])))
    latencies = []
    for user, _ in users[:1000]:
        t = time.perf_counter()
        status, _ = client.get(f"/directory/lookup/{user}")
        latencies.append((time.perf_counter() - t) * 1000)
        assert status == 200
    latencies.sort()
    keys = [f"kt:kt:{{kt}}:{part}" for part in ("nodes", "states", "roots", "epoch", "pending")]
    directory_bytes = sum(int(redis_cli(redis_port, "MEMORY", "USAGE", key, "SAMPLES", "0") or 0) for key in keys)
    total_users = len(users) + 500

    print("| figure | value |")
    print("|---|---|")
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"| registrations/s, directory on (median of {args.rounds}: {', '.join(f'{x:,.0f}' for x in rates[True])}) | {on:,.0f} |")
    print(f"| registrations/s, directory off (median of {args.rounds}: {', '.join(f'{x:,.0f}' for x in rates[False])}) | {off:,.0f} |")
    print(f"| {args.users:,} users registered (16 clients) / all published | {registered:.1f} s / {published:.1f} s |")
    print(f"| epochs publishing them ({first_count:.0f}), publish time in all | {first_sum:.2f} s |")
    print(f"| one epoch of 100 registrations at {args.users:,} users (mean of {later_count:.0f}) | {1000 * later_sum / max(later_count, 1):.0f} ms |")
    for name, (json_bytes, proof_bytes) in sizes.items():
        print(f"| {name} answer / its proof | {json_bytes:,} B / {proof_bytes:,} B |")
    print(f"| lookup latency, one at a time (p50 / p99 of 1,000) | {latencies[499]:.2f} ms / {latencies[989]:.2f} ms |")
    print(f"| Redis memory of the directory, per user ({total_users:,} users) | {directory_bytes / total_users:,.0f} B |")


if __name__ == "__main__":
    try:
        main()
    finally:
        for proc in PROCS:
            proc.kill()
