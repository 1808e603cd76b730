"""test_transparent.py - portcullis-node --transparent behind a real NAT
redirect, in a lab of network namespaces this test makes and deletes:

  lan  192.0.2.10/24, 192.0.2.20/24 (group board)  default via 192.0.2.1
   |
  gw   192.0.2.1/24 | 203.0.113.1/24, ip_forward=1, nftables table pctest:
       LAN TCP to 80, 443, 554, 1755, 8080 redirected to the node on
       192.0.2.1:3129 (8080 is redirected but not in proxy.ports)
   |
  inet 203.0.113.10 HTTP :80, HTTPS TLS 1.3 :443 (origin.test, test CA),
                    RTSP :554, MMS :1755, a listener on :8080
       203.0.113.11 self-signed HTTPS, TLS 1.2 only
       203.0.113.12 self-signed HTTPS, TLS 1.3 only (the probe path)
       203.0.113.13 a "Skype relay": junk on :80 and :443

Clients run in lan as a user's would: curl, ffprobe and ffmpeg through
`ip netns exec`, raw sockets created inside lan by this process. Forwarding
is on, so a client that is not redirected reaches the origin directly: every
allowed case therefore asserts the node's `allow` event (log_allowed), which
only the proxy can write. The RTSP origin is GStreamer's RTSP server when
Debian's python3-gi and gst-rtsp-server are installed, else a stdlib
responder (rtsp_origin.py says why); the test prints which one ran.
"""

import ctypes
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import warnings
from pathlib import Path

import harness
from harness import IO_TIMEOUT, NodeTestCase, recv_until_closed, seeded_bytes

sys.path.insert(0, str(harness.HERE))
import rtsp_origin  # noqa: E402

CLIENT = "192.0.2.10"
BOARD = "192.0.2.20"
GW_LAN = "192.0.2.1"
GW_INET = "203.0.113.1"
ORIGIN = "203.0.113.10"
SELF12 = "203.0.113.11"
SELF13 = "203.0.113.12"
RELAY = "203.0.113.13"
PROXY_PORT = 3129
REDIRECTED = (80, 443, 554, 1755, 8080)
PORTS = {"80": "http", "443": "tls", "554": "rtsp", "1755": "mms"}
GST_PYTHON = "/usr/bin/python3"
MMS_SERVER = harness.REPO / "tests" / "vectors" / "mms" / "recorded" / "mms_server.py"


def _load_mms_server():
    """The spec-written MMS server the MMS vectors were recorded with."""
    spec = importlib.util.spec_from_file_location("mms_server", MMS_SERVER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class MMSOrigin:
    """Port 1755: mms_server.serve() per connection when there is an ASF file
    to serve (made with ffmpeg) and the server, else a sink."""

    def __init__(self, sock, asf):
        self.sock = sock
        self.mod = _load_mms_server() if asf and MMS_SERVER.exists() else None
        self.asf = asf if self.mod else None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            c.settimeout(15)
            if self.mod:
                self.mod.serve(self.mod.Conn(c), self.asf)
            else:
                while c.recv(65536):
                    pass
        except Exception:  # noqa: BLE001 - bytes the server did not expect end its session
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def _die_with_parent():
    """In the child before exec: SIGTERM when this test process dies, even by
    SIGKILL, so a killed run leaves no server holding a namespace open."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _listening(addr):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(64)
    return s


class NetLab:
    """The three namespaces, the redirect and the origins; close() removes all
    of it and is safe to call at any point of a failed build."""

    def __init__(self, lab):
        self.lab = lab
        self.tmp = Path(tempfile.mkdtemp(prefix="pc-transparent-", dir=lab.tmp))
        self.servers, self.closers, self.procs = [], [], []
        self.rtsp_kind = None
        # mms_server.py reads the ASF file without closing it; not this test's concern.
        warnings.filterwarnings("ignore", message=r"unclosed file .*tone\.asf", category=ResourceWarning)
        self.ns = harness.Namespaces("lan", "gw", "inet")
        try:
            self._network()
            self._origins()
        except BaseException:
            self.close()
            raise

    def _network(self):
        ns, t = self.ns, self.ns.tag
        self.lan_if, self.gw_lan_if = "pc%sl0" % t, "pc%sg0" % t
        self.gw_inet_if, self.inet_if = "pc%sg1" % t, "pc%si0" % t
        ns.veth("lan", self.lan_if, "gw", self.gw_lan_if)
        ns.veth("gw", self.gw_inet_if, "inet", self.inet_if)
        for a in (CLIENT, BOARD):
            ns.ip("-n", ns["lan"], "addr", "add", a + "/24", "dev", self.lan_if)
        ns.ip("-n", ns["lan"], "route", "add", "default", "via", GW_LAN)
        ns.ip("-n", ns["gw"], "addr", "add", GW_LAN + "/24", "dev", self.gw_lan_if)
        ns.ip("-n", ns["gw"], "addr", "add", GW_INET + "/24", "dev", self.gw_inet_if)
        for a in (ORIGIN, SELF12, SELF13, RELAY):
            ns.ip("-n", ns["inet"], "addr", "add", a + "/24", "dev", self.inet_if)
        ns.ip("-n", ns["inet"], "route", "add", "192.0.2.0/24", "via", GW_INET)
        ns.run("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ruleset = (
            "table ip pctest {\n"
            "  chain pre {\n"
            "    type nat hook prerouting priority dstnat;\n"
            '    iifname "%s" tcp dport { %s } redirect to :%d;\n'
            "  }\n"
            "}\n" % (self.gw_lan_if, ", ".join(str(p) for p in REDIRECTED), PROXY_PORT))
        ns.run("gw", "nft", "-f", "-", input_=self.ruleset.encode())

    def _origins(self):
        lab, ns = self.lab, self.ns
        leafs = {n: lab.certs[n] for n in harness.NAMES}
        selfc = {harness.SELF_NAME: lab.certs[harness.SELF_NAME]}
        self.asf = self._make_asf()
        with harness.in_netns(ns["inet"]):
            self.servers += [
                harness.HTTPOrigin(addr=(ORIGIN, 80)),
                harness.TLSOrigin(ssl.TLSVersion.TLSv1_3, leafs, "origin.test", addr=(ORIGIN, 443)),
                harness.TLSOrigin(ssl.TLSVersion.TLSv1_2, selfc, harness.SELF_NAME, addr=(SELF12, 443)),
                harness.TLSOrigin(ssl.TLSVersion.TLSv1_3, selfc, harness.SELF_NAME, addr=(SELF13, 443)),
            ]
            self.closers += [harness.Listener(addr=(ORIGIN, 8080)),
                             harness.JunkServer(addr=(RELAY, 80)), harness.JunkServer(addr=(RELAY, 443))]
            mms_sock = _listening((ORIGIN, 1755))
        for srv in self.servers:
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                     daemon=True).start()
        mms = MMSOrigin(mms_sock, self.asf)
        self.closers.append(mms)
        self.mms_serves = mms.asf is not None
        if not self._start_gst():
            with harness.in_netns(ns["inet"]):
                rtsp_sock = _listening((ORIGIN, 554))
            self.closers.append(rtsp_origin.MiniRTSP(rtsp_sock, ORIGIN))
            self.rtsp_kind = "stdlib responder (rtsp_origin.MiniRTSP): %s" % self.gst_why
        print("\ntransparent lab %s: RTSP origin is %s" % (ns.tag, self.rtsp_kind), file=sys.stderr)

    def _make_asf(self):
        if not shutil.which("ffmpeg"):
            return None
        out = self.tmp / "tone.asf"
        r = harness.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                         "sine=frequency=440:duration=2", "-ar", "8000", "-ac", "1", "-c:a", "wmav2",
                         "-b:a", "32k", "-y", str(out)])
        return str(out) if r.returncode == 0 and out.exists() else None

    def _start_gst(self):
        """GStreamer's RTSP server in inet, if it can run; waits for "ready"."""
        if not os.access(GST_PYTHON, os.X_OK):
            self.gst_why = "no %s" % GST_PYTHON
            return False
        p = subprocess.Popen(self.ns.cmd("inet", GST_PYTHON, str(harness.HERE / "rtsp_origin.py"), ORIGIN, "554"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=_die_with_parent)
        self.procs.append(p)
        deadline = time.monotonic() + harness.START_TIMEOUT
        out = b""
        while time.monotonic() < deadline and b"\n" not in out:
            r, _, _ = select.select([p.stdout], [], [], 0.2)
            if r:
                d = os.read(p.stdout.fileno(), 4096)
                if not d:
                    break
                out += d
        if out.startswith(b"ready"):
            self.rtsp_kind = "GStreamer gst-rtsp-server (real server software)"
            return True
        self.gst_why = out.decode(errors="replace").strip() or "GStreamer server did not start"
        self._stop(p)
        self.procs.remove(p)
        return False

    @staticmethod
    def _stop(p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdout:
            p.stdout.close()

    def close(self):
        for p in self.procs:
            self._stop(p)
        self.procs = []
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        self.servers = []
        for c in self.closers:
            c.close()
        self.closers = []
        self.ns.close()
        if not harness.KEEP:
            shutil.rmtree(self.tmp, ignore_errors=True)


def read_rtsp(s, timeout=IO_TIMEOUT):
    """One RTSP response from s: (status, headers dict lower-cased, body)."""
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        if time.monotonic() >= deadline:
            raise AssertionError("no RTSP response within %ss (got %r)" % (timeout, buf[:300]))
        d = s.recv(65536)
        if not d:
            raise AssertionError("closed before an RTSP response (got %r)" % buf[:300])
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"RTSP/1\.0 (\d{3}) ", lines[0])
    if not m:
        raise AssertionError("not an RTSP status line: %r" % lines[0])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        d = s.recv(65536)
        if not d:
            raise AssertionError("RTSP body cut at %d of %d" % (len(rest), n))
        rest += d
    return int(m.group(1)), headers, rest[:n]


class Transparent(NodeTestCase):
    """Each test gets its own node in gw; the lab is built once per class."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.net = NetLab(cls.lab)

    @classmethod
    def tearDownClass(cls):
        cls.net.close()

    def policy(self, overrides=None, version=1):
        p = super().policy(overrides, version)
        p["proxy"]["ports"] = dict(PORTS)  # replaces the loopback lab's ports
        p["proxy"]["log_allowed"] = True
        p["groups"] = [{"name": "board", "sources": [BOARD + "/32"], "skype_exception": True}]
        return p

    def new_node(self, policy=None, threads=None, name="node"):
        n = harness.Node(self.lab, self.tmp / name, policy if policy is not None else self.policy(),
                         threads=threads or self.threads, extra_args=["--transparent"],
                         listen="%s:%d" % (GW_LAN, PROXY_PORT), wrap=self.net.ns.cmd("gw"))
        self._nodes.append(n)
        n.start()
        return n

    # clients in lan

    def lan_run(self, *cmd, timeout=harness.CLIENT_TIMEOUT):
        return self.net.ns.run("lan", *cmd, check=False, timeout=timeout)

    def lan_curl(self, *args, source=None):
        cmd = ["curl", "-sS", "--max-time", "20"]
        if source:
            cmd += ["--interface", source]
        r = self.lan_run(*(cmd + list(args)))
        return r.returncode, r.stdout, r.stderr.decode(errors="replace")

    def lan_curl_reply(self, url, *args, source=None):
        rc, out, err = self.lan_curl("-i", url, *args, source=source)
        h = harness.parse_head(out) if out else None
        if h is None:
            return rc, None, err
        status, reason, headers, rest = h
        return rc, harness.HTTPReply(status, reason, headers, rest, out), err

    def lan_connect(self, port, dst=ORIGIN, source=None):
        return harness.netns_connect(self.net.ns["lan"], (dst, port), source)

    def lan_raw(self, port, data, dst=ORIGIN, source=None):
        """Sends data from lan to dst:port and reads until the far side closes."""
        s = self.lan_connect(port, dst, source)
        try:
            s.sendall(data)
            return recv_until_closed(s)
        finally:
            s.close()

    # assertions

    def assertAllowed(self, port, destination, dst=ORIGIN, source=CLIENT, protocol=None):
        """The node carried the connection (its allow event) and blocked nothing."""
        ev = self.node.wait_event("closed", "allow", port=port, source=source)
        self.assertEqual(ev["destination_address"], dst, json.dumps(ev))
        self.assertEqual(ev["destination"], destination, json.dumps(ev))
        self.assertEqual(ev["protocol"], protocol or PORTS[str(port)], json.dumps(ev))
        self.assertGreater(ev["bytes_down"], 0, json.dumps(ev))
        self.assertNoBlocks()
        return ev

    def assertBlocked(self, reason, port, dst=ORIGIN, source=CLIENT, group="defaults", destination=None):
        ev = self.node.wait_event(reason, "block", port=port, source=source)
        self.assertEqual(ev["verdict"], "blocked")
        self.assertEqual(ev["group"], group, json.dumps(ev))
        self.assertEqual(ev["policy_version"], 1)
        self.assertEqual(ev["destination_address"], dst, json.dumps(ev))
        if destination is not None:
            self.assertEqual(ev["destination"], destination, json.dumps(ev))
        return ev

    # allowed: the protocol of the port

    def test_http_origin(self):
        rc, rep, err = self.lan_curl_reply("http://%s/hello" % ORIGIN, "-H", "Host: origin.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from origin.test\n")
        # Origin-form reaches the origin unchanged.
        self.assertEqual(rep.header("X-Origin-Request"), "GET /hello HTTP/1.1")
        self.assertAllowed(80, "origin.test")

    def test_https_tls13_probe(self):
        rc, rep, err = self.lan_curl_reply("https://origin.test/hello", "--tlsv1.3", "--cacert", self.lab.ca,
                                           "--resolve", "origin.test:443:" + ORIGIN)
        self.assertEqual(rc, 0, err)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from origin.test\n")
        self.assertAllowed(443, "origin.test")

    def test_rtsp_options_describe(self):
        url = "rtsp://%s%s" % (ORIGIN, rtsp_origin.PATH)
        s = self.lan_connect(554)
        try:
            s.sendall(("OPTIONS %s RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: pc-test\r\n\r\n" % url).encode())
            status, headers, _ = read_rtsp(s)
            self.assertEqual(status, 200, headers)
            self.assertIn("DESCRIBE", headers.get("public", ""))
            s.sendall(("DESCRIBE %s RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n" % url).encode())
            status, headers, body = read_rtsp(s)
            self.assertEqual(status, 200, headers)
            self.assertEqual(headers.get("cseq"), "2")
            self.assertEqual(headers.get("content-type"), "application/sdp")
            self.assertIn(b"m=audio", body)
            self.assertIn(b"PCMU/8000", body)
        finally:
            s.close()
        self.assertAllowed(554, ORIGIN)

    @unittest.skipUnless(shutil.which("ffprobe"), "ffprobe not installed (Debian package ffmpeg): "
                         "the real RTSP client sub-case is skipped")
    def test_rtsp_ffprobe(self):
        r = self.lan_run("ffprobe", "-hide_banner", "-v", "error", "-rtsp_transport", "tcp",
                         "-show_entries", "stream=codec_name,sample_rate", "-of", "default=nw=1",
                         "rtsp://%s%s" % (ORIGIN, rtsp_origin.PATH))
        out = r.stdout.decode(errors="replace")
        self.assertEqual(r.returncode, 0, "ffprobe: %s %s" % (out, r.stderr.decode(errors="replace")))
        self.assertIn("codec_name=pcm_mulaw", out)
        self.assertIn("sample_rate=8000", out)
        self.assertAllowed(554, ORIGIN)

    @unittest.skipUnless(shutil.which("ffmpeg"), "ffmpeg not installed: the real MMS client sub-case is skipped")
    def test_mms_ffmpeg(self):
        if not MMS_SERVER.exists():
            self.skipTest("%s is missing: no MMS server to play from" % MMS_SERVER)
        self.assertTrue(self.net.mms_serves, "ffmpeg could not make the ASF file the MMS origin serves")
        r = self.lan_run("ffmpeg", "-nostdin", "-hide_banner", "-i", "mmst://%s/tone.asf" % ORIGIN,
                         "-t", "1", "-f", "null", "-")
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 0, err)
        self.assertIn("Stream #0:0", err)
        self.assertAllowed(1755, ORIGIN)

    # blocked: bytes that are not the port's protocol

    JUNK = {80: "http-ctl", 443: "tls-record-type", 554: "rtsp-request-line", 1755: "mms-rep"}

    def _junk(self, source, group):
        for port, reason in sorted(self.JUNK.items()):
            with self.subTest(port=port):
                self.node.mark()
                data, how = self.lan_raw(port, seeded_bytes(600, port), source=source)
                if port == 80:
                    # Port 80 is HTTP: the client gets a 403 page naming the reason.
                    h = harness.parse_head(data)
                    self.assertIsNotNone(h, data)
                    self.assertEqual(h[0], 403, data)
                    self.assertIn(("<code>%s</code>" % reason).encode(), h[3])
                else:
                    self.assertEqual(data, b"", "bytes reached a client sending junk")
                ev = self.assertBlocked(reason, port, source=source, group=group)
                self.assertEqual(ev["protocol"], PORTS[str(port)])
                self.assertEqual(ev["bytes_down"], 0, json.dumps(ev))

    def test_random_bytes_blocked(self):
        self._junk(CLIENT, "defaults")

    def test_other_protocols_blocked(self):
        # Real bytes of another protocol are no better than noise.
        hello = harness.client_hello("origin.test")
        get = b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n"
        rtsp = b"OPTIONS rtsp://%s/test RTSP/1.0\r\nCSeq: 1\r\n\r\n" % ORIGIN.encode()
        cases = [(80, hello, "http-ctl"), (443, get, "tls-record-type"), (554, get, "rtsp-version"),
                 (554, hello, "rtsp-request-line"), (1755, rtsp, "mms-rep"), (80, rtsp, "http-version")]
        for port, data, reason in cases:
            with self.subTest(port=port, data=data[:20]):
                self.node.mark()
                got, how = self.lan_raw(port, data)
                if port != 80:
                    self.assertEqual(got, b"")
                self.assertBlocked(reason, port)

    def test_server_junk_blocked(self):
        # A "Skype relay" answering a real client with its own protocol.
        rc, rep, err = self.lan_curl_reply("http://%s/hello" % RELAY, "-H", "Host: origin.test")
        self.assertEqual(rep.status, 403, rep)
        self.assertEqual(rep.header("X-Portcullis-Reason"), "http-ctl")
        self.assertNotIn(b"SKYPE-RELAY", rep.raw)
        self.assertBlocked("http-ctl", 80, dst=RELAY, destination="origin.test")
        self.node.mark()
        data, how = self.lan_raw(443, harness.client_hello("origin.test"), dst=RELAY)
        self.assertEqual(data, b"", "the relay's junk reached the client")
        self.assertBlocked("tls-record-type", 443, dst=RELAY, destination="origin.test")

    # blocked: certificates

    def _self_signed(self, addr, version_args):
        rc, out, err = self.lan_curl("-k", *version_args, "--resolve", "selfsigned.test:443:" + addr,
                                     "https://selfsigned.test/hello")
        self.assertNotEqual(rc, 0, "curl got through: %r" % out)
        self.assertNotIn(b"hello from", out)
        ev = self.assertBlocked("tls-certificate", 443, dst=addr, destination="selfsigned.test")
        self.assertEqual(ev["protocol"], "tls")
        self.assertTrue(ev["detail"].startswith("certificate-untrusted"), json.dumps(ev))

    def test_self_signed_tls12(self):
        self._self_signed(SELF12, ["--tls-max", "1.2"])

    def test_self_signed_tls13_probe(self):
        self._self_signed(SELF13, ["--tlsv1.3"])

    # blocked: Skype rules

    def test_skype_domain_http(self):
        rc, rep, err = self.lan_curl_reply("http://%s/hello" % ORIGIN, "-H", "Host: www.skype.com")
        self.assertBlockPage(rep, "blocked-domain")
        ev = self.assertBlocked("blocked-domain", 80, destination="www.skype.com")
        self.assertEqual(ev["bytes_down"], 0, json.dumps(ev))

    def test_skype_domain_sni(self):
        rc, out, err = self.lan_curl("--cacert", self.lab.ca, "--resolve", "www.skype.com:443:" + ORIGIN,
                                     "https://www.skype.com/hello")
        self.assertNotEqual(rc, 0, out)
        ev = self.assertBlocked("blocked-domain", 443)
        self.assertEqual(ev["protocol"], "tls")
        self.assertEqual(ev["detail"], "server name www.skype.com matches skype.com (list skype)")
        self.assertEqual(ev["bytes_down"], 0, json.dumps(ev))

    def test_skype_domain_sni_event_destination(self):
        # docs/events.md: destination is the name the client asked for (here
        # the SNI), not the address.
        data, how = self.lan_raw(443, harness.client_hello("www.skype.com"))
        self.assertEqual(data, b"")
        self.assertBlocked("blocked-domain", 443, destination="www.skype.com")

    def test_skype_exe_download(self):
        rc, rep, err = self.lan_curl_reply("http://%s/SkypeSetup/skype.exe" % ORIGIN, "-H", "Host: origin.test")
        self.assertBlockPage(rep, "blocked-url-suffix")
        self.assertNotIn(b"This program cannot be run", rep.raw)
        ev = self.assertBlocked("blocked-url-suffix", 80, destination="origin.test")
        self.assertIn("skype.exe", ev["detail"])
        self.assertEqual(ev["bytes_down"], 0, "the origin's bytes must not have been read: " + json.dumps(ev))

    def test_skype_domain_rtsp_url(self):
        s = self.lan_connect(554)
        try:
            s.sendall(b"DESCRIBE rtsp://www.skype.com/test RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            data, how = recv_until_closed(s)
        finally:
            s.close()
        self.assertEqual(data, b"", "the server's answer reached the client")
        ev = self.assertBlocked("blocked-domain", 554)
        self.assertEqual(ev["protocol"], "rtsp")
        self.assertIn("www.skype.com", ev["detail"])
        self.assertEqual(ev["bytes_down"], 0, json.dumps(ev))

    # the exception group

    def test_exception_group(self):
        for addr, args in ((SELF12, ["--tls-max", "1.2"]), (SELF13, ["--tlsv1.3"])):
            with self.subTest(server=addr):
                rc, rep, err = self.lan_curl_reply("https://selfsigned.test/hello", "-k", *args,
                                                   "--resolve", "selfsigned.test:443:" + addr, source=BOARD)
                self.assertEqual(rc, 0, err)
                self.assertEqual(rep.status, 200, rep)
                self.assertEqual(rep.body, b"hello from selfsigned.test\n")
        rc, rep, err = self.lan_curl_reply("http://%s/hello" % ORIGIN, "-H", "Host: www.skype.com", source=BOARD)
        self.assertEqual(rep.status, 200, rep)
        # Framing is not lifted: junk from the board is still cut off.
        self._junk(BOARD, "board")
        self.node.stop()
        ev = self.node.events()
        self.assertEqual([e for e in ev if e["type"] == "block" and e["source"] != BOARD], [])
        exc = [e for e in ev if e["type"] == "exception"]
        for e in exc:
            self.assertEqual((e["group"], e["source"], e["reason"]), ("board", BOARD, "skype-exception"),
                             json.dumps(e))
        self.assertTrue(any(e["destination_address"] == SELF12 and "certificate" in e["detail"] for e in exc),
                        "no exception event for the TLS 1.2 certificate: %s" % exc)
        self.assertTrue(any(e["destination"] == "www.skype.com" for e in exc), exc)
        allowed = {(e["destination_address"], e["port"]) for e in ev if e["type"] == "allow"}
        self.assertLessEqual({(SELF12, 443), (SELF13, 443), (ORIGIN, 80)}, allowed, ev)

    # connections the redirect did not make

    def test_not_redirected(self):
        data, how = self.lan_raw(PROXY_PORT, b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n", dst=GW_LAN)
        self.assertEqual(data, b"")
        ev = self.node.wait_event("no-original-destination", "block", source=CLIENT)
        self.assertEqual(ev["destination_address"], None, json.dumps(ev))

    def test_redirected_port_not_listed(self):
        data, how = self.lan_raw(8080, b"GET /hello HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.assertEqual(data, b"")
        ev = self.assertBlocked("port-not-allowed", 8080)
        self.assertEqual(ev["detail"], "port 8080")
        self.assertEqual(ev["bytes_up"], 0, json.dumps(ev))


if __name__ == "__main__":
    harness.main()
