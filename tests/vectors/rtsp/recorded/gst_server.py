#!/usr/bin/python3
"""gst_server.py - GStreamer's RTSP server (gst-rtsp-server 1.22, Debian 12
packages gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-good)
serving /test on 127.0.0.1:PORT: a 1 kHz tone as PCMU (RTP payload 0), the
smallest real stream that still carries RTP and RTCP.

Usage: /usr/bin/python3 gst_server.py PORT
Runs until killed.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( audiotestsrc is-live=true freq=1000 ! audio/x-raw,rate=8000,channels=1 "
    "! mulawenc ! rtppcmupay name=pay0 pt=0 )"
)
factory.set_shared(False)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
print("gst rtsp server ready", flush=True)
GLib.MainLoop().run()
