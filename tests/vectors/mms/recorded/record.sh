#!/bin/sh
# record.sh - records the MMS session under this directory again (see
# README.md): ffmpeg's mmst:// client (real) against mms_server.py (ours,
# written from the spec), through the RTSP vectors' recording relay.
# Needs Debian 12's ffmpeg. Loopback only; processes are stopped by pid.
set -eu
cd "$(dirname "$0")"
SRV=11755
RELAY=11756
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

ffmpeg -nostdin -hide_banner -loglevel error -f lavfi -i sine=frequency=440:duration=2 \
    -ar 8000 -ac 1 -c:a wmav2 -b:a 32k -y "$TMP/tone.asf"

# record NAME FFMPEG-INPUT-OPTIONS...
record() {
    name=$1
    shift
    rm -rf "$name"
    python3 mms_server.py $SRV "$TMP/tone.asf" >"$TMP/server.log" 2>&1 &
    spid=$!
    python3 ../../rtsp/recorded/relay.py --listen 127.0.0.1:$RELAY --upstream 127.0.0.1:$SRV \
        --out "$name" >"$TMP/relay.log" 2>&1 &
    rpid=$!
    sleep 1
    # SIGKILL: after the server's EndOfStream ffmpeg 5.1's mmst client spins
    # on "Corrupt stream" errors and does not stop on SIGTERM.
    timeout -s KILL 15 ffmpeg -nostdin -hide_banner -i mmst://127.0.0.1:$RELAY/tone.asf "$@" \
        -f null - >"$TMP/client.log" 2>&1 || echo "$name: client exited $?" >&2
    wait $rpid
    wait $spid || true
    echo "$name: $(tail -n 1 "$TMP/relay.log")"
}

# Stops after 1 s of audio: Pong, then CloseFile.
record ffmpeg-mmst -t 1
# Reads on: the rest of the packets and the server's EndOfStream.
record ffmpeg-mmst-to-end -t 10
