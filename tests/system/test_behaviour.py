"""test_behaviour.py - what docs/proxy.md and docs/node.md promise beyond
allow/block: keep-alive across origins, pipelining, half-close, request
bodies, many clients at once, upstream failures, log reopening."""

import concurrent.futures
import hashlib
import os
import signal
import socket

import harness
from harness import NodeTestCase, connect, read_response, recv_until_closed


def get(host, port, path="/hello", extra=b""):
    return (b"GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n"
            % (host.encode(), port, path.encode(), host.encode(), port, extra))


class Behaviour(NodeTestCase):

    def test_keepalive_switches_origin(self):
        # One client connection, two origins: the proxy finishes the first
        # response, then connects to the second.
        h = self.lab.ports["http"]
        s = connect(self.node.port)
        s.sendall(get("origin.test", h))
        rep, rest = read_response(s)
        self.assertEqual(rep.body, b"hello from origin.test:%d\n" % h)
        s.sendall(get("notskype.com", h))
        rep, rest = read_response(s, rest)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from notskype.com:%d\n" % h)
        s.close()
        self.assertNoBlocks()

    def test_curl_two_origins_one_connection(self):
        h = self.lab.ports["http"]
        rc, out, err = self.curl("http://origin.test:%d/hello" % h, "http://notskype.com:%d/hello" % h,
                                 "-w", "[connects=%{num_connects}]\n")
        self.assertEqual(rc, 0, err)
        text = out.decode()
        self.assertIn("hello from origin.test", text)
        self.assertIn("hello from notskype.com", text)
        self.assertNoBlocks()

    def test_pipelined_requests(self):
        h = self.lab.ports["http"]
        s = connect(self.node.port)
        s.sendall(get("origin.test", h, "/hello?1") + get("origin.test", h, "/hello?2")
                  + get("origin.test", h, "/hello?3", b"Connection: close\r\n"))
        rest = b""
        for i in (1, 2, 3):
            rep, rest = read_response(s, rest)
            self.assertEqual(rep.status, 200, rep)
            self.assertEqual(rep.header("X-Origin-Request"), "GET /hello?%d HTTP/1.1" % i)
        tail, _ = recv_until_closed(s)
        self.assertEqual(rest + tail, b"")
        s.close()
        self.assertNoBlocks()

    def test_blocked_request_while_a_response_streams(self):
        # A keep-alive client downloads /big and, before the body is done,
        # sends a request the policy blocks. The 200 body is half-way to the
        # client, so a 403 page can only corrupt it: the proxy must close
        # (docs/proxy.md, "How a block looks").
        h = self.lab.ports["http"]
        s = connect(self.node.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(get("origin.test", h, "/big"))
        data = b""
        while harness.parse_head(data) is None or len(data) < 70000:
            d = s.recv(65536)
            self.assertTrue(d, "closed before the body started")
            data += d
        s.sendall(get("origin.test", h, "/SkypeSetup/skype.exe"))
        self.node.wait_event("blocked-url-suffix", "block")
        rest, how = recv_until_closed(s, timeout=15)
        s.close()
        data += rest
        status, reason, headers, body = harness.parse_head(data)
        self.assertEqual(status, 200)
        i = body.find(b"HTTP/1.1 403")
        self.assertEqual(i, -1, "the 403 page was written into the 200 body at body offset %d: %r"
                         % (i, body[i - 20:i + 120]))
        self.assertLess(len(body), harness.BIG_SIZE)
        self.assertEqual(body, self.lab.big[:len(body)], "the body bytes that arrived are not the origin's")

    def test_pipelined_blocked_second_request(self):
        # Two requests in one write; the second is blocked. Whatever the
        # client reads first is its answer to the FIRST request, so it must
        # not be a 403 naming the second: either /hello's 200 (then the page
        # or a close), or a close.
        h = self.lab.ports["http"]
        s = connect(self.node.port)
        s.sendall(get("origin.test", h) + get("origin.test", h, "/SkypeSetup/skype.exe"))
        data, how = recv_until_closed(s)
        s.close()
        self.node.wait_event("blocked-url-suffix", "block")
        if data:
            head = harness.parse_head(data)
            self.assertIsNotNone(head, data)
            self.assertEqual(head[0], 200, "the first request was answered with the second's block page: %r"
                             % data[:300])

    def test_half_close_after_request(self):
        # The client sends its request and shuts down its sending side; the
        # response still arrives.
        s = connect(self.node.port)
        s.sendall(get("origin.test", self.lab.ports["http"], extra=b"Connection: close\r\n"))
        s.shutdown(socket.SHUT_WR)
        data, how = recv_until_closed(s)
        s.close()
        h = harness.parse_head(data)
        self.assertIsNotNone(h, data)
        self.assertEqual(h[0], 200, data)
        self.assertTrue(h[3].startswith(b"hello from origin.test"), data)
        self.assertNoBlocks()

    def test_head_request(self):
        rc, out, err = self.curl("-I", "http://origin.test:%d/hello" % self.lab.ports["http"])
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertNoBlocks()

    def test_chunked_upload(self):
        data = self.tmp / "up"
        data.write_bytes(b"x" * 100000)
        rc, out, err = self.curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@" + str(data),
                                 "http://origin.test:%d/upload" % self.lab.ports["http"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"posted 100000 bytes\n")
        self.assertNoBlocks()

    def test_big_upload(self):
        data = self.tmp / "up"
        data.write_bytes(self.lab.big)
        rc, out, err = self.curl("--data-binary", "@" + str(data),
                                 "http://origin.test:%d/upload" % self.lab.ports["http"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, b"posted %d bytes\n" % harness.BIG_SIZE)
        self.assertNoBlocks()

    def test_parallel_clients(self):
        h, t12, t13 = self.lab.ports["http"], self.lab.ports["tls12"], self.lab.ports["tls13"]
        urls = ["http://origin.test:%d/hello" % h, "https://origin.test:%d/hello" % t12,
                "https://origin.test:%d/hello" % t13] * 8

        def one(url):
            return self.curl("--cacert", self.lab.ca, url)

        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as ex:
            results = list(ex.map(one, urls))
        for url, (rc, out, err) in zip(urls, results):
            self.assertEqual(rc, 0, "%s: %s" % (url, err))
            self.assertTrue(out.startswith(b"hello from origin.test"), (url, out))
        self.assertNoBlocks()

    def test_parallel_big_downloads(self):
        want = hashlib.sha256(self.lab.big).hexdigest()

        def one(i):
            out = self.tmp / ("big%d" % i)
            url = "http://origin.test:%d/big" % self.lab.ports["http"] if i % 2 else \
                "https://origin.test:%d/big" % self.lab.ports["tls12"]
            rc, _, err = self.curl("--cacert", self.lab.ca, "-o", str(out), url)
            return rc, err, hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None

        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
            for rc, err, digest in ex.map(one, range(4)):
                self.assertEqual(rc, 0, err)
                self.assertEqual(digest, want)
        self.assertNoBlocks()

    def test_upstream_refused_gives_502(self):
        port = self.lab.ports["closed"]
        rc, rep = self.curl_reply("http://origin.test:%d/hello" % port)
        self.assertBlockPage(rep, "upstream-unreachable", status=502)
        ev = self.node.wait_event("upstream-unreachable", "block", destination="origin.test")
        self.assertEqual(ev["port"], port)

    def test_sigusr1_counters(self):
        rc, rep = self.curl_reply("http://skype.com:%d/hello" % self.lab.ports["http"])
        self.assertBlockPage(rep, "blocked-domain")
        before = len(self.node.stderr())
        self.node.signal(signal.SIGUSR1)
        m = self.node.wait_stderr(r"accepted (\d+) active (\d+) blocked (\d+)", after=before)
        self.assertGreaterEqual(int(m.group(1)), 1)
        self.assertGreaterEqual(int(m.group(3)), 1)

    def test_sighup_reopens_event_log(self):
        rc, rep = self.curl_reply("http://skype.com:%d/hello" % self.lab.ports["http"])
        self.node.wait_event("blocked-domain", "block")
        rotated = self.node.events_file.with_suffix(".1")
        os.rename(self.node.events_file, rotated)
        before = len(self.node.stderr())
        self.node.signal(signal.SIGHUP)
        self.node.wait_stderr(r"policy version 1 applied", after=before)
        self.node._seen = 0
        rc, rep = self.curl_reply("http://www.skype.com:%d/hello" % self.lab.ports["http"])
        ev = self.node.wait_event("blocked-domain", "block")
        self.assertEqual(ev["destination"], "www.skype.com")
        self.assertEqual(len(self.node.events()), 1, "the new file has only the new event")
        self.assertIn(b'"destination":"skype.com"', rotated.read_bytes())


if __name__ == "__main__":
    harness.main()
