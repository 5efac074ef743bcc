#!/usr/bin/env bash
# bench/peers.sh: sluice against nginx and HAProxy (and the origin direct), on loopback.
#
# Every proxy does the same job: forward an allowlist (/crypto/sign, /files/*) to one origin with
# upstream keep-alive, set the Authorization header and the Host, answer 404 to anything else.
# nginx has `keepalive`, `proxy_http_version 1.1` and `Connection ""`; HAProxy has
# `http-reuse always`; sluice runs with `--dedup off` (identical concurrent GETs would otherwise
# share one upstream call: not the same job) and a rate limit far above the load.
#
# Layouts (CPU budget, the same for every proxy):
#   1core  the proxy pinned to CPU 0 with one worker/process/thread; origin (one nginx worker)
#          and wrk (one thread) pinned to CPU 1.
#   2core  the proxy with two workers/processes/threads; origin (two nginx workers) and wrk
#          (two threads) on the same two CPUs, unpinned.
# Scenarios: tiny GET, 16 KiB response, 1 MiB response, POST with a 4 KiB body, 1000 concurrent
# keep-alive connections, a new connection per request, and an HTTPS origin (the proxy does TLS
# upstream; clients speak plain HTTP to it).
# Targets run interleaved (the order rotates every round); the table gives the median of the
# rounds: requests/s, p50 and p99 latency (wrk --latency), the proxy's CPU use (utime+stime
# over the run, 100% = one core), its peak RSS (VmHWM, summed over its processes), and the
# ratios sluice/nginx, sluice/haproxy and x/direct.
#
# Idle memory: before the load, each proxy gets IDLE_CONNS (10000) keep-alive client
# connections that made one request each and then sit idle (bench/idle_conns.py); the second
# table gives its resident memory with them open.
#
# Needs (Debian packages; this script installs nothing): nginx haproxy wrk openssl python3,
# plus awk, taskset (util-linux) and a release build of sluice (built here with cargo when
# missing).
#   apt-get install -y nginx haproxy wrk openssl python3
# Usage:
#   bench/peers.sh                         # everything: ~15-20 minutes
#   ROUNDS=3 DURATION=5 LAYOUTS="1core" SCENARIOS="tiny post4k" bench/peers.sh
# Output: the Markdown table on stdout; raw runs in $OUT/runs.tsv (OUT defaults to a temp dir).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
LAYOUTS=${LAYOUTS:-"1core 2core"}
SCENARIOS=${SCENARIOS:-"tiny 16k 1m post4k c1000 newconn https"}
TARGETS=${TARGETS:-"direct sluice nginx haproxy"}
IDLE_CONNS=${IDLE_CONNS:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=${SLUICE:-$ROOT/target/release/sluice}
OUT=${OUT:-$(mktemp -d /tmp/sluice-peers.XXXXXX)}
TOKEN=bench-token

ORIGIN_PORT=18080 ORIGIN_TLS_PORT=18443
SLUICE_PORT=18082 NGINX_PORT=18083 HAPROXY_PORT=18084
SLUICE_TLS_PORT=18085 NGINX_TLS_PORT=18086 HAPROXY_TLS_PORT=18087

missing=()
for tool in nginx haproxy wrk openssl awk taskset python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "bench/peers.sh: missing: ${missing[*]}" >&2
    echo "install them first, e.g.: apt-get install -y nginx haproxy wrk openssl python3" >&2
    exit 1
fi
if [[ ! -x $SLUICE ]]; then
    echo "building sluice (cargo build --release) ..." >&2
    (cd "$ROOT" && cargo build --release --quiet)
fi
if (($(nproc) < 2)); then
    echo "bench/peers.sh: needs at least 2 CPUs (has $(nproc))" >&2
    exit 1
fi
ulimit -n "$(ulimit -Hn)"

mkdir -p "$OUT"/{www/files,run}
# The origin's workers run as an unprivileged user: they must be able to read the files
# (mktemp -d makes the directory private).
chmod 755 "$OUT" "$OUT/www" "$OUT/www/files"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# --- Content and certificates -----------------------------------------------------------------
head -c 16384 /dev/zero | tr '\0' 'a' >"$OUT/www/files/16k"
head -c 1048576 /dev/zero | tr '\0' 'b' >"$OUT/www/files/1m"
head -c 4096 /dev/zero | tr '\0' 'p' >"$OUT/post4k.body"
cat >"$OUT/post4k.lua" <<EOF
local f = io.open("$OUT/post4k.body", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=sluice bench CA" \
    -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$OUT/origin.key" -out "$OUT/origin.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$OUT/ext.cnf"
openssl x509 -req -in "$OUT/origin.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
    -CAcreateserial -days 2 -extfile "$OUT/ext.cnf" -out "$OUT/origin.pem" 2>/dev/null

# --- Configurations ---------------------------------------------------------------------------
origin_conf() { # workers
    cat >"$OUT/origin.conf" <<EOF
worker_processes $1;
daemon off;
pid $OUT/run/origin.pid;
error_log $OUT/origin.err crit;
events { worker_connections 20000; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$ORIGIN_PORT reuseport backlog=8192;
    listen 127.0.0.1:$ORIGIN_TLS_PORT ssl reuseport backlog=8192;
    ssl_certificate $OUT/origin.pem;
    ssl_certificate_key $OUT/origin.key;
    root $OUT/www;
    location = /crypto/sign { return 200 "signature-ok\n"; }
    location /files/ { }
  }
}
EOF
}

nginx_conf() { # workers
    route() { # upstream
        cat <<EOF
      proxy_pass $1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1;
      proxy_set_header Authorization "$TOKEN";
      proxy_max_temp_file_size 0;
EOF
    }
    cat >"$OUT/nginx.conf" <<EOF
worker_processes $1;
daemon off;
pid $OUT/run/nginx.pid;
error_log $OUT/nginx.err crit;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 1024; keepalive_requests 100000000; }
  upstream origin_tls { server 127.0.0.1:$ORIGIN_TLS_PORT; keepalive 1024; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=8192;
    location = /crypto/sign {
$(route http://origin)
    }
    location /files/ {
$(route http://origin)
    }
    location / { return 404; }
  }
  server {
    listen 127.0.0.1:$NGINX_TLS_PORT backlog=8192;
    proxy_ssl_trusted_certificate $OUT/ca.pem;
    proxy_ssl_verify on;
    proxy_ssl_name localhost;
    proxy_ssl_server_name on;
    proxy_ssl_session_reuse on;
    location = /crypto/sign {
$(route https://origin_tls)
    }
    location /files/ {
$(route https://origin_tls)
    }
    location / { return 404; }
  }
}
EOF
}

haproxy_conf() { # threads
    cat >"$OUT/haproxy.cfg" <<EOF
global
  nbthread $1
  # HAProxy needs two fds per connection of maxconn and refuses to start above the hard fd
  # limit: with 20000 (this VM), 9900 is the most, so its idle row uses at most that many.
  maxconn 9900
  pidfile $OUT/run/haproxy.pid
defaults
  mode http
  timeout connect 3s
  timeout client 300s
  timeout server 30s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend plain
  bind 127.0.0.1:$HAPROXY_PORT backlog 8192
  acl allowed path /crypto/sign
  acl allowed path_beg /files/
  http-request deny deny_status 404 unless allowed
  http-request set-header Authorization $TOKEN
  http-request set-header Host 127.0.0.1
  default_backend origin
frontend tls
  bind 127.0.0.1:$HAPROXY_TLS_PORT backlog 8192
  acl allowed path /crypto/sign
  acl allowed path_beg /files/
  http-request deny deny_status 404 unless allowed
  http-request set-header Authorization $TOKEN
  http-request set-header Host 127.0.0.1
  default_backend origin_tls
backend origin
  server o 127.0.0.1:$ORIGIN_PORT
backend origin_tls
  server o 127.0.0.1:$ORIGIN_TLS_PORT ssl verify required ca-file $OUT/ca.pem sni str(localhost)
EOF
}

# --- Processes --------------------------------------------------------------------------------
check_ok() { # port: GET /files/16k must answer 200
    local status
    status=$(python3 -c 'import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=5)
c.request("GET", "/files/16k")
print(c.getresponse().status)' "$1" 2>&1 | tail -1)
    if [[ $status != 200 ]]; then
        echo "bench/peers.sh: GET /files/16k on port $1 answered $status, not 200 (see $OUT/*.err)" >&2
        exit 1
    fi
}

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench/peers.sh: nothing listens on port $1" >&2
    exit 1
}

# The pids whose CPU and memory count for a target: the process and its children.
family() {
    local pid=$1
    echo "$pid"
    pgrep -P "$pid" 2>/dev/null || true
}

cpu_ticks() { # pids...
    local total=0 pid
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        # Fields 14 and 15 (utime, stime), counted after the ")" closing the command name.
        total=$((total + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    echo "$total"
}

peak_rss_kib() { # pids...
    local total=0 pid
    for pid in "$@"; do
        [[ -r /proc/$pid/status ]] || continue
        total=$((total + $(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")))
    done
    echo "$total"
}

start_layout() { # layout
    local layout=$1 workers proxy_cpus origin_cpus
    if [[ $layout == 1core ]]; then
        workers=1 proxy_cpus=0 origin_cpus=1 WRK_CPUS=1 WRK_THREADS=1
    else
        workers=2 proxy_cpus=0,1 origin_cpus=0,1 WRK_CPUS=0,1 WRK_THREADS=2
    fi
    origin_conf "$workers"
    nginx_conf "$workers"
    haproxy_conf "$workers"
    taskset -c "$origin_cpus" nginx -c "$OUT/origin.conf" &
    PIDS+=($!)
    ORIGIN_PID=$!
    local common=(-t "$TOKEN" --paths "/crypto/sign,/files/*" --listen 127.0.0.1
        --workers "$workers" --rate-limit 1000000/1s --dedup off --no-persist
        --upstream-max-idle 1024 --log-level error,server=info)
    taskset -c "$proxy_cpus" "$SLUICE" "${common[@]}" -p "$SLUICE_PORT" \
        -o "http://127.0.0.1:$ORIGIN_PORT" 2>"$OUT/sluice.err" &
    PIDS+=($!)
    SLUICE_PID=$!
    taskset -c "$proxy_cpus" "$SLUICE" "${common[@]}" -p "$SLUICE_TLS_PORT" \
        -o "https://127.0.0.1:$ORIGIN_TLS_PORT" --ca-file "$OUT/ca.pem" 2>"$OUT/sluice-tls.err" &
    PIDS+=($!)
    SLUICE_TLS_PID=$!
    taskset -c "$proxy_cpus" nginx -c "$OUT/nginx.conf" &
    PIDS+=($!)
    NGINX_PID=$!
    taskset -c "$proxy_cpus" haproxy -f "$OUT/haproxy.cfg" -db &
    PIDS+=($!)
    HAPROXY_PID=$!
    for port in $ORIGIN_PORT $ORIGIN_TLS_PORT $SLUICE_PORT $SLUICE_TLS_PORT $NGINX_PORT \
        $NGINX_TLS_PORT $HAPROXY_PORT $HAPROXY_TLS_PORT; do
        wait_port "$port"
    done
    # Every target must answer 200 before anything is measured (a 403 from an unreadable file
    # would otherwise be benchmarked as a fast answer).
    for port in $ORIGIN_PORT $SLUICE_PORT $NGINX_PORT $HAPROXY_PORT; do
        check_ok "$port"
    done
    DRIVER=$(grep -o 'driver=[a-z_]*' "$OUT/sluice.err" | head -1 || true)
}

stop_layout() {
    cleanup
    PIDS=()
    sleep 0.5
}

# --- One run ----------------------------------------------------------------------------------
# Sets URL, CONNS and WRK_EXTRA for a scenario and target, and PROC_PID for the target's process.
plan() { # scenario target
    local scenario=$1 target=$2 port path=/crypto/sign tls=0
    CONNS=50
    WRK_EXTRA=()
    case $scenario in
    tiny) ;;
    16k) path=/files/16k ;;
    1m) path=/files/1m CONNS=16 ;;
    post4k) WRK_EXTRA=(-s "$OUT/post4k.lua") ;;
    c1000) CONNS=1000 ;;
    newconn) WRK_EXTRA=(-H "Connection: close") ;;
    https) tls=1 ;;
    esac
    case $target in
    direct) port=$ORIGIN_PORT PROC_PID=$ORIGIN_PID ;;
    sluice) port=$SLUICE_PORT PROC_PID=$SLUICE_PID ;;
    nginx) port=$NGINX_PORT PROC_PID=$NGINX_PID ;;
    haproxy) port=$HAPROXY_PORT PROC_PID=$HAPROXY_PID ;;
    esac
    if ((tls)); then
        case $target in
        direct) # wrk speaks TLS to the origin itself: not comparable, skipped.
            port= ;;
        sluice) port=$SLUICE_TLS_PORT PROC_PID=$SLUICE_TLS_PID ;;
        nginx) port=$NGINX_TLS_PORT ;;
        haproxy) port=$HAPROXY_TLS_PORT ;;
        esac
    fi
    PORT=$port
    URL=${port:+http://127.0.0.1:$port$path}
}

# Prints: rps p50_ms p99_ms cpu_pct peak_rss_mib errors
run_one() {
    local pids out before after hz=$(getconf CLK_TCK) start end
    mapfile -t pids < <(family "$PROC_PID")
    before=$(cpu_ticks "${pids[@]}")
    start=$(date +%s.%N)
    out=$(taskset -c "$WRK_CPUS" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
        "${WRK_EXTRA[@]}" "$URL" 2>&1) || true
    end=$(date +%s.%N)
    after=$(cpu_ticks "${pids[@]}")
    echo "$out" >>"$OUT/wrk.log"
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }' <<<"$out")
    awk -v rps="${rps:-0}" -v p50="$(ms "$p50")" -v p99="$(ms "$p99")" \
        -v ticks=$((after - before)) -v hz="$hz" -v t0="$start" -v t1="$end" \
        -v rss="$(peak_rss_kib "${pids[@]}")" -v err="${errors:-none}" \
        'BEGIN { printf "%.0f\t%.3f\t%.3f\t%.0f\t%.1f\t%s\n", rps, p50, p99,
                 100 * ticks / hz / (t1 - t0), rss / 1024, err }'
}

# wrk latency ("812.00us", "1.20ms", "2.01s") in milliseconds.
ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
        else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
        else print 0 }'
}

# --- Main -------------------------------------------------------------------------------------
printf 'layout\tscenario\ttarget\tround\trps\tp50_ms\tp99_ms\tcpu_pct\tpeak_rss_mib\terrors\n' \
    >"$OUT/runs.tsv"
printf 'layout\ttarget\tconns\trss_before_mib\trss_with_conns_mib\tper_conn_kib\n' >"$OUT/idle.tsv"
read -r -a targets <<<"$TARGETS"
for layout in $LAYOUTS; do
    start_layout "$layout"
    echo "# $layout: sluice $DRIVER; $ROUNDS rounds of ${DURATION}s per target and scenario" >&2
    if ((IDLE_CONNS > 0)); then
        for target in sluice nginx haproxy; do
            plan tiny "$target"
            line=$(python3 "$ROOT/bench/idle_conns.py" --port "$PORT" --pid "$PROC_PID" \
                --conns "$IDLE_CONNS" --path /crypto/sign 2>&1 | tail -1) || true
            echo "  $layout idle $target: $line" >&2
            awk -v l="$layout" -v t="$target" '{
                for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                printf "%s\t%s\t%s\t%s\t%s\t%s\n", l, t, v["conns"], v["rss_before_mib"],
                    v["rss_with_conns_mib"], v["per_conn_kib"] }' <<<"$line" >>"$OUT/idle.tsv"
        done
    fi
    for scenario in $SCENARIOS; do
        for round in $(seq 1 "$ROUNDS"); do
            # Rotate the order every round, so no target always runs first or last.
            n=${#targets[@]}
            for i in $(seq 0 $((n - 1))); do
                target=${targets[$(((i + round) % n))]}
                plan "$scenario" "$target"
                [[ -n $URL ]] || continue
                result=$(run_one)
                printf '%s\t%s\t%s\t%s\t%s\n' "$layout" "$scenario" "$target" "$round" \
                    "$result" >>"$OUT/runs.tsv"
                printf '  %-6s %-8s %-8s round %s: %s\n' "$layout" "$scenario" "$target" \
                    "$round" "$(cut -f1-5 <<<"$result" | tr '\t' ' ')" >&2
            done
        done
    done
    stop_layout
done

# Medians per (layout, scenario, target), then ratios against nginx, haproxy and direct.
awk -F'\t' '
function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
NR > 1 {
    k = $1 SUBSEP $2 SUBSEP $3
    if (!(k in seen)) { seen[k] = 1; order[++count] = k }
    rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $7
    cpu[k] = cpu[k] " " $8; rss[k] = rss[k] " " $9
    if ($10 != "none") err[k] = "yes"
}
END {
    print "| layout | scenario | target | req/s | p50 ms | p99 ms | CPU % | peak RSS MiB | vs nginx | vs haproxy | vs direct |"
    print "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= count; i++) {
        k = order[i]; split(k, f, SUBSEP)
        m[k] = median(rps[k])
    }
    for (i = 1; i <= count; i++) {
        k = order[i]; split(k, f, SUBSEP)
        n = f[1] SUBSEP f[2] SUBSEP "nginx"; h = f[1] SUBSEP f[2] SUBSEP "haproxy"; d = f[1] SUBSEP f[2] SUBSEP "direct"
        vn = (f[3] != "nginx" && m[n] > 0) ? sprintf("%.2f", m[k] / m[n]) : ""
        vh = (f[3] != "haproxy" && m[h] > 0) ? sprintf("%.2f", m[k] / m[h]) : ""
        vd = (f[3] != "direct" && m[d] > 0) ? sprintf("%.2f", m[k] / m[d]) : ""
        printf "| %s | %s | %s%s | %.0f | %.2f | %.2f | %.0f | %.1f | %s | %s | %s |\n", f[1], f[2], f[3],
            (k in err) ? " (errors)" : "", m[k], median(p50[k]), median(p99[k]), median(cpu[k]), median(rss[k]), vn, vh, vd
    }
}' "$OUT/runs.tsv" | tee "$OUT/table.md"
if ((IDLE_CONNS > 0)); then
    echo
    echo "| layout | proxy | idle keep-alive connections | RSS before MiB | RSS with them MiB | KiB per connection |"
    echo "|---|---|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' \
        "$OUT/idle.tsv"
fi | tee -a "$OUT/table.md"
echo "raw runs: $OUT/runs.tsv; wrk output: $OUT/wrk.log" >&2
