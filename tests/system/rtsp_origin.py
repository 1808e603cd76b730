"""rtsp_origin.py - the RTSP origin of the transparent-mode test, on port 554
of the lab's "internet" namespace, serving /test: a tone as PCMU (RTP payload
0) over RTP interleaved in the RTSP connection.

Two servers, the first one that can run:

- GStreamer's RTSP server (gst-rtsp-server, real server software; Debian 12
  packages python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-base
  and -good), run as its own process:
      /usr/bin/python3 rtsp_origin.py ADDR PORT
  It prints "ready" once it listens, and exits 3 when GStreamer or one of
  its elements is missing.
- MiniRTSP, a stdlib responder written for this test (OPTIONS, DESCRIBE,
  SETUP with interleaved transport only, PLAY, GET_PARAMETER, TEARDOWN),
  used in-process when GStreamer is not installed. Every byte it sends is
  ours, so it shows that the proxy passes RFC 2326 as we read it, not that
  it passes a real server.

live555MediaServer (Debian's livemedia-utils) would be the obvious real
server, but Debian 12 main does not carry it.
"""

import struct
import sys
import threading
import time

PATH = "/test"
SDP = ("v=0\r\n"
       "o=- 1 1 IN IP4 {addr}\r\n"
       "s=Portcullis test tone\r\n"
       "c=IN IP4 0.0.0.0\r\n"
       "t=0 0\r\n"
       "a=control:*\r\n"
       "m=audio 0 RTP/AVP 0\r\n"
       "a=rtpmap:0 PCMU/8000\r\n"
       "a=control:track1\r\n")


class MiniRTSP:
    """A minimal RTSP/1.0 server on a listening socket the caller made (so it
    can be bound inside a namespace). Each connection runs in a thread; after
    PLAY a second thread sends 20 ms RTP packets on channel 0 for at most
    PLAY_SECONDS or until TEARDOWN/close."""

    PLAY_SECONDS = 20

    def __init__(self, sock, addr):
        self.sock = sock
        self.addr = addr
        self.stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _serve(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        lock = threading.Lock()
        playing = threading.Event()
        done = threading.Event()
        buf = b""
        c.settimeout(15)
        try:
            while True:
                # Interleaved frames from the client (RTCP receiver reports).
                while buf.startswith(b"$"):
                    if len(buf) < 4:
                        break
                    n = struct.unpack("!H", buf[2:4])[0]
                    if len(buf) < 4 + n:
                        break
                    buf = buf[4 + n:]
                end = buf.find(b"\r\n\r\n")
                if end < 0 or buf.startswith(b"$"):
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                    continue
                head = buf[:end].decode("latin-1").split("\r\n")
                headers = {}
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                clen = int(headers.get("content-length", "0") or 0)
                if len(buf) < end + 4 + clen:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                    continue
                buf = buf[end + 4 + clen:]
                parts = head[0].split(" ")
                method = parts[0]
                url = parts[1] if len(parts) > 1 else ""
                reply, body, close = self._answer(method, url, headers)
                out = "RTSP/1.0 %s\r\nCSeq: %s\r\nServer: portcullis-mini-rtsp\r\n" % (
                    reply[0], headers.get("cseq", "0"))
                for k, v in reply[1]:
                    out += "%s: %s\r\n" % (k, v)
                if body:
                    out += "Content-Length: %d\r\n" % len(body)
                out = out.encode() + b"\r\n" + body
                with lock:
                    c.sendall(out)
                if method == "PLAY" and reply[0].startswith("200") and not playing.is_set():
                    playing.set()
                    threading.Thread(target=self._play, args=(c, lock, done), daemon=True).start()
                if close:
                    return
        except (OSError, ValueError):
            pass
        finally:
            done.set()
            with lock:
                c.close()

    def _answer(self, method, url, headers):
        base = "rtsp://%s%s" % (self.addr, PATH)
        session = [("Session", "5e55104e;timeout=60")]
        if method == "OPTIONS":
            return ("200 OK", [("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN")]), b"", False
        if not url.split("://", 1)[-1].partition("/")[2].startswith(PATH[1:]):
            return ("404 Not Found", []), b"", False
        if method == "DESCRIBE":
            return (("200 OK", [("Content-Base", base + "/"), ("Content-Type", "application/sdp")]),
                    SDP.format(addr=self.addr).encode(), False)
        if method == "SETUP":
            if "interleaved" not in headers.get("transport", ""):
                return ("461 Unsupported Transport", []), b"", False
            return ("200 OK", session + [("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")]), b"", False
        if method == "PLAY":
            return ("200 OK", session + [("Range", "npt=0.000-"),
                                          ("RTP-Info", "url=%s/track1;seq=1;rtptime=0" % base)]), b"", False
        if method == "GET_PARAMETER":
            return ("200 OK", session), b"", False
        if method == "TEARDOWN":
            return ("200 OK", session), b"", True
        return ("501 Not Implemented", []), b"", False

    def _play(self, c, lock, done):
        seq, ts = 1, 0
        deadline = time.monotonic() + self.PLAY_SECONDS
        while not done.is_set() and time.monotonic() < deadline:
            rtp = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts, 0x5EED5EED) + b"\xff" * 160
            try:
                with lock:
                    c.sendall(b"$\x00" + struct.pack("!H", len(rtp)) + rtp)
            except OSError:
                return
            seq += 1
            ts += 160
            done.wait(0.02)


def gst_main(addr, port):
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        print("no GStreamer RTSP server: %s" % e, flush=True)
        sys.exit(3)
    Gst.init(None)
    for el in ("audiotestsrc", "mulawenc", "rtppcmupay"):
        if Gst.ElementFactory.find(el) is None:
            print("no GStreamer element %s" % el, flush=True)
            sys.exit(3)
    server = GstRtspServer.RTSPServer()
    server.set_address(addr)
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( audiotestsrc is-live=true freq=1000 ! audio/x-raw,rate=8000,channels=1 "
                       "! mulawenc ! rtppcmupay name=pay0 pt=0 )")
    factory.set_shared(False)
    server.get_mount_points().add_factory(PATH, factory)
    if server.attach(None) == 0:
        print("GStreamer could not listen on %s:%s" % (addr, port), flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    gst_main(sys.argv[1], int(sys.argv[2]))
