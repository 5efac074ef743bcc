#!/usr/bin/env python3
"""Write the seed corpora in fuzz/corpus/<target>/ from the llhttp vectors.

Requests go to request_head, responses to response_head (raw bytes, as sent: some hold several
pipelined messages or stop mid-message). The body after the head of every vector whose head says
`Transfer-Encoding: ... chunked` goes to chunked, behind the two-byte split offset that target
reads first (here: the middle of the body).

proxy_pipeline takes a client stream and an upstream stream (layout: see
`src/fuzz_checks/pipeline.rs`): every request vector (with `Host` added to an HTTP/1.1 request
that lacks one, or the model stops at the 400) meets one of a few canned upstream answers, every
response vector answers one of a few canned client requests, and a few hand-made connections
(100-continue, a callback query, pipelining, HEAD, a cut body) come on top. Split patterns rotate
through whole, byte-at-a-time and a few odd sizes, so every stream is also seen in pieces.

At most --max files per target are kept, taken in turn from each llhttp test file so every file
is represented; names say where a seed came from. A few hand-made heads cover what the vectors
lack. Run from anywhere:

    python3 fuzz/seed_corpus.py [--vectors PATH] [--max N] [--out DIR]

Without --out this replaces fuzz/corpus/: to add new seeds to a committed corpus instead, write
them elsewhere and fold them in with min_corpus.py.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VECTORS = os.path.join(HERE, "..", "..", "shared", "vectors", "llhttp-strict.json")
# A few dozen per target: enough to start every branch family, small enough to commit.
DEFAULT_MAX = 40
TARGET_FOR_KIND = {"request": "request_head", "response": "response_head"}
CHUNKED_HEAD = re.compile(rb"^transfer-encoding:[^\r\n]*chunked", re.IGNORECASE | re.MULTILINE)
HOST_FIELD = re.compile(rb"^host:", re.IGNORECASE | re.MULTILINE)

# proxy_pipeline: split patterns (bytes per read, cycling; empty = whole), rotated over the seeds.
PATTERNS = [b"", b"\x01", b"\x05\x00", b"\x03\x11\x01"]
# Upstream answers for the request vectors.
CANNED_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: x\r\nX: y\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
]
# Client requests for the response vectors.
CANNED_REQUESTS = [
    b"GET /v1/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /v1/y?a=1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /v1/z HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
# Heads written by hand for what the vectors lack: Expect, X-Forwarded-For chains, fields named
# in Connection, OPTIONS *, a callback query, 1xx/304 answers, obs-text reasons.
HAND_MADE_REQUESTS = [
    b"POST /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /crypto/sign HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: ,5.6.7.8\r\n"
    b"Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nTE: trailers\r\nAuthorization: client\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PUT /a/b/ HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"DELETE /v1/%2e%2E/x;p?callback=https%3A%2F%2Fh.example%2F HTTP/1.1\r\nHost: h\r\n"
    b"Transfer-Encoding: chunked\r\nIdempotency-Key: k\r\n\r\n0\r\n\r\n",
]
HAND_MADE_RESPONSES = [
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nConnection: close, X-A\r\nX-A: b\r\n\r\n",
    b"HTTP/1.0 200 \xe9t\xe9\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nTrailer: X\r\nUpgrade: h2c\r\nProxy-Authenticate: Basic\r\n\r\n",
]

# Whole connections, written by hand: (client, upstream).
HAND_MADE = [
    (
        b"POST /v1/x?a=1&callback=https%3A%2F%2Fhook.example%2Fh HTTP/1.1\r\nHost: h\r\n"
        b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HEAD /v1/y HTTP/1.1\r\nHost: h\r\n\r\nGET /a/../b HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET / HTTP/1.0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: X-Drop\r\nX-Drop: 1\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\nIdempotency-Key: k\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ),
    (
        b"PUT /v1/p HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbodyDELETE /v1/q?callback=x HTTP/1.1\r\n"
        b"Host: h\r\n\r\nGET /_sluice/jobs/1 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"e\"\r\n\r\n",
    ),
    (
        b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1100\r\n\r\n" + b"x" * 1100,
    ),
]


def chunked_body(raw):
    """The bytes after the first head if that head declares chunked, else None."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or not CHUNKED_HEAD.search(raw[:end]):
        return None
    return raw[end + 4 :]


def with_split_prefix(body):
    """The chunked target's input layout: little-endian u16 split offset, then the body."""
    return (len(body) // 2 & 0xFFFF).to_bytes(2, "little") + body


def with_host(request):
    """`request` with `Host: h` after its first line when it is HTTP/1.1 and has no Host."""
    end = request.find(b"\r\n")
    head_end = request.find(b"\r\n\r\n")
    head = request[: head_end if head_end >= 0 else len(request)]
    if end < 0 or HOST_FIELD.search(head) or not request[:end].endswith(b"HTTP/1.1"):
        return request
    return request[: end + 2] + b"Host: h\r\n" + request[end + 2 :]


def pipeline_input(client, upstream, client_pattern=b"", upstream_pattern=b""):
    """proxy_pipeline's layout: the two split patterns, the client length, the two streams."""
    client = client[:0xFFFF]
    return (
        bytes([len(client_pattern)]) + client_pattern
        + bytes([len(upstream_pattern)]) + upstream_pattern
        + len(client).to_bytes(2, "little") + client + upstream
    )


def round_robin(groups, limit):
    """Take one item from each group in turn until `limit` items are taken."""
    out = []
    queues = [list(g) for g in groups.values()]
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", default=DEFAULT_VECTORS)
    parser.add_argument("--max", type=int, default=DEFAULT_MAX)
    parser.add_argument(
        "--out",
        default=os.path.join(HERE, "corpus"),
        help="where the <target>/ directories go (replaced); default: fuzz/corpus",
    )
    args = parser.parse_args()

    with open(args.vectors) as f:
        vectors = json.load(f)

    # target -> llhttp source file -> [(name, bytes)], first occurrence of each input only.
    seeds = {
        t: OrderedDict() for t in ("request_head", "response_head", "chunked", "proxy_pipeline")
    }
    seen = {t: set() for t in seeds}

    def add(target, source, raw):
        if not raw or raw in seen[target]:
            return
        seen[target].add(raw)
        stem = os.path.splitext(os.path.basename(source))[0]
        name = "%s-%s-%s" % (source.split("/")[-2], stem, hashlib.sha1(raw).hexdigest()[:10])
        seeds[target].setdefault(source, []).append((name, raw))

    for i, v in enumerate(vectors):
        raw = bytes.fromhex(v["raw_hex"])
        add(TARGET_FOR_KIND[v["kind"]], v["source"], raw)
        body = chunked_body(raw)
        if body is not None:
            add("chunked", v["source"], with_split_prefix(body))
        pattern = PATTERNS[i % len(PATTERNS)]
        if v["kind"] == "request":
            upstream = CANNED_RESPONSES[i % len(CANNED_RESPONSES)]
            seed = pipeline_input(with_host(raw), upstream, pattern, pattern)
        else:
            client = CANNED_REQUESTS[i % len(CANNED_REQUESTS)]
            seed = pipeline_input(client, raw, pattern, pattern)
        add("proxy_pipeline", v["source"], seed)
    for i, raw in enumerate(HAND_MADE_REQUESTS):
        add("request_head", "hand-made/request-%d" % i, raw)
    for i, raw in enumerate(HAND_MADE_RESPONSES):
        add("response_head", "hand-made/response-%d" % i, raw)
        body = chunked_body(raw)
        if body:
            add("chunked", "hand-made/response-%d" % i, with_split_prefix(body))
    for i, (client, upstream) in enumerate(HAND_MADE):
        for pattern in PATTERNS:
            add("proxy_pipeline", "hand-made/connection-%d" % i, pipeline_input(client, upstream, pattern, pattern))

    for target, groups in seeds.items():
        out_dir = os.path.join(args.out, target)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        # The pipeline target gets twice the share: its inputs pair two streams.
        limit = args.max * 2 if target == "proxy_pipeline" else args.max
        picked = round_robin(groups, limit)
        for name, raw in picked:
            with open(os.path.join(out_dir, name), "wb") as f:
                f.write(raw)
        print("%s: %d seeds (of %d)" % (target, len(picked), sum(map(len, groups.values()))))


if __name__ == "__main__":
    main()
