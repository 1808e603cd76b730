#!/usr/bin/env bash
# deps.sh - install the Debian 12 packages Portcullis builds, tests and
# benchmarks with. Idempotent: installs only what is missing, so a second run
# does nothing and needs no network.
set -euo pipefail

build=(build-essential cmake pkg-config libuv1-dev libssl-dev libwebsockets-dev libsqlite3-dev
       libcjson-dev libmicrohttpd-dev libcunit1-dev libnftables-dev)
# Real clients and peers the system tests drive.
test=(curl wget openssl python3 python3-jsonschema ca-certificates iproute2 nftables procps util-linux)
# Side-by-side benchmarks (tests/bench/).
bench=(wrk haproxy squid jq iperf3)
# Optional, large: real media peers for tests/system/test_transparent.py (ffprobe as RTSP client,
# ffmpeg as MMS client, GStreamer's RTSP server). Without them those sub-cases skip or fall back.
media=(ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)

want=("${build[@]}" "${test[@]}")
for arg in "$@"; do
  case "$arg" in
    --bench) want+=("${bench[@]}") ;;
    --media) want+=("${media[@]}") ;;
    *) echo "deps: unknown option $arg (--bench, --media)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
