#!/usr/bin/env bash
# link_bench.sh - the issue-4 benchmark: N simulated nodes (link_load: real
# TLS websocket clients with enrolled certificates) against one
# portcullis-controller on this machine.
#
#   tests/bench/link_bench.sh                        # 1,000 nodes, 2,000,000 events
#   tests/bench/link_bench.sh --nodes 50 --events 100000      (a quick run)
#   PROFILE=1 tests/bench/link_bench.sh              (perf profile of the ingest)
#
# Options (passed on to link_load): --nodes N (1000), --rounds N (3 policy
# changes), --sustain-seconds S (30: the sustained ingest), --events N
# (2,000,000: the backlog every node then flushes), --ingest-seconds S (120:
# the backlog's time limit), --offices N (10).
# BUILD=DIR picks the (Release) build directory (default build-release);
# LINK_LOAD=FILE runs another link_load binary (a sanitizer build, say).
#
# Steps: builds portcullis-controller and link_load (Release); starts the
# controller on a new database in a temporary directory with REST and hub on
# free loopback ports and PORTCULLIS_ADMIN_TOKEN; link_load then creates 1
# region, the offices and N nodes over REST, enrolls every node (its own key,
# CSR, POST /enroll on the hub port), connects them all (mutual TLS,
# portcullis.v1), times policy changes (PUT /api/v1/settings/global, per node
# until it receives and acks the document; then GET /api/v1/nodes must show
# every node enforcing it), the sustained event ingest (every node sends as
# fast as the hub's credit allows for S seconds; events acked as stored within
# the window) and a backlog flush (N events shared by the nodes, timed until
# the last is acked), with REST latency measured during both; the controller's
# VmRSS/VmHWM and CPU come from /proc. Then the events table is counted with
# sqlite3 (when installed). The trap stops everything and removes the
# directory. The last line is one JSON object; docs/benchmarks.md has figures.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD:-$root/build-release}
nodes=1000
pass=()
while [ $# -gt 0 ]; do
    case "$1" in
    --nodes) nodes=$2; pass+=("$1" "$2"); shift 2 ;;
    --rounds | --events | --ingest-seconds | --sustain-seconds | --offices | --workers | --parallel)
        pass+=("$1" "$2"); shift 2 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "link_bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d /tmp/pc-link-bench.XXXXXX)
ctl=""
load=""
perf_pid=""
cleanup() {
    for p in $perf_pid $load $ctl; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v jq >/dev/null || "$root/scripts/deps.sh" --bench
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
if ! cmake --build "$build" --target portcullis-controller link_load -j"$(nproc)" >"$work/build.out" 2>&1; then
    grep -E 'error|Error' "$work/build.out" | head -20 >&2
    echo "link_bench.sh: the Release build in $build failed" >&2
    exit 1
fi
load_bin=${LINK_LOAD:-$build/tests/bench/link_load}

# Two descriptors per node (one each side) and some.
want_fds=$((nodes * 2 + 512))
[ "$(ulimit -n)" -ge "$want_fds" ] || ulimit -n "$want_fds" 2>/dev/null ||
    ulimit -n "$(ulimit -Hn)"

db="$work/controller.db"
PORTCULLIS_ADMIN_TOKEN=$token "$build/controller/portcullis-controller" --db "$db" \
    --listen 127.0.0.1:0 --hub-listen 127.0.0.1:0 >"$work/ctl.out" 2>&1 </dev/null &
ctl=$!
rest_port="" hub_port=""
for _ in $(seq 1 200); do
    rest_port=$(sed -n 's/^portcullis-controller: listening on .*(port \([0-9]*\)).*/\1/p' "$work/ctl.out")
    hub_port=$(sed -n 's/^portcullis-controller: node hub listening on .*(port \([0-9]*\)).*/\1/p' "$work/ctl.out")
    [ -n "$rest_port" ] && [ -n "$hub_port" ] && break
    kill -0 "$ctl" 2>/dev/null || { cat "$work/ctl.out" >&2; exit 1; }
    sleep 0.05
done
if [ -z "$rest_port" ] || [ -z "$hub_port" ]; then
    cat "$work/ctl.out" >&2
    echo "controller did not start" >&2
    exit 1
fi
echo "controller pid $ctl: REST 127.0.0.1:$rest_port, hub 127.0.0.1:$hub_port, database $db"
echo "machine: $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), load average $(cut -d' ' -f1-3 /proc/loadavg)"

PORTCULLIS_ADMIN_TOKEN=$token "$load_bin" \
    --rest "127.0.0.1:$rest_port" --rest-ca "$db.cert.pem" \
    --hub "127.0.0.1:$hub_port" --hub-ca "$db.ca.pem" --pid "$ctl" "${pass[@]}" \
    >"$work/load.out" 2>&1 &
load=$!
# Show link_load's lines as they come; with PROFILE=1, profile the controller
# for 10 s once the ingest has started.
shown=0
while kill -0 "$load" 2>/dev/null; do
    total=$(wc -l <"$work/load.out")
    if [ "$total" -gt "$shown" ]; then
        sed -n "$((shown + 1)),${total}p" "$work/load.out" | grep -v '^RESULT ' || true
        shown=$total
    fi
    if [ "${PROFILE:-0}" = 1 ] && [ -z "$perf_pid" ] && grep -q 'ingest: [0-9]* stored' "$work/load.out"; then
        perf record -q -g -F 499 -p "$ctl" -o "$work/perf.data" -- sleep 10 >/dev/null 2>&1 &
        perf_pid=$!
    fi
    sleep 0.5
done
load_rc=0
wait "$load" || load_rc=$?
load=""
sed -n "$((shown + 1)),\$p" "$work/load.out" | grep -v '^RESULT ' || true

if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    perf_pid=""
    echo "== profile: controller during the ingest (perf, 10 s) =="
    perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | head -25 || true
    perf report -i "$work/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | head -6 || true
fi

result=$(sed -n 's/^RESULT //p' "$work/load.out")
[ -n "$result" ] || { echo "link_load gave no result (exit $load_rc)" >&2; tail -20 "$work/ctl.out" >&2; exit 1; }
# The table itself (sqlite3, when installed), against the nodes' own count.
db_events=-1 db_nodes=-1
if command -v sqlite3 >/dev/null; then
    db_events=$(sqlite3 "$db" 'SELECT count(*) FROM events' 2>/dev/null || echo -1)
    db_nodes=$(sqlite3 "$db" "SELECT count(DISTINCT node) FROM events" 2>/dev/null || echo -1)
fi
db_bytes=$(stat -c %s "$db")
echo "database: $db_events events from $db_nodes nodes, $(awk -v b="$db_bytes" 'BEGIN {printf "%.0f MB", b / 1e6}') (plus WAL)"
if grep -q 'closing\|refused' "$work/ctl.out"; then
    echo "controller log, closes and refusals (first 5):"
    grep 'closing\|refused' "$work/ctl.out" | head -5
fi

result=$(jq -c --argjson e "$db_events" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '. + {db_events: $e, load_after: $load}' <<<"$result")
echo
echo "== link benchmark ($nodes nodes) =="
jq -r '
  def f(x): if x == null then "-" else (x | tostring) end;
  ["measure", "result", "target"],
  ["nodes connected (GET /api/v1/hub)", "\(f(.hub_connected)) of \(f(.nodes))", "1000"],
  ["connect + hello + first policy, all nodes (s)", f(.connect_s), "-"],
  ["policy change to all nodes: p50 / p99 / max (ms)", "\(f(.policy_p50_ms)) / \(f(.policy_p99_ms)) / \(f(.policy_max_ms))", "p99 < 1000"],
  ["sustained ingest, events stored per second", f(.sustain_events_per_s), ">= 50000"],
  ["backlog of \(f(.backlog_events)) events: stored per second", f(.backlog_events_per_s), "-"],
  ["controller RSS connected / max / HWM (MiB)", "\(f(.rss_connected_mib)) / \([.sustain_rss_max_mib, .backlog_rss_max_mib] | max | f(.)) / \(f(.rss_hwm_end_mib))", "< 200"],
  ["REST during ingest: GET /nodes p50 / p99 (ms)", "\(f(.sustain_rest_nodes_p50_ms)) / \(f(.sustain_rest_nodes_p99_ms))", "-"]
  | @tsv' <<<"$result" | awk -F'\t' '{printf "%-52s %24s  %s\n", $1, $2, $3}'
echo "$result"
exit "$load_rc"
