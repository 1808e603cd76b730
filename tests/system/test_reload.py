"""test_reload.py - SIGHUP re-reads the policy file: a new rule applies to
the next connection; a file that does not validate is reported and the
previous policy stays in force."""

import signal

import harness
from harness import NodeTestCase


class Reload(NodeTestCase):

    def hello(self, host="origin.test"):
        return "http://%s:%d/hello" % (host, self.lab.ports["http"])

    def reload(self, policy_or_text, expect):
        before = len(self.node.stderr())
        self.node.write_policy(policy_or_text)
        self.node.signal(signal.SIGHUP)
        return self.node.wait_stderr(expect, after=before)

    def test_block_new_domain_then_keep_it_on_bad_file(self):
        rc, rep = self.curl_reply(self.hello())
        self.assertEqual(rep.status, 200, rep)

        p2 = self.policy({"defaults": {"blocked_domains": ["origin.test"]}}, version=2)
        self.reload(p2, r"policy version 2 applied")
        rc, rep = self.curl_reply(self.hello())
        self.assertBlockPage(rep, "blocked-domain")
        ev = self.node.wait_event("blocked-domain", "block", destination="origin.test")
        self.assertEqual(ev["policy_version"], 2)
        self.assertIn("(list defaults)", ev["detail"])

        # An invalid file: reported, and version 2 stays.
        bad = self.policy({"groups": [{"name": "board", "sources": ["127.0.0.300/32"]}]}, version=3)
        self.reload(bad, r"keeping the previous policy")
        self.assertIn("$.groups[0].sources[0]", self.node.stderr())
        self.node.mark()
        rc, rep = self.curl_reply(self.hello())
        self.assertBlockPage(rep, "blocked-domain")
        ev = self.node.wait_event("blocked-domain", "block")
        self.assertEqual(ev["policy_version"], 2)
        # ... and the proxy still serves what version 2 allows.
        rc, rep = self.curl_reply(self.hello("notskype.com"))
        self.assertEqual(rep.status, 200, rep)

        # Not JSON at all: the same.
        self.reload("{ this is not json", r"keeping the previous policy")
        rc, rep = self.curl_reply(self.hello())
        self.assertBlockPage(rep, "blocked-domain")

        # A good file again: origin.test is allowed once more.
        self.reload(self.policy(version=4), r"policy version 4 applied")
        rc, rep = self.curl_reply(self.hello())
        self.assertEqual(rep.status, 200, rep)

    def test_live_connection_keeps_its_policy(self):
        # A keep-alive connection accepted under version 1 keeps version 1.
        s = harness.connect(self.node.port)
        req = (b"GET http://origin.test:%d/hello HTTP/1.1\r\nHost: origin.test:%d\r\n\r\n"
               % (self.lab.ports["http"], self.lab.ports["http"]))
        s.sendall(req)
        rep, rest = harness.read_response(s)
        self.assertEqual(rep.status, 200, rep)
        self.reload(self.policy({"defaults": {"blocked_domains": ["origin.test"]}}, version=2),
                    r"policy version 2 applied")
        s.sendall(req)
        rep, rest = harness.read_response(s, rest)
        self.assertEqual(rep.status, 200, rep)
        s.close()
        rc, rep = self.curl_reply(self.hello())
        self.assertBlockPage(rep, "blocked-domain")


if __name__ == "__main__":
    harness.main()
