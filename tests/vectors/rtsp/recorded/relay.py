#!/usr/bin/env python3
"""relay.py - a one-connection recording TCP relay for protocol vectors.

Accepts one connection on --listen, connects to --upstream, forwards bytes both
ways unchanged and records them in arrival order: consecutive reads in the same
direction are one segment, written as OUT/NNN-c2s.bin or OUT/NNN-s2c.bin.
Half-closes are passed on; a reset counts as a close. When both sides have closed it writes OUT.vec-part,
the '>file'/'<file' lines of a vector (paths relative to the vector directory
two levels up, i.e. "recorded/NAME/NNN-dir.bin"), and exits.

Usage: relay.py --listen 127.0.0.1:18554 --upstream 127.0.0.1:8554 --out DIR
"""
import argparse
import os
import select
import socket
import sys
import time


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, type=addr)
    ap.add_argument("--upstream", required=True, type=addr)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(a.listen)
    ls.listen(1)
    print("relay listening", flush=True)
    ls.settimeout(a.timeout)
    client, _ = ls.accept()
    ls.close()
    upstream = socket.create_connection(a.upstream)

    segments = []  # [dir, bytearray]
    peer = {client: upstream, upstream: client}
    name = {client: "c2s", upstream: "s2c"}
    open_r = {client, upstream}
    deadline = time.time() + a.timeout
    while open_r and time.time() < deadline:
        r, _, _ = select.select(list(open_r), [], [], 1.0)
        for s in r:
            try:
                data = s.recv(65536)
            except OSError:  # reset by the peer: the same as a close here
                data = b""
            if not data:
                open_r.discard(s)
                try:
                    peer[s].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            try:
                peer[s].sendall(data)
            except OSError:  # the other side is gone; the bytes were still sent
                pass
            d = name[s]
            if segments and segments[-1][0] == d:
                segments[-1][1].extend(data)
            else:
                segments.append([d, bytearray(data)])
    client.close()
    upstream.close()

    base = os.path.basename(os.path.normpath(a.out))
    lines = []
    for i, (d, data) in enumerate(segments, 1):
        fn = "%03d-%s.bin" % (i, d)
        with open(os.path.join(a.out, fn), "wb") as f:
            f.write(data)
        lines.append("%sfile recorded/%s/%s" % (">" if d == "c2s" else "<", base, fn))
    with open(os.path.join(a.out, "segments.vec-part"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("relay recorded %d segments" % len(segments), file=sys.stderr)


if __name__ == "__main__":
    main()
