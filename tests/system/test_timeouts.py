"""test_timeouts.py - slowloris: a client that sends its head slower than
header_timeout_ms is cut off with a timeout event, and a stalled connection
never holds up other clients."""

import select
import time

import harness
from harness import NodeTestCase, connect, read_response, recv_until_closed

HEADER_TIMEOUT_MS = 1000


def dribble(s, data, interval, limit):
    """Sends data one byte every interval seconds until the proxy answers or
    closes, or limit seconds pass. Returns (seconds, bytes sent)."""
    start = time.monotonic()
    sent = 0
    for b in data:
        if time.monotonic() - start > limit:
            break
        r, _, _ = select.select([s], [], [], interval)
        if r:
            break
        try:
            s.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
    return time.monotonic() - start, sent


class SlowHead(NodeTestCase):

    policy_overrides = {"proxy": {"header_timeout_ms": HEADER_TIMEOUT_MS}}

    def slow_request(self):
        return (b"GET http://origin.test:%d/hello HTTP/1.1\r\nHost: origin.test:%d\r\n"
                b"User-Agent: slow\r\nX-Padding: " % (self.lab.ports["http"], self.lab.ports["http"])
                + b"p" * 200 + b"\r\n\r\n")

    def assertCutOff(self, s, started, reason):
        data, how = recv_until_closed(s, timeout=5)
        took = time.monotonic() - started
        self.assertGreaterEqual(took, HEADER_TIMEOUT_MS / 1000 - 0.1)
        self.assertLess(took, HEADER_TIMEOUT_MS / 1000 + 3, "cut off late")
        if data:
            h = harness.parse_head(data)
            self.assertIsNotNone(h, data)
            self.assertBlockPage(harness.HTTPReply(h[0], h[1], h[2], h[3], data), reason)
        ev = self.node.wait_event(reason, "block")
        self.assertEqual(ev["group"], "defaults")

    def test_slow_first_head(self):
        s = connect(self.node.port)
        started = time.monotonic()
        took, sent = dribble(s, self.slow_request(), 0.1, 5)
        self.assertLess(sent, len(self.slow_request()), "the whole head went through")
        self.assertCutOff(s, started, "timeout-first-bytes")
        s.close()

    def test_slow_second_head(self):
        s = connect(self.node.port)
        req = self.slow_request()
        s.sendall(req)
        rep, rest = read_response(s)
        self.assertEqual(rep.status, 200, rep)
        started = time.monotonic()
        took, sent = dribble(s, req, 0.1, 5)
        self.assertLess(sent, len(req), "the whole head went through")
        self.assertCutOff(s, started, "timeout-header")
        s.close()

    def test_silent_client(self):
        # Connects and sends nothing at all.
        s = connect(self.node.port)
        started = time.monotonic()
        self.assertCutOff(s, started, "timeout-first-bytes")
        s.close()

    def test_slow_client_hello_in_tunnel(self):
        s = harness.open_tunnel(self.node.port, "origin.test:%d" % self.lab.ports["tls12"])
        started = time.monotonic()
        hello = harness.client_hello("origin.test")
        took, sent = dribble(s, hello, 0.1, 5)
        self.assertLess(sent, len(hello))
        data, how = recv_until_closed(s, timeout=5)
        self.assertEqual(data, b"")
        self.assertLess(time.monotonic() - started, HEADER_TIMEOUT_MS / 1000 + 3)
        ev = self.node.wait_event(type_="block")
        self.assertIn(ev["reason"], ("timeout-first-bytes", "timeout-header"))
        s.close()


class StalledDoesNotBlock(NodeTestCase):
    """One event loop; a client stalls mid-head; others are served at once."""

    threads = 1
    policy_overrides = {"proxy": {"header_timeout_ms": 3000}}

    def test_others_served_while_one_stalls(self):
        stalled = connect(self.node.port)
        stalled.sendall(b"GET http://origin.test:%d/hello HTTP/1.1\r\nHost: orig" % self.lab.ports["http"])
        started = time.monotonic()
        url = "http://origin.test:%d/hello" % self.lab.ports["http"]
        for _ in range(3):
            rc, rep = self.curl_reply(url)
            self.assertEqual(rc, 0)
            self.assertEqual(rep.status, 200, rep)
        rc, rep = self.curl_reply("https://origin.test:%d/hello" % self.lab.ports["tls13"], "--cacert", self.lab.ca)
        self.assertEqual(rep.status, 200, rep)
        self.assertLess(time.monotonic() - started, 3.0, "other clients waited for the stalled one")
        # The stalled connection is still open, then is cut off on time.
        r, _, _ = select.select([stalled], [], [], 0)
        self.assertEqual(r, [], "the stalled connection was closed early")
        data, how = recv_until_closed(stalled, timeout=6)
        stalled.close()
        self.assertIn(b"X-Portcullis-Reason: timeout-first-bytes", data)
        self.node.wait_event("timeout-first-bytes", "block")
        self.assertEqual([e["reason"] for e in self.node.events() if e["type"] == "block"],
                         ["timeout-first-bytes"])


if __name__ == "__main__":
    harness.main()
