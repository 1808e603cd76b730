#!/usr/bin/env bash
# fw_bench.sh - the issue-5 firewall benchmark (docs/benchmarks.md, "Firewall"):
#
#  1. ruleset generation and atomic apply for whitelists of 10, 1,000 and
#     10,000 entries (fw_bench, linked with the node's own node/firewall.c),
#     in a private network namespace (`unshare -n`): target 10,000 applied in
#     under 100 ms;
#  2. forwarding throughput through a gateway namespace with the portcullis
#     table of a 10,000-entry policy loaded vs with no ruleset at all: target
#     >= 95 %.
#
#   sudo tests/bench/fw_bench.sh                 # about 3 minutes; last line: one JSON object
#   sudo tests/bench/fw_bench.sh --rounds 3 --seconds 3 --runs 10      (a quicker run)
#
# Options: --runs R (20: runs of each apply step), --entries "10 1000 10000",
# --rounds N (8: interleaved A/B throughput rounds), --seconds S (5: each
# TCP measurement, after 1 s left out for slow start), --streams P (1: iperf3
# -P), --no-pps (skip the small-packet UDP rate), --only apply|forward.
# BUILD=DIR picks the Release build directory (default build-fwbench).
#
# Part 2's rig, all namespaces this script makes (pcfwb<pid>-cli/-gw/-srv):
#
#   cli  eth0 192.0.2.10/24 --- c0 192.0.2.1/24  gw  s0 198.51.100.1/24 --- eth0 198.51.100.2/24  srv
#        (default via .1)        (ip_forward=1; the LAN interface is c0)          (default via .1)
#
# iperf3 (Debian's; scripts/deps.sh --bench) serves on 198.51.100.2:5201 in
# srv; the client in cli sends TCP for S seconds. Every round measures both
# conditions, in alternating order (A B, B A, ...): A = no nftables table in
# gw (`fw_bench --remove`); B = `fw_bench --load 10000`: the table the node
# would load for a 10,000-entry policy (the same generator as part 1), one of
# whose entries allows 192.0.2.10 to tcp and udp 5201, so the flow is
# forwarded by the whitelist (5201 is a high port: without that entry it is
# dropped, which the script checks once with port 5202). Each round prints
# both rates and their ratio; the result is the median ratio. Beside Gbit/s it
# records the CPU time the machine spent per GB moved (/proc/stat), and
# (unless --no-pps) the UDP rate of 64-byte datagrams received by the server
# (iperf3 -u -b 0 -l 64, 3 s), in packets/s, both conditions.
#
# Needs root. Nothing outside its namespaces is touched: part 1 runs under
# `unshare -n`, part 2 only in pcfwb* namespaces; the trap on EXIT stops what
# it started (by pid) and deletes the namespaces and its work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD:-$root/build-fwbench}
runs=20
entries="10 1000 10000"
rounds=8
seconds=5
streams=1
pps=1
only=""
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) runs=$2; shift 2 ;;
    --entries) entries=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    --no-pps) pps=0; shift ;;
    --only) only=$2; shift 2 ;;
    -h | --help) sed -n '2,45p' "$0"; exit 0 ;;
    *) echo "fw_bench.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
done
case "$only" in "" | apply | forward) ;; *) echo "fw_bench.sh: --only apply|forward" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "fw_bench.sh: needs root (network namespaces, nftables)" >&2; exit 1; }

tag="pcfwb$$"
NS_CLI="$tag-cli" NS_GW="$tag-gw" NS_SRV="$tag-srv"
work=$(mktemp -d /tmp/pc-fw-bench.XXXXXX)
server=""
made=()
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    for ns in "${made[@]}"; do
        # Whatever still runs in these namespaces was started by this script.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v iperf3 >/dev/null || "$root/scripts/deps.sh" --bench
for c in iperf3 nft ip python3 unshare; do
    command -v "$c" >/dev/null || { echo "fw_bench.sh: $c is missing (scripts/deps.sh --bench)" >&2; exit 1; }
done

build_kind="cmake Release"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$work/cmake.out" 2>&1 ||
    { cat "$work/cmake.out" >&2; exit 1; }
if ! cmake --build "$build" --target fw_bench -j2 >"$work/build.out" 2>&1; then
    grep -E 'error|Error' "$work/build.out" | head -20 >&2
    echo "fw_bench.sh: the Release build of fw_bench in $build failed" >&2
    exit 1
fi
fwb="$build/tests/bench/fw_bench"

# Percent of the CPUs busy over one second (others' work, when measured
# while this script is idle).
busy_pct() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{bu=$3-$1; id=$4-$2; printf "%.1f", (bu+id) ? 100*bu/(bu+id) : 0}'
}
# Busy CPU time in ms so far (all CPUs).
busy_ms() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.0f", ($2+$3+$4+$7+$8+$9)*1000/hz}' /proc/stat
}

{
    echo "cpus=$(nproc)"
    echo "cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "kernel=$(uname -r)"
    echo "mem_gib=$(awk '/MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo)"
    echo "nft=$(nft --version | awk '{print $2}')"
    echo "iperf3=$(iperf3 --version | awk 'NR==1{print $2}')"
    echo "load_start=$(cut -d' ' -f1 /proc/loadavg)"
    echo "build=$build_kind"
} >"$work/machine"
echo "fw_bench.sh: $(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r), nftables $(nft --version | awk '{print $2}'), iperf3 $(iperf3 --version | awk 'NR==1{print $2}')"

# --- 1. generation and apply --------------------------------------------------
echo '{}' >"$work/apply.json"
if [ "$only" != forward ]; then
    b=$(busy_pct)
    echo "apply_others_busy_pct=$b" >>"$work/machine"
    echo
    echo "== 1. ruleset generation and apply ($runs runs each; others kept the CPUs $b % busy)"
    # shellcheck disable=SC2086
    unshare -n "$fwb" --runs "$runs" $entries >"$work/apply.out"
    # Its tables here; its JSON line goes into this script's one JSON line.
    head -n -1 "$work/apply.out"
    tail -n 1 "$work/apply.out" >"$work/apply.json"
fi

# --- 2. forwarding throughput -------------------------------------------------
if [ "$only" != apply ]; then
    for ns in "$NS_CLI" "$NS_GW" "$NS_SRV"; do
        ip netns add "$ns"
        made+=("$ns")
        ip -n "$ns" link set lo up
    done
    ip link add c0 netns "$NS_GW" type veth peer name eth0 netns "$NS_CLI"
    ip link add s0 netns "$NS_GW" type veth peer name eth0 netns "$NS_SRV"
    ip -n "$NS_CLI" addr add 192.0.2.10/24 dev eth0
    ip -n "$NS_GW" addr add 192.0.2.1/24 dev c0
    ip -n "$NS_GW" addr add 198.51.100.1/24 dev s0
    ip -n "$NS_SRV" addr add 198.51.100.2/24 dev eth0
    for pair in "$NS_CLI eth0" "$NS_GW c0" "$NS_GW s0" "$NS_SRV eth0"; do
        # shellcheck disable=SC2086
        set -- $pair
        ip -n "$1" link set "$2" up
    done
    ip -n "$NS_CLI" route add default via 192.0.2.1
    ip -n "$NS_SRV" route add default via 198.51.100.1
    ip netns exec "$NS_GW" sysctl -qw net.ipv4.ip_forward=1

    ip netns exec "$NS_SRV" iperf3 -s -B 198.51.100.2 -p 5201 >"$work/iperf3-server.log" 2>&1 </dev/null &
    server=$!
    up=""
    for _ in $(seq 1 100); do
        if ip netns exec "$NS_SRV" ss -ltnH 'sport = :5201' | grep -q 5201; then up=1; break; fi
        kill -0 "$server" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$up" ] || { cat "$work/iperf3-server.log" >&2; echo "fw_bench.sh: iperf3 -s did not start" >&2; exit 1; }

    load_fw() {
        ip netns exec "$NS_GW" "$fwb" --load 10000 --lan-interface c0 --client 192.0.2.10 --port 5201
    }
    remove_fw() {
        ip netns exec "$NS_GW" "$fwb" --remove
        if ip netns exec "$NS_GW" nft list tables | grep -q .; then
            echo "fw_bench.sh: the gateway still has a table after --remove" >&2
            exit 1
        fi
    }
    # iperf3 run: NAME then iperf3 client options; writes NAME.json and NAME.cpu.
    iperf() {
        local name=$1 c0 c1
        shift
        c0=$(busy_ms)
        if ! timeout $((seconds + 20)) ip netns exec "$NS_CLI" iperf3 -c 198.51.100.2 -p 5201 -J "$@" \
            >"$work/$name.json" 2>"$work/$name.err"; then
            echo "fw_bench.sh: iperf3 $name failed:" >&2
            head -c 600 "$work/$name.json" "$work/$name.err" >&2
            exit 1
        fi
        c1=$(busy_ms)
        echo $((c1 - c0)) >"$work/$name.cpu"
    }
    measure() { # ROUND COND
        iperf "tcp-$1-$2" -t "$seconds" -O 1 -P "$streams"
        if [ "$pps" = 1 ]; then
            iperf "udp-$1-$2" -u -b 0 -l 64 -t 3
        fi
    }

    # The ruleset is live: a SYN to tcp 5202, where nothing listens and no
    # entry opens the (high) port, is answered with a reset without a
    # ruleset and dropped (the connect times out) and counted with it.
    syn5202() {
        local rc=0
        ip netns exec "$NS_CLI" timeout 3 bash -c 'exec 3<>/dev/tcp/198.51.100.2/5202' 2>/dev/null || rc=$?
        echo "$rc"
    }
    load_fw >"$work/load-check.json"
    rc=$(syn5202)
    if [ "$rc" != 124 ]; then
        echo "fw_bench.sh: with the ruleset a SYN to tcp 5202 was not dropped (exit $rc)" >&2
        exit 1
    fi
    ip netns exec "$NS_GW" nft -j list counter inet portcullis drop_high_ports >"$work/drop-check.json"
    remove_fw
    rc=$(syn5202)
    if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
        echo "fw_bench.sh: without a ruleset tcp 5202 was not refused by srv (exit $rc): no path?" >&2
        exit 1
    fi

    b=$(busy_pct)
    echo "forward_others_busy_pct=$b" >>"$work/machine"
    echo
    echo "== 2. forwarding through the gateway: $rounds rounds, TCP ${seconds} s each (others kept the CPUs $b % busy)"
    for r in $(seq 1 "$rounds"); do
        if [ $((r % 2)) = 1 ]; then order="none fw"; else order="fw none"; fi
        for cond in $order; do
            if [ "$cond" = fw ]; then
                load_fw >"$work/load-$r.json"
            else
                remove_fw
            fi
            measure "$r" "$cond"
        done
        echo "   round $r done ($order)"
    done
    remove_fw
    echo "load_end=$(cut -d' ' -f1 /proc/loadavg)" >>"$work/machine"
fi

# --- the table and the JSON line ----------------------------------------------
WORK=$work ROUNDS=$rounds SECONDS_=$seconds STREAMS=$streams PPS=$pps ONLY=$only python3 - <<'EOF'
import json, os, statistics as st

work = os.environ["WORK"]
machine = {}
for line in open(os.path.join(work, "machine")):
    k, _, v = line.rstrip("\n").partition("=")
    machine[k] = v
out = {"bench": "firewall", "cpus": int(machine["cpus"]), "cpu": machine["cpu"],
       "kernel": machine["kernel"], "mem_gib": int(machine["mem_gib"]), "nft": machine["nft"],
       "iperf3": machine["iperf3"], "build": machine["build"], "load_start": float(machine["load_start"])}
targets = {}
apply = json.load(open(os.path.join(work, "apply.json")))
if apply.get("results"):
    out["apply_runs"] = apply["runs"]
    out["apply_others_busy_pct"] = float(machine.get("apply_others_busy_pct", "nan"))
    out["apply"] = apply["results"]
    for r in apply["results"]:
        if r["entries"] == 10000:
            targets["apply_10000_lt_100ms"] = r["apply_ms_median"] < 100 and r["loaded_matches"]
            targets["first_load_10000_lt_100ms"] = r["first_apply_ms_median"] < 100

if os.environ["ONLY"] != "apply":
    rounds, secs = int(os.environ["ROUNDS"]), int(os.environ["SECONDS_"])
    pps = os.environ["PPS"] == "1"

    def tcp(name):
        j = json.load(open(os.path.join(work, name + ".json")))
        e = j["end"]
        gbps = e["sum_received"]["bits_per_second"] / 1e9
        gb = e["sum_received"]["bytes"] / 1e9
        retr = e["sum_sent"].get("retransmits", 0)
        cpu_ms = int(open(os.path.join(work, name + ".cpu")).read())
        return gbps, gb, retr, cpu_ms

    def udp(name):
        j = json.load(open(os.path.join(work, name + ".json")))
        s = j["end"]["sum"]
        got = s["packets"] - s["lost_packets"]
        return got / s["seconds"], s["lost_percent"]

    rows = []
    for r in range(1, rounds + 1):
        row = {"round": r, "order": "none,fw" if r % 2 else "fw,none"}
        for cond in ("none", "fw"):
            gbps, gb, retr, cpu_ms = tcp("tcp-%d-%s" % (r, cond))
            row[cond + "_gbps"] = round(gbps, 3)
            row[cond + "_retransmits"] = retr
            # CPU-ms per GB over the whole iperf3 run (includes its setup and
            # the 1 s left out, so an upper bound; same for both conditions).
            row[cond + "_cpu_ms_per_gb"] = round(cpu_ms / gb, 1) if gb else None
            if pps:
                p, lost = udp("udp-%d-%s" % (r, cond))
                row[cond + "_pps"] = round(p)
                row[cond + "_udp_lost_pct"] = round(lost, 1)
        row["ratio"] = round(row["fw_gbps"] / row["none_gbps"], 3)
        if pps:
            row["pps_ratio"] = round(row["fw_pps"] / row["none_pps"], 3)
        rows.append(row)
    load = json.load(open(os.path.join(work, "load-1.json")))
    drop = json.load(open(os.path.join(work, "drop-check.json")))
    dropped = [o["counter"]["packets"] for o in drop["nftables"] if "counter" in o][0]
    fw = {"rounds": rows, "seconds": secs, "streams": int(os.environ["STREAMS"]),
          "entries": load["entries"], "elements": load["elements"],
          "forward_others_busy_pct": float(machine.get("forward_others_busy_pct", "nan")),
          "high_port_syns_dropped": dropped,
          "none_gbps_median": round(st.median(r["none_gbps"] for r in rows), 3),
          "fw_gbps_median": round(st.median(r["fw_gbps"] for r in rows), 3),
          "ratio_median": round(st.median(r["ratio"] for r in rows), 3),
          "none_cpu_ms_per_gb_median": round(st.median(r["none_cpu_ms_per_gb"] for r in rows), 1),
          "fw_cpu_ms_per_gb_median": round(st.median(r["fw_cpu_ms_per_gb"] for r in rows), 1)}
    if pps:
        fw["none_pps_median"] = round(st.median(r["none_pps"] for r in rows))
        fw["fw_pps_median"] = round(st.median(r["fw_pps"] for r in rows))
        fw["pps_ratio_median"] = round(st.median(r["pps_ratio"] for r in rows), 3)
    out["forward"] = fw
    out["load_end"] = float(machine.get("load_end", "nan"))
    targets["forward_ge_95pct"] = fw["ratio_median"] >= 0.95

    print()
    print("Forwarding through the gateway, TCP client -> server, %d s per run (%d stream%s); "
          "no ruleset vs the table of a %d-entry policy (%d set elements)"
          % (secs, fw["streams"], "" if fw["streams"] == 1 else "s", fw["entries"], fw["elements"]))
    head = "%5s %8s %13s %13s %7s %12s %12s" % ("round", "order", "none Gbit/s", "fw Gbit/s", "ratio",
                                               "none CPU/GB", "fw CPU/GB")
    if pps:
        head += " %11s %11s %7s" % ("none pps", "fw pps", "ratio")
    print(head)
    for r in rows:
        line = "%5d %8s %13.3f %13.3f %7.3f %10.0fms %10.0fms" % (
            r["round"], r["order"], r["none_gbps"], r["fw_gbps"], r["ratio"],
            r["none_cpu_ms_per_gb"], r["fw_cpu_ms_per_gb"])
        if pps:
            line += " %11d %11d %7.3f" % (r["none_pps"], r["fw_pps"], r["pps_ratio"])
        print(line)
    line = "%5s %8s %13.3f %13.3f %7.3f %10.0fms %10.0fms" % (
        "med", "", fw["none_gbps_median"], fw["fw_gbps_median"], fw["ratio_median"],
        fw["none_cpu_ms_per_gb_median"], fw["fw_cpu_ms_per_gb_median"])
    if pps:
        line += " %11d %11d %7.3f" % (fw["none_pps_median"], fw["fw_pps_median"], fw["pps_ratio_median"])
    print(line)
    print("ruleset live: %d SYN(s) to tcp 5202 (not whitelisted) dropped by drop_high_ports" % dropped)

if targets:
    out["targets"] = targets
    print()
    for k, v in targets.items():
        print("target %-28s %s" % (k, "met" if v else "MISSED"))
print(json.dumps(out, separators=(",", ":")))
EOF
