#!/usr/bin/env python3
"""Write the seed corpora in fuzz/corpus/<target>/ from the llhttp vectors.

Requests go to request_head, responses to response_head (raw bytes, as sent: some hold several
pipelined messages or stop mid-message). The body after the head of every vector whose head says
`Transfer-Encoding: ... chunked` goes to chunked, behind the two-byte split offset that target
reads first (here: the middle of the body).

At most --max files per target are kept, taken in turn from each llhttp test file so every file
is represented; names say where a seed came from. Run from anywhere:

    python3 fuzz/seed_corpus.py [--vectors PATH] [--max N]
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


def chunked_body(raw):
    """The bytes after the first head if that head declares chunked, else None."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or not CHUNKED_HEAD.search(raw[:end]):
        return None
    return raw[end + 4 :]


def with_split_prefix(body):
    """The chunked target's input layout: little-endian u16 split offset, then the body."""
    return (len(body) // 2 & 0xFFFF).to_bytes(2, "little") + body


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
    args = parser.parse_args()

    with open(args.vectors) as f:
        vectors = json.load(f)

    # target -> llhttp source file -> [(name, bytes)], first occurrence of each input only.
    seeds = {t: OrderedDict() for t in ("request_head", "response_head", "chunked")}
    seen = {t: set() for t in seeds}

    def add(target, source, raw):
        if not raw or raw in seen[target]:
            return
        seen[target].add(raw)
        stem = os.path.splitext(os.path.basename(source))[0]
        name = "%s-%s-%s" % (source.split("/")[-2], stem, hashlib.sha1(raw).hexdigest()[:10])
        seeds[target].setdefault(source, []).append((name, raw))

    for v in vectors:
        raw = bytes.fromhex(v["raw_hex"])
        add(TARGET_FOR_KIND[v["kind"]], v["source"], raw)
        body = chunked_body(raw)
        if body is not None:
            add("chunked", v["source"], with_split_prefix(body))

    for target, groups in seeds.items():
        out_dir = os.path.join(HERE, "corpus", target)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        picked = round_robin(groups, args.max)
        for name, raw in picked:
            with open(os.path.join(out_dir, name), "wb") as f:
                f.write(raw)
        print("%s: %d seeds (of %d)" % (target, len(picked), sum(map(len, groups.values()))))


if __name__ == "__main__":
    main()
