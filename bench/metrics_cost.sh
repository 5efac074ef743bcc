#!/usr/bin/env bash
# bench/metrics_cost.sh: what counting metrics costs the proxy path (issue: "under 2%").
#
# Builds sluice twice from the current checkout: as is, and with `metrics::COUNTING` set to
# false (every counter, gauge and histogram store compiled out; nothing else changes), then
# runs the two interleaved on the peers benchmark's tiny-GET scenario, one core: sluice pinned
# to CPU 0 with one worker, the origin (one nginx worker answering `return 200`) and wrk (one
# thread, 50 connections) pinned to CPU 1. Prints each run, then the mean requests/s of both
# builds, the mean CPU time per request, and the cost of counting in percent.
#
# Needs: nginx, wrk, git, cargo (Debian: apt-get install -y nginx wrk). Runs ~2 builds (a few
# minutes) and ROUNDS x 2 runs of DURATION seconds.
# Usage: ROUNDS=8 DURATION=5 bench/metrics_cost.sh
set -euo pipefail

ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/sluice-metrics-cost.XXXXXX)}
ORIGIN_PORT=18180 SLUICE_PORT=18182

for tool in nginx wrk git cargo taskset awk; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench/metrics_cost.sh: missing $tool (apt-get install -y nginx wrk)" >&2
        exit 1
    }
done
if (($(nproc) < 2)); then
    echo "bench/metrics_cost.sh: needs at least 2 CPUs" >&2
    exit 1
fi

# --- Two builds of the same source ------------------------------------------------------------
mkdir -p "$WORK"
chmod 755 "$WORK"
rm -rf "$WORK/src-off"
mkdir -p "$WORK/src-off"
# The checkout as it is on disk (uncommitted changes included), without its build output.
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK/src-off")
grep -q '^pub const COUNTING: bool = true;' "$WORK/src-off/src/metrics/mod.rs" || {
    echo "bench/metrics_cost.sh: src/metrics/mod.rs has no 'pub const COUNTING: bool = true;'" >&2
    exit 1
}
sed -i 's/^pub const COUNTING: bool = true;/pub const COUNTING: bool = false;/' \
    "$WORK/src-off/src/metrics/mod.rs"
echo "building sluice (counting on) ..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR="$WORK/target-on" cargo build --release --quiet)
echo "building sluice (counting compiled out) ..." >&2
(cd "$WORK/src-off" && CARGO_TARGET_DIR="$WORK/target-off" cargo build --release --quiet)
ON=$WORK/target-on/release/sluice
OFF=$WORK/target-off/release/sluice

# --- Origin -----------------------------------------------------------------------------------
mkdir -p "$WORK/run"
cat >"$WORK/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/run/origin.pid;
error_log $WORK/origin.err crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$ORIGIN_PORT reuseport backlog=8192;
    location = /crypto/sign { return 200 "signature-ok\n"; }
  }
}
EOF
taskset -c 1 nginx -c "$WORK/origin.conf" &
ORIGIN_PID=$!
trap 'kill $ORIGIN_PID 2>/dev/null || true; wait 2>/dev/null || true' EXIT
sleep 0.5

hz=$(getconf CLK_TCK)
# One run: prints "req/s cpu_us_per_request".
run() { # binary
    taskset -c 0 "$1" -t bench-token --paths /crypto/sign -o "http://127.0.0.1:$ORIGIN_PORT" \
        --listen 127.0.0.1 -p "$SLUICE_PORT" --workers 1 --rate-limit 1000000/1s --dedup off \
        --no-persist --log-level error 2>>"$WORK/sluice.err" &
    local pid=$! out u1 s1 u2 s2 n
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$SLUICE_PORT") 2>/dev/null && break
        sleep 0.1
    done
    # Warm-up: the pools fill, the first connections are made.
    taskset -c 1 wrk -t1 -c50 -d1s "http://127.0.0.1:$SLUICE_PORT/crypto/sign" >/dev/null
    read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    out=$(taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$SLUICE_PORT/crypto/sign")
    read -r u2 s2 < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    n=$(awk '/requests in/ { print $1 }' <<<"$out")
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "bench/metrics_cost.sh: non-2xx answers: $out" >&2
        exit 1
    fi
    awk -v out="$out" -v n="$n" -v t=$((u2 + s2 - u1 - s1)) -v hz="$hz" 'BEGIN {
        split(out, lines, "\n")
        for (i in lines) if (lines[i] ~ /^Requests\/sec:/) { split(lines[i], f, " "); rps = f[2] }
        printf "%.0f %.3f\n", rps, t * 1e6 / hz / n }'
}

rm -f "$WORK/runs.tsv"
printf 'round\tbuild\treq/s\tcpu_us_per_req\n'
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which build goes first.
    if ((round % 2)); then order="on off"; else order="off on"; fi
    for build in $order; do
        if [[ $build == on ]]; then bin=$ON; else bin=$OFF; fi
        read -r rps cpu < <(run "$bin") || true
        [[ -n ${rps:-} ]] || { echo "bench/metrics_cost.sh: a run failed (see above)" >&2; exit 1; }
        printf '%s\t%s\t%s\t%s\n' "$round" "$build" "$rps" "$cpu" | tee -a "$WORK/runs.tsv"
    done
done
awk -F'\t' '{ r[$2] += $3; c[$2] += $4; n[$2]++ }
END {
    on = r["on"] / n["on"]; off = r["off"] / n["off"]
    con = c["on"] / n["on"]; coff = c["off"] / n["off"]
    printf "counting on:  %.0f req/s, %.3f us CPU per request (mean of %d)\n", on, con, n["on"]
    printf "counting off: %.0f req/s, %.3f us CPU per request (mean of %d)\n", off, coff, n["off"]
    printf "cost of counting: %.2f%% of req/s, %.2f%% of CPU per request\n", 100 * (off - on) / off, 100 * (con - coff) / coff
}' "$WORK/runs.tsv"
