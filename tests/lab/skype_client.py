"""skype_client.py - the lab's Skype-behaviour client (docs/lab.md).

It walks the fallback chain of the white paper, in order, each step with a
short timeout, and reports as JSON which steps reached the supernode (got its
reply) and the first one that did:

  udp           UDP to the supernode's port (proprietary bytes)
  stun          STUN Binding Request to UDP 3478 (RFC 5389)
  turn          TURN Allocate to UDP 3478 (RFC 5766; a 401 counts: the server answered)
  tcp_high      TCP to a previously used high port (proprietary bytes)
  tcp80         TCP 80, proprietary bytes
  tcp443        TCP 443, proprietary bytes in the clear
  tls443        TCP 443, TLS with SNI edge.skype.com, proprietary bytes inside
  proxy_connect CONNECT through the explicit proxy, then TLS + proprietary bytes

Stdlib only. By hand, inside a namespace:
  ip netns exec NS python3 skype_client.py --supernode 203.0.113.7 --proxy 192.0.2.1:3129
Exit status 0 when no step reached the supernode, 1 when one did, 2 on bad usage.
"""

import argparse
import json
import os
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import supernode as sn  # noqa: E402

STEPS = ("udp", "stun", "turn", "tcp_high", "tcp80", "tcp443", "tls443", "proxy_connect")
DEFAULT_TIMEOUT = 1.0


class Client:
    """One walk of the chain. make_socket(family, type) makes every socket
    (lab.py passes one that puts it in a namespace); source binds them."""

    def __init__(self, supernode, proxy=None, sni=sn.SKYPE_NAME, timeout=DEFAULT_TIMEOUT, source=None,
                 udp_port=sn.UDP_PORT, stun_port=sn.STUN_PORT, high_port=sn.HIGH_PORT, make_socket=None):
        self.supernode = supernode
        self.proxy = proxy  # (host, port) or None
        self.sni = sni
        self.timeout = timeout
        self.source = source
        self.udp_port, self.stun_port, self.high_port = udp_port, stun_port, high_port
        self.make_socket = make_socket or (lambda fam, typ: socket.socket(fam, typ))

    # sockets

    def _sock(self, typ):
        s = self.make_socket(socket.AF_INET, typ)
        try:
            s.settimeout(self.timeout)
            if self.source:
                s.bind((self.source, 0))
        except BaseException:
            s.close()
            raise
        return s

    def _tcp(self, host, port):
        s = self._sock(socket.SOCK_STREAM)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s

    def _udp_exchange(self, port, payload, check):
        s = self._sock(socket.SOCK_DGRAM)
        try:
            s.connect((self.supernode, port))
            deadline = time.monotonic() + self.timeout
            s.send(payload)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("no answer")
                s.settimeout(left)
                data = s.recv(2048)
                why = check(data)
                if why is None:
                    return "answered (%d bytes)" % len(data)
        finally:
            s.close()

    def _read_reply(self, s):
        want = sn.MAGIC_REPLY
        got = b""
        while len(got) < len(want):
            d = s.recv(len(want) - len(got))
            if not d:
                break
            got += d
        if got != want:
            raise ConnectionError("no supernode reply: got %r" % got[:64] if got else
                                  "closed without a reply")

    def _magic(self, s):
        s.sendall(sn.MAGIC_HELLO)
        self._read_reply(s)

    def _tls(self, s):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # Skype trusts its own keys, not the web PKI
        t = ctx.wrap_socket(s, server_hostname=self.sni)
        return t

    # the steps

    def step_udp(self):
        return self._udp_exchange(self.udp_port, sn.MAGIC_HELLO,
                                  lambda d: None if d == sn.MAGIC_REPLY else "not the reply")

    def _stun(self, kind, attrs, ok_kinds):
        tid = os.urandom(12)

        def check(d):
            m = sn.stun_parse(d)
            if m is None or m[1] != tid or m[0] not in ok_kinds:
                return "not a STUN answer to our request"
            return None
        return self._udp_exchange(self.stun_port, sn.stun_message(kind, tid, attrs), check)

    def step_stun(self):
        return self._stun(sn.STUN_BINDING_REQUEST, b"", (sn.STUN_BINDING_SUCCESS,))

    def step_turn(self):
        transport = sn.stun_attr(0x0019, struct.pack("!B3x", 17))  # REQUESTED-TRANSPORT: UDP
        return self._stun(sn.TURN_ALLOCATE_REQUEST, transport, (0x0103, sn.TURN_ALLOCATE_ERROR))

    def _tcp_magic(self, port):
        s = self._tcp(self.supernode, port)
        try:
            self._magic(s)
            return "reply on tcp/%d" % port
        finally:
            s.close()

    def step_tcp_high(self):
        return self._tcp_magic(self.high_port)

    def step_tcp80(self):
        return self._tcp_magic(80)

    def step_tcp443(self):
        return self._tcp_magic(443)

    def step_tls443(self):
        s = self._tcp(self.supernode, 443)
        try:
            t = self._tls(s)
            s = t
            self._magic(t)
            return "reply inside TLS (%s, SNI %s)" % (t.version(), self.sni)
        finally:
            s.close()

    def step_proxy_connect(self):
        if not self.proxy:
            raise ValueError("no proxy configured (--proxy)")
        s = self._tcp(*self.proxy)
        try:
            target = "%s:443" % self.supernode
            s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: Skype\r\n\r\n"
                       % (target, target)).encode())
            head = b""
            while b"\r\n\r\n" not in head:
                d = s.recv(4096)
                if not d:
                    raise ConnectionError("proxy closed: %r" % head[:80] if head else "proxy closed")
                head += d
                if len(head) > 65536:
                    raise ConnectionError("proxy reply head too long")
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            if not status.split(" ")[1:2] == ["200"]:
                raise ConnectionError("proxy said %s" % status)
            t = self._tls(s)
            s = t
            self._magic(t)
            return "reply through the proxy's tunnel (%s)" % status
        finally:
            s.close()

    def run_step(self, name):
        """{"step", "reached", "detail", "ms"} for one step."""
        t0 = time.monotonic()
        try:
            detail = getattr(self, "step_" + name)()
            reached = True
        except socket.timeout:
            reached, detail = False, "timed out after %gs" % self.timeout
        except (OSError, ssl.SSLError, ValueError) as e:
            reached, detail = False, "%s: %s" % (type(e).__name__, e)
        return {"step": name, "reached": reached, "detail": detail,
                "ms": round((time.monotonic() - t0) * 1000, 1)}

    def walk(self, steps=STEPS, stop_at_first=False):
        out = []
        for name in steps:
            r = self.run_step(name)
            out.append(r)
            if r["reached"] and stop_at_first:
                break
        reached = [r["step"] for r in out if r["reached"]]
        return {"supernode": self.supernode, "source": self.source, "steps": out,
                "reached": reached, "first": reached[0] if reached else None}


def parse_hostport(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host, int(port)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Walk Skype's fallback chain to a (lab) supernode.")
    ap.add_argument("--supernode", required=True, help="the supernode's address")
    ap.add_argument("--proxy", type=parse_hostport, help="HOST:PORT of the explicit proxy (CONNECT step)")
    ap.add_argument("--sni", default=sn.SKYPE_NAME)
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per step (default 1)")
    ap.add_argument("--source", help="bind to this address")
    ap.add_argument("--udp-port", type=int, default=sn.UDP_PORT)
    ap.add_argument("--stun-port", type=int, default=sn.STUN_PORT)
    ap.add_argument("--high-port", type=int, default=sn.HIGH_PORT, help="the previously used high port")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset, in chain order")
    ap.add_argument("--stop-at-first", action="store_true", help="stop at the first step that reaches it")
    a = ap.parse_args(argv)
    steps = [s for s in a.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error("unknown step(s) %s; steps: %s" % (", ".join(bad), ", ".join(STEPS)))
    c = Client(a.supernode, proxy=a.proxy, sni=a.sni, timeout=a.timeout, source=a.source,
               udp_port=a.udp_port, stun_port=a.stun_port, high_port=a.high_port)
    report = c.walk(steps, a.stop_at_first)
    print(json.dumps(report, indent=1))
    return 1 if report["first"] else 0


if __name__ == "__main__":
    sys.exit(main())
