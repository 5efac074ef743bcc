#!/usr/bin/env python3
"""Replace fuzz/corpus/<target>/ with a small corpus covering the same edges as the committed
corpus and the given directories together.

1. libFuzzer's merge (`-merge=1 -use_counters=0`: edge coverage only, hit counts ignored) keeps
   one input per newly covered edge, smallest first.
2. Each kept input is run alone (a merge into an empty directory) to get all its edges, and a
   greedy set cover keeps the fewest inputs that still cover every edge: about a third fewer
   files than the merge alone.

Needs the target built (`cargo fuzz build --sanitizer none`). Run from anywhere, pinned to one
CPU on a shared machine:

    taskset -c 1 python3 fuzz/min_corpus.py proxy_pipeline /tmp/corpus/proxy_pipeline
"""

import argparse
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.path.join(HERE, "target", "x86_64-unknown-linux-gnu", "release")
MERGE_FLAGS = ["-merge=1", "-use_counters=0"]


def merge(binary, into, dirs, control=None):
    """Runs libFuzzer's merge of `dirs` into `into`; returns the features of the control file."""
    args = [binary] + MERGE_FLAGS + [into] + dirs
    if control:
        args.append("-merge_control_file=" + control)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def edges_of(binary, path, scratch):
    """All edge features of one input: a merge of it alone into an empty directory."""
    empty, one = os.path.join(scratch, "empty"), os.path.join(scratch, "one")
    control = os.path.join(scratch, "control")
    for d in (empty, one):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    shutil.copy(path, one)
    merge(binary, empty, [one], control)
    features = set()
    with open(control) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] == "FT":
                features.update(map(int, parts[2:]))
    os.remove(control)
    return features


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("dirs", nargs="*", help="further corpus directories (fuzzing output)")
    args = parser.parse_args()

    binary = os.path.join(BIN_DIR, args.target)
    corpus = os.path.join(HERE, "corpus", args.target)
    with tempfile.TemporaryDirectory() as scratch:
        merged = os.path.join(scratch, "merged")
        os.makedirs(merged)
        merge(binary, merged, [corpus] + args.dirs)
        edges = {name: edges_of(binary, os.path.join(merged, name), scratch)
                 for name in sorted(os.listdir(merged))}
        universe = set().union(*edges.values())
        covered, picked = set(), []
        while covered != universe:
            best = max(sorted(edges), key=lambda n: len(edges[n] - covered))
            covered |= edges[best]
            picked.append(best)
        shutil.rmtree(corpus)
        os.makedirs(corpus)
        for name in picked:
            shutil.copy(os.path.join(merged, name), corpus)
    size = sum(os.path.getsize(os.path.join(corpus, n)) for n in picked)
    print("%s: %d edges, %d of %d merged inputs, %d bytes"
          % (args.target, len(universe), len(picked), len(edges), size))


if __name__ == "__main__":
    main()
