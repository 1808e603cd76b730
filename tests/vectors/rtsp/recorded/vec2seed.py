#!/usr/bin/env python3
"""vec2seed.py - turns protocol vectors (*.vec, format in tests/unit/vectors.h)
into seed inputs for tests/fuzz/fuzz_rtsp.c and fuzz_mms.c: 0xA5, then per
chunk a control byte (bit 0 direction, bits 1..7 length; 127 takes a second
byte b for 127 + 16 * b) and the bytes.

Usage: vec2seed.py OUTDIR VECTOR_DIR...
"""
import os
import sys


def unescape(s):
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("latin1")
            i += 1
            continue
        n = s[i + 1]
        if n == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
            continue
        out.append({"r": 13, "n": 10, "t": 9, "0": 0, "\\": 92}[n])
        i += 2
    return bytes(out)


def segments(path):
    base = os.path.dirname(path)
    for line in open(path, encoding="latin1").read().split("\n"):
        if not line or line[0] not in "<>":
            continue
        d = 0 if line[0] == ">" else 1
        rest = line[1:]
        if rest.startswith("hex "):
            yield d, bytes.fromhex(rest[4:].replace(":", ""))
        elif rest.startswith("file "):
            yield d, open(os.path.join(base, rest[5:]), "rb").read()
        else:
            yield d, unescape(rest[1:] if rest.startswith(" ") else rest)


def script(segs):
    out = bytearray([0xA5])
    for d, data in segs:
        while data:
            if len(data) < 127:
                n = len(data)
                out.append(n << 1 | d)
            else:
                b = min(255, (len(data) - 127) // 16)
                n = 127 + 16 * b
                out += bytes([127 << 1 | d, b])
            out += data[:n]
            data = data[n:]
    return bytes(out)


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    for vdir in sys.argv[2:]:
        for name in sorted(os.listdir(vdir)):
            if name.endswith(".vec"):
                seed = script(segments(os.path.join(vdir, name)))
                with open(os.path.join(outdir, name[:-4] + ".seed"), "wb") as f:
                    f.write(seed)


if __name__ == "__main__":
    main()
