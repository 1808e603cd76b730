#!/usr/bin/env python3
"""fuzz_seeds.py - turns every TLS vector (*.vec here) into a seed input for
tests/fuzz/fuzz_tls.c: a split-seed byte, then per segment a 2-byte header
(bit 15 set for server to client, bits 0-14 the length) and the bytes; a
final byte asks for finish() when the vector does.

Usage: fuzz_seeds.py OUTDIR
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def unescape(s):
    out, i = bytearray(), 0
    esc = {"r": 13, "n": 10, "t": 9, "0": 0, "\\": 92}
    while i < len(s):
        if s[i] != "\\":
            out += s[i].encode()
            i += 1
        elif s[i + 1] == "x":
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(esc[s[i + 1]])
            i += 2
    return bytes(out)


def segments(path):
    finish = False
    for line in open(path, encoding="utf-8").read().splitlines():
        if line.startswith("finish: yes"):
            finish = True
        if not line or line[0] not in "<>":
            continue
        d, rest = line[0], line[1:]
        if rest.startswith("hex "):
            data = bytes.fromhex("".join(c for c in rest[4:] if c not in " \t:"))
        elif rest.startswith("file "):
            data = open(os.path.join(os.path.dirname(path), rest[5:]), "rb").read()
        else:
            data = unescape(rest[1:] if rest.startswith(" ") else rest)
        yield d, data
    yield "finish", finish


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(HERE, "*.vec"))):
        blob = bytearray([len(path) & 0xff])
        finish = False
        for d, data in segments(path):
            if d == "finish":
                finish = data
                continue
            for i in range(0, len(data), 0x7fff):
                chunk = data[i:i + 0x7fff]
                blob += (len(chunk) | (0x8000 if d == "<" else 0)).to_bytes(2, "big") + chunk
        if finish:
            blob += b"\x01"  # a 1-byte trailing segment header fragment: finish, C2S first
        name = os.path.basename(path)[:-4]
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
