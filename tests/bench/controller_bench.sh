#!/usr/bin/env bash
# controller_bench.sh - the controller's issue-3 figures at 2,000 offices,
# 10,000 groups and 5 regions: REST reads per second over HTTPS (wrk), and the
# "last 100 events of one office" query over many stored events.
#
#   tests/bench/controller_bench.sh
#   EVENTS=1000000 tests/bench/controller_bench.sh     (fewer events)
#
# Steps: builds portcullis-controller and controller_load in build-release
# (Release); controller_load fills a new database through the store API
# (every object its own store call); the controller serves it on
# 127.0.0.1 (free port) with PORTCULLIS_ADMIN_TOKEN; wrk -t2 -c32 -d10s on
# GET /api/v1/nodes, /api/v1/nodes/{id} and /api/v1/health; a short perf
# profile when /nodes misses 5,000/s (PROFILE=0 skips it); EVENTS events
# (default 10,000,000) stored with store_events_insert in batches of up to 1,000;
# the office query timed in the driver (SAMPLES random offices, default 200)
# and through REST with curl. Everything lives in a temporary directory that
# the trap removes with the controller. The last line is one JSON object.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/build-release"
events=${EVENTS:-10000000}
samples=${SAMPLES:-200}
duration=${DURATION:-10s}
token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d /tmp/pc-controller-bench.XXXXXX)
ctl=""
cleanup() {
    if [ -n "$ctl" ]; then
        kill "$ctl" 2>/dev/null || true
        wait "$ctl" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{ command -v wrk && command -v jq; } >/dev/null || "$root/scripts/deps.sh" --bench
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target portcullis-controller controller_load -j"$(nproc)" >/dev/null
load="$build/tests/bench/controller_load"
db="$work/controller.db"

result() { sed -n "s/^RESULT .*\b$2=\([^ ]*\).*/\1/p" "$1"; }

echo "== load (store API) =="
timeout 1200 "$load" load "$db" "$token" | tee "$work/load.out"
load_s=$(result "$work/load.out" load_s)

echo "== REST reads (wrk -t2 -c32 -d$duration over HTTPS) =="
PORTCULLIS_ADMIN_TOKEN=$token "$build/controller/portcullis-controller" --db "$db" \
    --listen 127.0.0.1:0 --hub-listen 127.0.0.1:0 >"$work/ctl.out" 2>&1 </dev/null &
ctl=$!
port=""
for _ in $(seq 1 200); do
    port=$(sed -n 's/^portcullis-controller: listening on .*(port \([0-9]*\)).*/\1/p' "$work/ctl.out")
    [ -n "$port" ] && break
    kill -0 "$ctl" 2>/dev/null || { cat "$work/ctl.out" >&2; exit 1; }
    sleep 0.05
done
[ -n "$port" ] || { echo "controller did not start" >&2; exit 1; }
base="https://127.0.0.1:$port/api/v1"
auth="Authorization: Bearer $token"
cacert="$db.cert.pem"

curl -sS --cacert "$cacert" -H "$auth" -o "$work/nodes.json" "$base/nodes"
nodes_items=$(jq '.items | length' "$work/nodes.json")
nodes_bytes=$(stat -c %s "$work/nodes.json")
echo "GET /nodes returns a page of $nodes_items nodes (the default limit), $nodes_bytes bytes"

# rps URL: wrk's Requests/sec; non-2xx answers are an error.
rps() {
    local out="$work/wrk.$RANDOM"
    wrk -t2 -c32 -d"$duration" --timeout 10s -H "$auth" "$1" >"$out"
    if grep -q 'Non-2xx\|Socket errors' "$out"; then
        cat "$out" >&2
        echo "wrk: errors on $1" >&2
        exit 1
    fi
    grep Latency "$out" | awk '{print "  latency avg " $2 ", max " $4}' >&2
    awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out"
}
nodes_rps=$(rps "$base/nodes")
echo "GET /api/v1/nodes: $nodes_rps requests/s"
node_one_rps=$(rps "$base/nodes/1000")
echo "GET /api/v1/nodes/1000: $node_one_rps requests/s"
health_rps=$(rps "$base/health")
echo "GET /api/v1/health: $health_rps requests/s"

if [ "$nodes_rps" -lt 5000 ] && [ "${PROFILE:-1}" != 0 ] &&
    perf stat -e instructions true >/dev/null 2>&1; then
    echo "== profile: controller during wrk on /nodes (perf, 3 s, inclusive, user space) =="
    wrk -t2 -c32 -d6s -H "$auth" "$base/nodes" >/dev/null &
    w=$!
    sleep 1
    perf record -q --call-graph dwarf,16384 -F 499 -p "$ctl" -o "$work/perf.data" -- sleep 3 \
        >/dev/null 2>&1 || true
    wait "$w" || true
    perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | grep -v '\[k\]' | grep -v '0x0000\|\] 0x' | head -20 || true
    perf report -i "$work/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | head -8 || true
fi

echo "== events: $events through store_events_insert =="
# Batches of events/10,000 (100 to 1,000), so that every node ships several.
batch=$((events / 10000)); [ "$batch" -gt 1000 ] && batch=1000; [ "$batch" -lt 100 ] && batch=100
timeout 3600 "$load" events "$db" "$events" "$batch" | tee "$work/events.out"
events_s=$(result "$work/events.out" events_insert_s)
events_per_s=$(result "$work/events.out" events_per_s)
ls -l "$db" | awk '{printf "database file: %.2f GB\n", $5 / 1e9}'

echo "== last 100 events of one office =="
"$load" query "$db" "$samples" | tee "$work/query.out"
q50=$(result "$work/query.out" q_p50_ms)
q99=$(result "$work/query.out" q_p99_ms)
qmax=$(result "$work/query.out" q_max_ms)

# Through REST: 5 curl requests for office 1234, each a new TLS connection;
# total time (with the handshake) and the server's part (request sent to
# first byte back).
rest=()
for _ in 1 2 3 4 5; do
    rest+=("$(curl -sS --cacert "$cacert" -H "$auth" -o "$work/ev.json" \
        -w '%{time_total} %{time_pretransfer} %{time_starttransfer}\n' \
        "$base/events?office=1234&limit=100")")
done
n_ev=$(jq '.events | length' "$work/ev.json")
read -r rest_ms rest_srv_ms < <(printf '%s\n' "${rest[@]}" |
    awk '{print $1 * 1000, ($3 - $2) * 1000}' | sort -n | sed -n 3p)
echo "GET /api/v1/events?office=1234&limit=100: $n_ev events; median of 5: ${rest_ms} ms total," \
    "${rest_srv_ms} ms request to first byte"

echo
echo "== controller benchmark =="
printf '%-46s %14s %s\n' "measure" "result" "target"
printf '%-46s %14s %s\n' "load 2,000 offices/nodes, 10,000 groups (s)" "$load_s" "-"
printf '%-46s %14s %s\n' "GET /api/v1/nodes ($nodes_items nodes, $nodes_bytes B), req/s" "$nodes_rps" ">= 5000"
printf '%-46s %14s %s\n' "GET /api/v1/nodes/{id}, req/s" "$node_one_rps" "-"
printf '%-46s %14s %s\n' "GET /api/v1/health, req/s" "$health_rps" "-"
printf '%-46s %14s %s\n' "events stored (store_events_insert/s)" "$events ($events_per_s)" "10M"
printf '%-46s %14s %s\n' "last 100 for one office p50 / p99 (ms)" "$q50 / $q99" "< 10"
printf '%-46s %14s %s\n' "same through REST, curl total / server (ms)" "$rest_ms / $rest_srv_ms" "< 10"
echo "{\"bench\":\"controller\",\"offices\":2000,\"groups\":10000,\"events\":$events,\"load_s\":$load_s,\"nodes_rps\":$nodes_rps,\"node_one_rps\":$node_one_rps,\"health_rps\":$health_rps,\"events_insert_s\":$events_s,\"events_last100_p50_ms\":$q50,\"events_last100_p99_ms\":$q99,\"events_last100_max_ms\":$qmax,\"rest_events_ms\":$rest_ms,\"rest_events_server_ms\":$rest_srv_ms}"
