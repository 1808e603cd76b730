"""test_regressions.py - proxy bugs a review reproduced, each pinned by the
scenario that exposed it, so they stay fixed:

- a close-delimited response (no Content-Length, no chunking) that the origin
  ends by closing, empty or one byte long, reaches the client, and the
  client's connection ends (the proxy used to hold it and never answer);
- 40 GETs pipelined in one send all get their 40 responses: a deep pipeline
  is slowed down, not blocked (it used to be `http-pipeline-depth`);
- SIGTERM while a TLS 1.3 certificate probe hangs exits 0 with no sanitizer
  output (the probe used to be freed twice: heap-use-after-free);
- a request pipelined to a second origin while the first response trickles
  in slower than header_timeout_ms gets both responses: the proxy's own wait
  is not a slow client head (it used to be `timeout-header`);
- a 403 page still reaches a client whose upload is in flight;
- a CONNECT tunnel to a passthrough port lives past header_timeout_ms while
  traffic flows (it used to be cut with `timeout-first-bytes`).

Every test asserts what the client sees and the node's events; the policy
sets log_allowed, so a connection that ended normally shows as one `allow`
event with reason `closed`.
"""

import socket
import ssl
import threading
import time

import harness
from harness import NodeTestCase, connect, read_response, recv_until_closed

HEADER_TIMEOUT_MS = 1000
HOLD = 15.0  # the longest a raw origin keeps one connection; released at cleanup


def get(host, port, path="/hello", extra=b""):
    return (b"GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n"
            % (host.encode(), port, path.encode(), host.encode(), port, extra))


class RawOrigin:
    """An origin on loopback that does exactly what handler(conn, n, origin)
    does on each connection (n counts connections from 1), each in its own
    thread. Handlers wait with hold(), which ends when the peer closes, when
    close() releases them, or after HOLD seconds."""

    def __init__(self, handler):
        self.handler = handler
        self.release = threading.Event()
        self.count = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.release.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.count += 1
            threading.Thread(target=self._one, args=(c, self.count), daemon=True).start()

    def _one(self, c, n):
        try:
            c.settimeout(harness.IO_TIMEOUT)
            self.handler(c, n, self)
        except (OSError, ValueError):
            pass  # the proxy cut the connection: what the test checks is elsewhere
        finally:
            c.close()

    def hold(self, c):
        """Reads and drops what the peer sends until it closes, close() is
        called, or HOLD seconds pass."""
        deadline = time.monotonic() + HOLD
        c.settimeout(0.1)
        while not self.release.is_set() and time.monotonic() < deadline:
            try:
                if not c.recv(65536):
                    return
            except socket.timeout:
                continue

    def wait_count(self, n, timeout=harness.EVENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count >= n

    def close(self):
        self.release.set()
        self.thread.join(harness.IO_TIMEOUT)
        self.sock.close()


def read_head(c):
    """The request head the proxy sent (bounded by c's timeout)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    return buf


def close_delimited(response):
    """A handler that answers with response, framed only by its close: it
    shuts down its sending side and keeps the connection otherwise open."""
    def handler(c, n, origin):
        read_head(c)
        c.sendall(response)
        c.shutdown(socket.SHUT_WR)
        origin.hold(c)
    return handler


class Regressions(NodeTestCase):

    start_node = False
    policy_overrides = {"proxy": {"log_allowed": True}}

    def raw_origin(self, handler):
        srv = RawOrigin(handler)
        self.addCleanup(srv.close)
        return srv

    def start(self, ports, header_timeout_ms=None, **proxy):
        """A node whose policy serves ports ({port: protocol}) instead of the lab's."""
        over = dict(proxy, ports={str(p): kind for p, kind in ports.items()})
        if header_timeout_ms is not None:
            over["header_timeout_ms"] = header_timeout_ms
        self.node = self.new_node(self.policy({"proxy": over}))
        return self.node

    def blocks(self):
        return [e for e in self.node.events() if e.get("type") == "block"]

    def assertClosedNormally(self, **fields):
        """The connection's one event is allow/closed (never a block)."""
        ev = self.node.wait_event("closed", "allow", **fields)
        self.assertEqual(self.blocks(), [], "unexpected block events")
        return ev

    # close-delimited responses

    def check_close_delimited(self, response):
        srv = self.raw_origin(close_delimited(response))
        self.start({srv.port: "http"})
        s = connect(self.node.port)
        self.addCleanup(s.close)
        s.sendall(get("origin.test", srv.port, "/"))
        data, how = recv_until_closed(s, timeout=5)
        self.assertEqual(data, response)
        self.assertEqual(how, "eof")
        # The origin's close was passed on as a half-close; the client's
        # close ends the connection.
        s.close()
        ev = self.assertClosedNormally(destination="origin.test", port=srv.port)
        self.assertEqual(ev["protocol"], "http")
        self.assertEqual(ev["bytes_down"], len(response))

    def test_close_delimited_empty_body(self):
        self.check_close_delimited(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")

    def test_close_delimited_one_byte_body(self):
        self.check_close_delimited(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nx")

    # pipelining

    def test_forty_pipelined_gets_in_one_send(self):
        h = self.lab.ports["http"]
        self.node = self.new_node()
        s = connect(self.node.port)
        self.addCleanup(s.close)
        s.sendall(b"".join(get("origin.test", h, "/hello?%d" % i) for i in range(1, 41)))
        rest = b""
        for i in range(1, 41):
            rep, rest = read_response(s, rest)
            self.assertEqual(rep.status, 200, "response %d: %r" % (i, rep))
            self.assertEqual(rep.header("X-Origin-Request"), "GET /hello?%d HTTP/1.1" % i)
            self.assertEqual(rep.body, b"hello from origin.test:%d\n" % h)
        self.assertEqual(rest, b"", "bytes after the 40th response")
        # Once the pipeline has drained, the proxy reads the client again.
        s.sendall(get("origin.test", h, "/hello?41"))
        rep, rest = read_response(s, rest)
        self.assertEqual(rep.header("X-Origin-Request"), "GET /hello?41 HTTP/1.1")
        self.assertEqual(self.blocks(), [])
        s.close()
        self.node.stop()
        self.assertEqual([(e["type"], e["reason"]) for e in self.node.events()], [("allow", "closed")])

    def test_second_origin_while_first_response_trickles(self):
        # The first origin sends its head, then one body byte every 0.3 s:
        # 3 s in all, three times header_timeout_ms. The request to the
        # second origin waits in the proxy meanwhile; that wait is the
        # proxy's, not a client that is slow to send its head.
        def trickle(c, n, origin):
            read_head(c)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n")
            for _ in range(10):
                if origin.release.wait(0.3):
                    return
                c.sendall(b"a")
            origin.hold(c)

        srv = self.raw_origin(trickle)
        h = self.lab.ports["http"]
        self.start({srv.port: "http", h: "http"}, header_timeout_ms=HEADER_TIMEOUT_MS)
        s = connect(self.node.port)
        self.addCleanup(s.close)
        started = time.monotonic()
        s.sendall(get("origin.test", srv.port, "/") + get("notskype.com", h))
        r1, rest = read_response(s, timeout=10)
        self.assertEqual(r1.status, 200, r1)
        self.assertEqual(r1.body, b"a" * 10)
        self.assertGreaterEqual(time.monotonic() - started, 2 * HEADER_TIMEOUT_MS / 1000,
                                "the first response did not outlast header_timeout_ms: the test proves nothing")
        r2, rest = read_response(s, rest, timeout=10)
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.header("X-Origin-Request"), "GET /hello HTTP/1.1")
        self.assertEqual(r2.body, b"hello from notskype.com:%d\n" % h)
        self.assertEqual(rest, b"")
        self.assertEqual(self.blocks(), [], "no timeout-header (or any block) for the proxy's wait")
        s.close()
        self.assertClosedNormally()

    # shutdown

    def test_sigterm_while_tls13_probe_hangs(self):
        # Connection 1 is the client's tunnel: a real TLS 1.3 handshake, so
        # the proxy probes the server. Connection 2 is the probe: accepted,
        # its ClientHello read, never answered.
        cert, key = self.lab.certs["origin.test"]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        probe_hello = threading.Event()

        def server(c, n, origin):
            if n == 1:
                c.settimeout(HOLD)
                tls = ctx.wrap_socket(c, server_side=True)  # waits for a Finished that never comes
                origin.hold(tls)
            else:
                if c.recv(65536):
                    probe_hello.set()
                origin.hold(c)

        srv = self.raw_origin(server)
        self.start({srv.port: "tls"}, probe_timeout_ms=10000)
        s = harness.open_tunnel(self.node.port, "origin.test:%d" % srv.port)
        self.addCleanup(s.close)
        s.sendall(harness.client_hello("origin.test"))
        self.assertTrue(srv.wait_count(2), "the proxy never started the probe")
        self.assertTrue(probe_hello.wait(harness.EVENT_TIMEOUT), "the probe sent no ClientHello")
        rc = self.node.stop()
        err = self.node.stderr()
        self.assertEqual(harness.sanitizer_lines(err), [], err)
        self.assertEqual(rc, 0, err[-4000:])
        self.assertIn("stopping", err)
        # The ServerHello was held for the probe's verdict: the client gets
        # nothing, and its connection ends with the node.
        data, how = recv_until_closed(s, timeout=5)
        self.assertEqual(data, b"")
        self.assertEqual(self.blocks(), [], "a probe cut by shutdown is not a certificate failure")

    # blocks

    def test_block_page_reaches_client_whose_upload_is_in_flight(self):
        # The origin does not read the 64 MiB upload: the proxy's writes to it
        # back up. After a second it answers with an executable, which the
        # proxy blocks while the client is still sending.
        def early_mz(c, n, origin):
            read_head(c)
            if origin.release.wait(1.0):
                return
            body = harness.MZ_BODY
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            origin.hold(c)

        srv = self.raw_origin(early_mz)
        self.start({srv.port: "http"})
        s = connect(self.node.port)
        self.addCleanup(s.close)
        size = 64 << 20
        s.sendall(b"POST http://origin.test:%d/ HTTP/1.1\r\nHost: origin.test:%d\r\nContent-Length: %d\r\n\r\n"
                  % (srv.port, srv.port, size))
        stop = threading.Event()
        sent = [0]

        def upload():
            chunk = b"u" * 65536
            try:
                while not stop.is_set() and sent[0] < size:
                    sent[0] += s.send(chunk)
            except OSError:
                pass  # the proxy closed after its page

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        try:
            ev = self.node.wait_event("executable-download", "block")
            rep, rest = read_response(s)
        finally:
            stop.set()
            uploader.join(harness.IO_TIMEOUT + 2)
        self.assertBlockPage(rep, "executable-download")
        self.assertEqual(ev["destination"], "origin.test")
        self.assertEqual(ev["port"], srv.port)
        self.assertFalse(uploader.is_alive(), "the upload did not stop")
        self.assertGreater(sent[0], 0)
        self.assertLess(sent[0], size, "the whole body went through: no upload was in flight")
        tail, how = recv_until_closed(s, timeout=5)
        self.assertEqual(rest + tail, b"", "bytes after the block page")
        self.assertEqual([e["reason"] for e in self.blocks()], ["executable-download"])

    # tunnels

    def test_passthrough_tunnel_outlives_header_timeout(self):
        h = self.lab.ports["http"]
        self.start({h: "passthrough"}, header_timeout_ms=HEADER_TIMEOUT_MS)
        s = harness.open_tunnel(self.node.port, "origin.test:%d" % h)
        self.addCleanup(s.close)
        started = time.monotonic()
        rest = b""
        for i in range(1, 7):
            s.sendall(b"GET /hello?%d HTTP/1.1\r\nHost: origin.test\r\n\r\n" % i)
            rep, rest = read_response(s, rest)
            self.assertEqual(rep.status, 200, "request %d in the tunnel: %r" % (i, rep))
            self.assertEqual(rep.header("X-Origin-Request"), "GET /hello?%d HTTP/1.1" % i)
            self.assertEqual(rep.body, b"hello from origin.test\n")
            time.sleep(0.5)  # traffic keeps flowing, but slower than one unit per header_timeout_ms
        self.assertGreaterEqual(time.monotonic() - started, 2 * HEADER_TIMEOUT_MS / 1000)
        self.assertEqual(self.blocks(), [], "the tunnel was cut")
        s.close()
        ev = self.assertClosedNormally(destination="origin.test", port=h)
        self.assertEqual(ev["protocol"], "passthrough")


if __name__ == "__main__":
    harness.main()
