#!/usr/bin/env python3
"""bench/idle_conns.py: what idle keep-alive client connections cost a proxy in memory.

Opens N connections to 127.0.0.1:PORT, sends one GET on each (so every connection has served a
request and sits idle in keep-alive, as behind a client pool), reads each answer, keeps them all
open, and reports the proxy's resident memory (VmRSS, summed over PID and its children) before
and with the connections open. Standard library only.

    bench/idle_conns.py --port 18082 --pid 1234 --conns 10000 --path /crypto/sign

Prints one line: `conns=N rss_before_mib=A rss_with_conns_mib=B per_conn_kib=C`.
"""

import argparse
import os
import resource
import selectors
import socket
import sys
import time


def family(pid):
    """The pid and its children (nginx workers)."""
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def rss_kib(pid):
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the proxy's process id")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--path", default="/crypto/sign")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        if min(want, hard) < want:
            sys.exit(f"idle_conns.py: the fd limit ({hard}) is below {want}")

    before = rss_kib(args.pid)
    request = f"GET {args.path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    socks = []
    pending = {}
    # Connect in batches so the proxy's accept queue is never overrun.
    batch = 200
    for start in range(0, args.conns, batch):
        for _ in range(min(batch, args.conns - start)):
            s = socket.create_connection(("127.0.0.1", args.port))
            s.sendall(request)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
            socks.append(s)
        deadline = time.time() + 30
        while pending and time.time() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                data = s.recv(65536)
                if not data:
                    sys.exit("idle_conns.py: the proxy closed a connection")
                pending[s] += data
                head, sep, body = pending[s].partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    if not head.startswith(b"HTTP/1.1 200"):
                        sys.exit(f"idle_conns.py: answer {head.splitlines()[0]!r}")
                    sel.unregister(s)
                    del pending[s]
        if pending:
            sys.exit(f"idle_conns.py: {len(pending)} connections got no answer in 30 s")
    time.sleep(args.settle)
    after = rss_kib(args.pid)
    # Every connection must still be open (no idle timeout hit during the measurement).
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                sys.exit("idle_conns.py: a connection closed while idle")
        except BlockingIOError:
            pass
    print(
        f"conns={args.conns} rss_before_mib={before / 1024:.1f} "
        f"rss_with_conns_mib={after / 1024:.1f} "
        f"per_conn_kib={(after - before) / max(args.conns, 1):.2f}"
    )
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
