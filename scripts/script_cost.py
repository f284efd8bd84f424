#!/usr/bin/env python3
"""What redis-server spends per message on the relay's own scripts, with no relay in the way.

Runs the send and removal scripts of this tree (src/engine/redis/*.lua, rendered as the relay
renders them) on a fresh redis-server with a fixed workload shaped like `make bench`'s 20,000
msgs/s run on one replica: 100 sender->recipient pairs (senders are strangers to their
recipients, the strangers' pool on, per-sender shares off as in scripts/ab_cost.sh), 256-byte
payloads, every recipient connected to the sending replica (the `GET` of the connection
generation instead of a `PUBLISH`; with --remote every message is published, to no subscriber),
25 messages a send call (four calls a round in one pipeline), and every fifth round one removal
call for all recipients (5 ids each: what the remover's 25 ms linger gathers at that rate; a
busier relay gathers more, and a removal then costs less per message). Every message sent is
removed again.

With --ledger the storage ledger is on as shipped (what removals free comes off the holders'
day buckets: `held:net:<prefix>` and `held:{<sender>}`, charged beforehand): the way this
tree's remove.lua does it. A remove.lua that reads its first argument as the ledger's key
prefix (`local ledger = ARGV[1]`) takes it off itself in the same call; an older one
reports what it freed and the release script (release.lua, in the same directory) is called
after it, one call for all holders, as the relay did.

Prints Redis's own count of commands per message (`INFO commandstats`, the commands scripts
run included) and, with --callgrind, the instructions redis-server executed per message
(valgrind's callgrind, counting only while the workload runs; `hz 1` so that the server's
timer adds next to nothing): exact and independent of the machine's load, unlike CPU time.

    scripts/script_cost.py [--messages 20000] [--remote] [--ledger] [--callgrind [--profile FILE]] [--src DIR]

--src names a directory holding another send.lua and remove.lua (e.g. from
`git show <commit>:src/engine/redis/send.lua`) to compare with; with --ledger its release.lua
too, and release_rule.lua where those say `$RELEASE`.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PAIRS = 100
PER_CALL = 25
ROUNDS_PER_REMOVAL = 5
PAYLOAD = 256
TTL_MS = 30 * 24 * 3600 * 1000
# capacity, ttl, share, share bytes, inbox bytes, strangers' pool, pool bytes (the defaults,
# shares off as in scripts/ab_cost.sh)
SEND_ARGS = [10_000, TTL_MS, 0, 0, 64 << 20, 5_000, 24 << 20]
DOORBELL = "'m' .. id .. ' ' .. seq .. '\\n' .. envelope"


def render(src, name):
    """A script as the relay renders it (scripts.rs): the doorbell and, where the template has
    `$RELEASE` (release_rule.lua beside it), the ledger's release rule."""
    with open(os.path.join(src, name), encoding="utf-8") as f:
        source = f.read().replace("$DOORBELL", DOORBELL)
    if "$RELEASE" in source:
        with open(os.path.join(src, "release_rule.lua"), encoding="utf-8") as f:
            source = source.replace("$RELEASE", f.read().rstrip())
    return source


class Resp:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def send(self, commands):
        out = []
        for cmd in commands:
            out.append(b"*%d\r\n" % len(cmd))
            for arg in cmd:
                arg = arg if isinstance(arg, bytes) else str(arg).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        self.sock.sendall(b"".join(out))
        return [self.reply() for _ in commands]

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.sock.recv(1 << 20)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def commandstats(con):
    info = con.send([["INFO", "commandstats"]])[0].decode()
    stats = {}
    for m in re.finditer(r"cmdstat_(\S+):calls=(\d+),usec=(\d+)", info):
        stats[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return stats


def release(con, sha, freed):
    """What the relay's `ledger::release` does with a removal's report: one change per holder
    and day, one call of the release script for all."""
    by_key = {}
    for i in range(0, len(freed), 4):
        day, net, sender, size = freed[i:i + 4]
        for key in ([f"held:net:{net.decode()}"] if net else []) + [f"held:{{{sender.decode()}}}"]:
            by_key[(key, day)] = by_key.get((key, day), 0) + size
    if by_key:
        keys = [key for key, _ in by_key]
        argv = [a for (_, day), size in by_key.items() for a in (f"d{day}", -size)]
        con.send([["EVALSHA", sha, len(keys)] + keys + argv])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=os.path.join(here, "..", "src", "engine", "redis"))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--remote", action="store_true",
                        help="recipients connected to another replica: every message is published (PUBLISH)")
    parser.add_argument("--ledger", action="store_true",
                        help="the storage ledger on: what each removal frees comes off the holders' buckets")
    parser.add_argument("--profile", help="with --callgrind: keep callgrind's output here (callgrind_annotate reads it)")
    args = parser.parse_args()
    per_removal = PAIRS * ROUNDS_PER_REMOVAL
    rounds = -(-args.messages // per_removal) * ROUNDS_PER_REMOVAL
    messages = rounds * PAIRS

    work = tempfile.mkdtemp(prefix="enigma-script-cost.")
    port = free_port()
    server = [args.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--hz", "1", "--dynamic-hz", "no", "--dir", work, "--logfile", os.path.join(work, "redis.log")]
    out = os.path.join(work, "callgrind.out")
    if args.callgrind:
        server = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"] + server
    proc = subprocess.Popen(server, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "valgrind.log"), "w"))
    try:
        con = None
        for _ in range(600):
            try:
                con = Resp(port)
                con.send([["PING"]])
                break
            except (ConnectionError, OSError):
                con = None
                time.sleep(0.1)
        if con is None:
            sys.exit("redis-server did not start")
        remove_source = render(args.src, "remove.lua")
        folded = "local ledger = ARGV[1]" in remove_source
        send_sha, remove_sha = con.send([["SCRIPT", "LOAD", render(args.src, "send.lua")],
                                         ["SCRIPT", "LOAD", remove_source]])
        release_sha = None
        if args.ledger and not folded:
            release_sha = con.send([["SCRIPT", "LOAD", render(args.src, "release.lua")]])[0]
        users = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(2 * PAIRS)]
        pairs = [(users[2 * p], users[2 * p + 1]) for p in range(PAIRS)]
        setup = []
        for u in users:
            setup.append(["HSET", f"user:{{{u}}}", "publicKey", "k" * 44, "createdAt", "1"])
            setup.append(["PEXPIRE", f"user:{{{u}}}", 365 * 24 * 3600 * 1000])
            setup.append(["SET", f"conn:{{{u}}}", 7, "PX", TTL_MS])
        prefix = "127.0.0.1/32"
        if args.ledger:
            # Every holder charged ahead (a lease), today and yesterday, as hold.lua leaves it.
            today = int(time.time() * 1000) // 86_400_000
            for key in [f"held:net:{prefix}"] + [f"held:{{{s}}}" for s, _ in pairs]:
                setup.append(["HSET", key, f"d{today - 1}", 1 << 40, f"d{today}", 1 << 40])
                setup.append(["PEXPIRE", key, 32 * 86_400_000])

        def envelope(sender, recipient, n):
            head = f'{{"from":"{sender}","to":"{recipient}","payload":"'.encode()
            body = (b"%08d" % n) * (PAYLOAD // 8)
            return head + body + b'"}'

        con.send(setup)
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        con.send([["CONFIG", "RESETSTAT"]])
        pending = {r: [] for _, r in pairs}
        n, sent_bytes = 0, 0
        for rnd in range(rounds):
            calls = []
            for first in range(0, PAIRS, PER_CALL):
                keys, argv = [], []
                for sender, recipient in pairs[first:first + PER_CALL]:
                    env = envelope(sender, recipient, n)
                    n += 1
                    keys += [f"user:{{{recipient}}}", f"inbox:{{{recipient}}}", f"shares:{{{recipient}}}",
                             f"contacts:{{{recipient}}}"]
                    local = ["", ""] if args.remote else [f"conn:{{{recipient}}}", 7]
                    argv += [env, f"deliver:{{{recipient}}}", sender, prefix] + local
                    pending[recipient].append((sender, len(env)))
                    sent_bytes += len(env)
                calls.append(["EVALSHA", send_sha, len(keys)] + keys + SEND_ARGS + argv)
            replies = con.send(calls)
            ids = [r for reply in replies for r in reply]
            for (_, recipient), reply in zip(pairs, ids):
                if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], bytes):
                    reply = reply[0]
                if not isinstance(reply, bytes):
                    sys.exit(f"send refused or failed: {reply!r}")
                sender, size = pending[recipient].pop()
                pending[recipient].append((reply, sender, size))
            if rnd % ROUNDS_PER_REMOVAL == ROUNDS_PER_REMOVAL - 1:
                keys, argv = [], []
                if folded:
                    argv.append("held:" if args.ledger else "")
                for _, recipient in pairs:
                    keys += [f"inbox:{{{recipient}}}", f"shares:{{{recipient}}}"]
                    argv.append(len(pending[recipient]))
                    for mid, sender, size in pending[recipient]:
                        argv += [mid, sender, size]
                    pending[recipient] = []
                removed = con.send([["EVALSHA", remove_sha, len(keys)] + keys + argv])[0]
                if removed[0] != per_removal:
                    sys.exit(f"removed {removed[0]} of {per_removal}")
                if release_sha:
                    release(con, release_sha, removed[1])
        if args.callgrind:
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        stats = commandstats(con)
        left = con.send([["XINFO", "STREAM", f"inbox:{{{r}}}"] for _, r in pairs])
        if any(info[info.index(b"length") + 1] for info in left):
            sys.exit("messages left in inboxes")
        if args.ledger:
            # Everything sent was removed: it all came off the ledger, once.
            held = con.send([["HVALS", f"held:net:{prefix}"]] + [["HVALS", f"held:{{{s}}}"] for s, _ in pairs])
            freed = [2 * (1 << 40) - sum(int(v) for v in values) for values in held]
            if freed[0] != sent_bytes or sum(freed[1:]) != sent_bytes:
                sys.exit(f"the ledger gave back {freed[0]} (prefix) and {sum(freed[1:])} (senders) of {sent_bytes} bytes")
        try:
            con.send([["SHUTDOWN", "NOSAVE"]])
        except (ConnectionError, OSError, RuntimeError):
            pass
        proc.wait(timeout=120)
        skip = {"config|resetstat", "info"}
        inner = {k: v for k, v in stats.items() if k not in skip and k != "evalsha"}
        where = "published" if args.remote else "local recipients"
        print(f"messages: {messages} ({PER_CALL} a send call, {ROUNDS_PER_REMOVAL} ids a user a removal call, {where})")
        print(f"commands per message (scripts' own, EVALSHA not counted): {sum(c for c, _ in inner.values()) / messages:.2f}")
        for name, (calls, usec) in sorted(inner.items(), key=lambda kv: -kv[1][0]):
            print(f"  {name}: {calls / messages:.3f} a message, {usec / max(calls, 1):.2f} usec a call")
        ev_calls, ev_usec = stats.get("evalsha", (0, 0))
        print(f"EVALSHA: {ev_calls} calls, {ev_usec / messages:.2f} usec a message (all inside; "
              f"{'under valgrind' if args.callgrind else 'timing: machine-dependent'})")
        if args.callgrind:
            with open(os.path.join(work, "valgrind.log"), encoding="utf-8") as f:
                total = next(int(line.split(":")[1]) for line in f if "Collected :" in line)
            print(f"redis-server instructions per message (callgrind): {total / messages:,.0f}")
            if args.profile:
                shutil.copy(out, args.profile)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
