#!/usr/bin/env bash
# probe_latency.sh - what the TLS 1.3 certificate probe adds to a client's
# first connection, against a local `openssl s_server -tls1_3`: a direct
# handshake, the probe on a cache miss, and a cache hit (probe_bench.c).
# The last line of output is one JSON object.
#
#   tests/bench/probe_latency.sh [ITERATIONS]        (default 200)
# PROBE_BENCH=path/to/probe_bench uses a built binary; otherwise it is
# compiled into tests/bench/out/ with the system cc, -O2, no sanitizers.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
iters=${1:-200}
certs="$root/tests/vectors/probe"
out="$here/out"
mkdir -p "$out"

bin=${PROBE_BENCH:-}
if [ -z "$bin" ]; then
    bin="$out/probe_bench"
    # shellcheck disable=SC2046
    cc -std=gnu11 -O2 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
        -I"$root/node" "$here/probe_bench.c" "$root/node/tls_probe.c" "$root/node/tls_verify.c" \
        $(pkg-config --cflags --libs libuv openssl) -lpthread -o "$bin"
fi

log=$(mktemp "$out/s_server.XXXXXX")
openssl s_server -accept 127.0.0.1:0 -cert "$certs/server.pem" -key "$certs/server.key" \
    -tls1_3 -www >"$log" 2>&1 </dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -f "$log"' EXIT

port=""
for _ in $(seq 1 500); do
    port=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log")
    [ -n "$port" ] && break
    kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.01
done
[ -n "$port" ] || { echo "s_server did not start" >&2; exit 1; }

echo "openssl: $(openssl version); cpu: $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
"$bin" -p "$port" -c "$certs/ca.pem" -n www.example.test -i "$iters"
