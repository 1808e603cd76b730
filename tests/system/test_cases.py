"""test_cases.py - the data-driven part of the suite: every file in cases/ is
one client that writes raw bytes to the proxy, and what it must see.

Case file format (one directive per line; '#' starts a comment line; {http},
{tls12}, {tls13}, {self12}, {self13}, {unlisted} become the lab's ports):

  title: <text>               what the case is about (shown on failure)
  source: 127.0.0.2           bind the client here (default 127.0.0.1)
  connect: HOST:PORT          open a CONNECT tunnel first; it must get 200
  > <text>                    bytes to send; C escapes \\r \\n \\t \\0 \\\\ \\xHH;
                              no newline is implied
  >hex <hex>                  bytes as hex, whitespace ignored
  >random <n> <seed>          n pseudo-random bytes from a fixed seed
  >clienthello <sni>          a real ClientHello (Python's OpenSSL) for sni
  response: <status>          send what is queued and read one complete
                              response; it must have this status
  expect: page | closed       after sending the rest: a 403 page naming the
                              reason, or the connection closed with no page
  reason: <code>              the block event's exact reason
  group: <name>               the block event's group (default: defaults,
                              or board for source 127.0.0.2)

Each case is also a test method, test_<file name>, so one can be run alone:
  python3 test_cases.py --node PATH Cases.test_cl_te
"""

import json
import re

import harness
from harness import NodeTestCase, connect, read_response, recv_until_closed

_ESC = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}


def unescape(s):
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "x":
                out += bytes([int(s[i + 2:i + 4], 16)])
                i += 4
                continue
            if n in _ESC:
                out += _ESC[n]
                i += 2
                continue
            raise ValueError("unknown escape \\%s" % n)
        out += c.encode("latin-1")
        i += 1
    return bytes(out)


class Case:
    def __init__(self, path, lab):
        self.path = path
        self.name = path.stem
        self.title = self.name
        self.source = None
        self.connect = None
        self.steps = []  # ("send", bytes) | ("response", status)
        self.expect = None
        self.reason = None
        self.group = None
        pending = b""
        for no, line in enumerate(path.read_text().splitlines(), 1):
            where = "%s:%d" % (path.name, no)
            if not line.strip() or line.startswith("#"):
                continue
            line = lab.subst(line)
            if line.startswith(">hex "):
                pending += bytes.fromhex(re.sub(r"\s+", "", line[5:]))
            elif line.startswith(">random "):
                n, seed = line.split()[1:3]
                pending += harness.seeded_bytes(int(n), int(seed))
            elif line.startswith(">clienthello "):
                pending += harness.client_hello(line.split()[1])
            elif line.startswith("> ") or line == ">":
                pending += unescape(line[2:])
            else:
                key, _, val = line.partition(":")
                val = val.strip()
                if key == "title":
                    self.title = val
                elif key == "source":
                    self.source = val
                elif key == "connect":
                    self.connect = val
                elif key == "response":
                    self.steps.append(("send", pending))
                    pending = b""
                    self.steps.append(("response", int(val)))
                elif key == "expect":
                    if val not in ("page", "closed"):
                        raise ValueError("%s: expect must be page or closed" % where)
                    self.expect = val
                elif key == "reason":
                    self.reason = val
                elif key == "group":
                    self.group = val
                else:
                    raise ValueError("%s: unknown directive %r" % (where, line))
        self.steps.append(("send", pending))
        if not self.expect or not self.reason:
            raise ValueError("%s: needs expect: and reason:" % path.name)
        if self.group is None:
            self.group = "board" if self.source == harness.BOARD_SOURCE else "defaults"


class Cases(NodeTestCase):

    def run_case(self, name):
        case = Case(harness.CASES_DIR / (name + ".case"), self.lab)
        ctx = "case %s (%s)" % (case.name, case.title)
        node = self.node
        if case.connect:
            s = harness.open_tunnel(node.port, case.connect, source=case.source)
        else:
            s = connect(node.port, case.source)
        try:
            buf = b""
            for kind, arg in case.steps:
                if kind == "send":
                    if arg:
                        s.sendall(arg)
                else:
                    rep, buf = read_response(s, buf)
                    self.assertEqual(rep.status, arg, "%s: %r" % (ctx, rep))
            data, how = recv_until_closed(s)
            data = buf + data
        finally:
            s.close()
        if case.expect == "page":
            h = harness.parse_head(data)
            self.assertIsNotNone(h, "%s: expected a 403 page, got %r (%s)" % (ctx, data[:300], how))
            status, reason, headers, body = h
            self.assertBlockPage(harness.HTTPReply(status, reason, headers, body, data), case.reason)
        else:
            self.assertFalse(data.startswith(b"HTTP/"), "%s: expected a plain close, got %r" % (ctx, data[:300]))
        ev = node.wait_event(case.reason, "block")
        self.assertEqual(ev["group"], case.group, "%s: %s" % (ctx, json.dumps(ev)))
        self.assertEqual(ev["source"], case.source or "127.0.0.1", ctx)
        self.assertEqual(ev["verdict"], "blocked", ctx)


def _add_case_tests():
    for path in sorted(harness.CASES_DIR.glob("*.case")):
        name = path.stem

        def t(self, name=name):
            self.run_case(name)

        t.__name__ = "test_" + re.sub(r"\W", "_", name)
        t.__doc__ = None
        setattr(Cases, t.__name__, t)


_add_case_tests()

if __name__ == "__main__":
    harness.main()
