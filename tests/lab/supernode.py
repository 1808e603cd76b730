"""supernode.py - a fake Skype supernode for the lab (docs/lab.md).

It listens where the white paper says Skype looks for a supernode and answers
the Skype-behaviour client (skype_client.py):

  UDP  33033  the proprietary protocol: MAGIC_HELLO -> MAGIC_REPLY
  UDP  3478   STUN (RFC 5389): Binding Request -> Binding Success with
              XOR-MAPPED-ADDRESS; TURN (RFC 5766): Allocate -> 401 with
              REALM and NONCE (what a real TURN server says first)
  TCP  40001  the proprietary protocol (a "previously used" high port)
  TCP  80     the proprietary protocol
  TCP  443    the proprietary protocol in the clear, or, when the first byte
              is a TLS handshake record, TLS with a self-signed certificate
              for a Skype name and the proprietary protocol inside

Stdlib only. Run alone inside a namespace:
  ip netns exec NS python3 supernode.py --addr 203.0.113.7 --cert C --key K
or use Supernode(...) from lab.py, which binds its sockets in the lab's
"internet" namespace.
"""

import argparse
import os
import socket
import ssl
import struct
import sys
import threading

MAGIC_HELLO = b"\x02\x9bSKLAB\x01hello-supernode\x00"
MAGIC_REPLY = b"\x02\x9bSKLAB\x81welcome-to-the-mesh\x00"

UDP_PORT = 33033
STUN_PORT = 3478
HIGH_PORT = 40001
TCP_PORTS = (HIGH_PORT, 80, 443)
SKYPE_NAME = "edge.skype.com"

STUN_COOKIE = 0x2112A442
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
TURN_ALLOCATE_REQUEST = 0x0003
TURN_ALLOCATE_ERROR = 0x0113
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_ERROR_CODE = 0x0009
ATTR_REALM = 0x0014
ATTR_NONCE = 0x0015
ATTR_SOFTWARE = 0x8022


def stun_attr(kind, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * pad


def stun_message(kind, tid, attrs=b""):
    return struct.pack("!HHI", kind, len(attrs), STUN_COOKIE) + tid + attrs


def stun_parse(data):
    """(type, transaction id, attributes {type: value}) or None when data is
    not a STUN message."""
    if len(data) < 20 or data[0] & 0xC0:
        return None
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != STUN_COOKIE or length % 4 or 20 + length != len(data):
        return None
    attrs, off = {}, 20
    while off + 4 <= len(data):
        at, al = struct.unpack("!HH", data[off:off + 4])
        attrs.setdefault(at, data[off + 4:off + 4 + al])
        off += 4 + al + (4 - al % 4) % 4
    return kind, data[8:20], attrs


def stun_answer(data, peer):
    """The supernode's answer to one STUN/TURN request, or None."""
    msg = stun_parse(data)
    if msg is None:
        return None
    kind, tid, _ = msg
    software = stun_attr(ATTR_SOFTWARE, b"portcullis-lab supernode")
    if kind == STUN_BINDING_REQUEST:
        ip = struct.unpack("!I", socket.inet_aton(peer[0]))[0] ^ STUN_COOKIE
        port = peer[1] ^ (STUN_COOKIE >> 16)
        xma = stun_attr(ATTR_XOR_MAPPED_ADDRESS, struct.pack("!BBHI", 0, 1, port, ip))
        return stun_message(STUN_BINDING_SUCCESS, tid, xma + software)
    if kind == TURN_ALLOCATE_REQUEST:
        err = stun_attr(ATTR_ERROR_CODE, struct.pack("!HBB", 0, 4, 1) + b"Unauthorized")
        realm = stun_attr(ATTR_REALM, b"lab.skype.test")
        nonce = stun_attr(ATTR_NONCE, os.urandom(8).hex().encode())
        return stun_message(TURN_ALLOCATE_ERROR, tid, err + realm + nonce + software)
    return None


def _recv_exact_prefix(conn, want):
    """Reads until len(want) bytes arrived (or the peer stops); returns them."""
    got = b""
    while len(got) < len(want):
        d = conn.recv(len(want) - len(got))
        if not d:
            break
        got += d
    return got


class Supernode:
    """The supernode's sockets, bound where make_socket puts them (a factory
    taking (family, type); default: this process's namespace), served by
    daemon threads until close()."""

    def __init__(self, addr, cert, key, make_socket=None, udp_port=UDP_PORT, stun_port=STUN_PORT,
                 tcp_ports=TCP_PORTS):
        make_socket = make_socket or (lambda fam, typ: socket.socket(fam, typ))
        self.addr = addr
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.socks = []
        self.stopping = False
        self.hits = {}  # what reached us: "udp", "stun", "turn", "tcp/<port>", "tls/443"
        self._lock = threading.Lock()
        try:
            for port in (udp_port, stun_port):
                s = make_socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((addr, port))
                self.socks.append(s)
                threading.Thread(target=self._udp, args=(s, port == stun_port), daemon=True).start()
            for port in tcp_ports:
                s = make_socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, port))
                s.listen(64)
                self.socks.append(s)
                threading.Thread(target=self._accept, args=(s, port), daemon=True).start()
        except BaseException:
            self.close()
            raise

    def _hit(self, what):
        with self._lock:
            self.hits[what] = self.hits.get(what, 0) + 1

    def _udp(self, s, stun):
        while not self.stopping:
            try:
                data, peer = s.recvfrom(2048)
            except OSError:
                return
            if stun:
                out = stun_answer(data, peer)
                if out is not None:
                    self._hit("stun" if data[:2] == b"\x00\x01" else "turn")
            else:
                out = MAGIC_REPLY if data == MAGIC_HELLO else None
                if out is not None:
                    self._hit("udp")
            if out is not None:
                try:
                    s.sendto(out, peer)
                except OSError:
                    pass

    def _accept(self, s, port):
        while not self.stopping:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c, port), daemon=True).start()

    def _one(self, c, port):
        try:
            c.settimeout(10)
            first = c.recv(1, socket.MSG_PEEK)
            if port == 443 and first == b"\x16":
                c = self.ctx.wrap_socket(c, server_side=True)
                what = "tls/443"
            else:
                what = "tcp/%d" % port
            if _recv_exact_prefix(c, MAGIC_HELLO) == MAGIC_HELLO:
                self._hit(what)
                c.sendall(MAGIC_REPLY)
                c.settimeout(2)
                while c.recv(4096):
                    pass
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            c.close()

    def close(self):
        self.stopping = True
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.socks = []


def main():
    ap = argparse.ArgumentParser(description="A fake Skype supernode (docs/lab.md).")
    ap.add_argument("--addr", default="203.0.113.7")
    ap.add_argument("--cert", required=True, help="certificate for %s (self-signed)" % SKYPE_NAME)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    node = Supernode(a.addr, a.cert, a.key)
    print("supernode on %s: udp %d, stun/turn %d, tcp %s" % (a.addr, UDP_PORT, STUN_PORT,
                                                           ", ".join(map(str, TCP_PORTS))), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
