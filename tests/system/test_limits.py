"""test_limits.py - the bounds that keep one client from hurting the rest:
the connection limit, the idle timeout, and backpressure (a client that does
not read never makes the proxy buffer the download)."""

import socket
import time

import harness
from harness import NodeTestCase, connect, read_response, recv_until_closed


def get(host, port, path="/hello", extra=b""):
    return (b"GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n"
            % (host.encode(), port, path.encode(), host.encode(), port, extra))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def closed_within(s, seconds):
    """True when the peer closes s (EOF or reset) within seconds."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class ConnectionLimit(NodeTestCase):

    LIMIT = 5
    policy_overrides = {"proxy": {"max_connections": LIMIT}}
    threads = 1

    def test_refused_past_the_limit_then_served_again(self):
        held = [connect(self.node.port) for _ in range(self.LIMIT)]
        try:
            # Each held connection is counted once accepted; make sure they are.
            time.sleep(0.3)
            extra = connect(self.node.port)
            self.assertTrue(closed_within(extra, 5), "a connection past the limit stayed open")
            extra.close()
            ev = self.node.wait_event("connection-limit", "block")
            self.assertEqual(ev["group"], "defaults")
        finally:
            for s in held:
                s.close()
        # The limit is on connections at once: with the others gone, serve.
        deadline = time.monotonic() + 5
        while True:
            s = connect(self.node.port)
            try:
                s.sendall(get("origin.test", self.lab.ports["http"]))
                rep, _ = read_response(s)
                break
            except (AssertionError, ConnectionResetError, BrokenPipeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            finally:
                s.close()
        self.assertEqual(rep.status, 200)


class IdleTimeout(NodeTestCase):

    policy_overrides = {"proxy": {"idle_timeout_ms": 1000}}

    def test_idle_keepalive_connection_is_closed(self):
        s = connect(self.node.port)
        s.sendall(get("origin.test", self.lab.ports["http"]))
        rep, _ = read_response(s)
        self.assertEqual(rep.status, 200)
        started = time.monotonic()
        self.assertTrue(closed_within(s, 5), "an idle connection was kept past idle_timeout_ms")
        took = time.monotonic() - started
        self.assertGreaterEqual(took, 0.9)
        s.close()


class Backpressure(NodeTestCase):

    threads = 1

    def test_client_that_does_not_read(self):
        # 8 MiB from the origin, a client that reads nothing for a while: the
        # proxy stops reading the origin instead of buffering the body.
        pid = self.node.proc.pid
        s = connect(self.node.port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(get("origin.test", self.lab.ports["http"], "/big"))
        time.sleep(0.5)
        before = rss_kib(pid)
        time.sleep(1.5)
        during = rss_kib(pid)
        self.assertLess(during - before, 1024, "the node's memory grew while the client did not read")
        # And nothing was lost: the whole body arrives once the client reads.
        rep, _ = read_response(s, timeout=30)
        self.assertEqual(rep.status, 200)
        self.assertEqual(len(rep.body), len(harness.big_body()))
        self.assertEqual(rep.body, harness.big_body())
        s.close()
        self.assertNoBlocks()


if __name__ == "__main__":
    harness.main()
