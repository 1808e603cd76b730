#!/bin/sh
# record.sh - records the RTSP sessions under this directory again (see
# README.md). Needs Debian 12 packages: ffmpeg gstreamer1.0-tools
# gstreamer1.0-rtsp gstreamer1.0-plugins-good gir1.2-gst-rtsp-server-1.0
# python3-gi. Loopback only; every process it starts is stopped by pid.
set -eu
cd "$(dirname "$0")"
GST=18554    # GStreamer RTSP server
FFSRV=18556  # ffmpeg as RTSP server (-rtsp_flags listen)
RELAY=18555  # recording relay
TMP=$(mktemp -d)

/usr/bin/python3 gst_server.py $GST >"$TMP/gst.log" 2>&1 &
GSTPID=$!
trap 'kill $GSTPID 2>/dev/null || true; rm -rf "$TMP"' EXIT
sleep 2

# record NAME UPSTREAM_PORT CLIENT-COMMAND...
record() {
    name=$1
    up=$2
    shift 2
    rm -rf "$name"
    python3 relay.py --listen 127.0.0.1:$RELAY --upstream 127.0.0.1:$up --out "$name" \
        >"$TMP/relay.log" 2>&1 &
    rpid=$!
    sleep 1
    timeout 60 "$@" >"$TMP/$name.log" 2>&1 || echo "$name: client exited $?" >&2
    wait $rpid
    echo "$name: $(tail -n 1 "$TMP/relay.log")"
}

URL=rtsp://127.0.0.1:$RELAY/test
record ffmpeg-play-tcp $GST ffmpeg -nostdin -hide_banner -rtsp_transport tcp -i $URL -t 7 -f null -
record ffprobe-tcp $GST ffprobe -hide_banner -rtsp_transport tcp $URL
record gst-rtspsrc-v10-tcp $GST gst-launch-1.0 -q rtspsrc location=$URL protocols=tcp \
    ! fakesink num-buffers=20
record gst-rtspsrc-v20-tcp $GST gst-launch-1.0 -q rtspsrc location=$URL protocols=tcp \
    default-rtsp-version=2-0 ! fakesink num-buffers=20

# ffmpeg pushing a file it generated (ANNOUNCE + RECORD, client sends RTP)
# to ffmpeg listening as an RTSP server.
ffmpeg -nostdin -hide_banner -loglevel error -f lavfi -i sine=frequency=440:duration=3 \
    -ar 8000 -c:a pcm_mulaw -y "$TMP/tone.mkv"
ffmpeg -nostdin -hide_banner -loglevel error -rtsp_flags listen -timeout 30 \
    -i rtsp://127.0.0.1:$FFSRV/live -f null - &
FFPID=$!
sleep 1
record ffmpeg-announce-record-tcp $FFSRV ffmpeg -nostdin -hide_banner -re -i "$TMP/tone.mkv" \
    -c copy -f rtsp -rtsp_transport tcp rtsp://127.0.0.1:$RELAY/live
wait $FFPID || true
