"""test_exception.py - the Skype exception: group "board" (127.0.0.2/32)
may use Skype. Skype list rules and the certificate requirement are lifted,
each use is an "exception" event, and framing checks still hold (the
framing cases with source 127.0.0.2 are in cases/board_*.case)."""

import json

import harness
from harness import BOARD_SOURCE, NodeTestCase


class SkypeException(NodeTestCase):

    def exceptions(self, node=None):
        node = node or self.node
        node.stop()
        ev = node.events()
        blocks = [e for e in ev if e["type"] == "block"]
        self.assertEqual(blocks, [], "unexpected block events")
        exc = [e for e in ev if e["type"] == "exception"]
        for e in exc:
            self.assertEqual(e["group"], "board", json.dumps(e))
            self.assertEqual(e["source"], BOARD_SOURCE, json.dumps(e))
            self.assertEqual(e["verdict"], "allowed", json.dumps(e))
            self.assertEqual(e["reason"], "skype-exception", json.dumps(e))
        return exc

    def test_self_signed_tls12_allowed(self):
        rc, rep = self.curl_reply("https://selfsigned.test:%d/hello" % self.lab.ports["self12"], "-k",
                                  "--tls-max", "1.2", source=BOARD_SOURCE)
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from selfsigned.test:%d\n" % self.lab.ports["self12"])
        exc = self.exceptions()
        self.assertTrue(any("certificate" in (e["detail"] or "") for e in exc),
                        "no exception event for the certificate: %s" % exc)

    def test_self_signed_tls13_allowed(self):
        rc, rep = self.curl_reply("https://selfsigned.test:%d/hello" % self.lab.ports["self13"], "-k",
                                  "--tlsv1.3", source=BOARD_SOURCE)
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from selfsigned.test:%d\n" % self.lab.ports["self13"])
        # TLS 1.3 in the exception group is not probed, so there is no
        # certificate verdict to report.
        self.exceptions()

    def test_skype_http_allowed(self):
        for host in ("skype.com", "www.skype.com"):
            rc, rep = self.curl_reply("http://%s:%d/hello" % (host, self.lab.ports["http"]),
                                      source=BOARD_SOURCE)
            self.assertEqual(rc, 0)
            self.assertEqual(rep.status, 200, rep)
            self.assertEqual(rep.body, b"hello from %s:%d\n" % (host.encode(), self.lab.ports["http"]))
        exc = self.exceptions()
        dests = {e["destination"] for e in exc}
        self.assertEqual(dests, {"skype.com", "www.skype.com"}, exc)

    def test_skype_connect_allowed(self):
        for host, key in (("skype.com", "tls12"), ("www.skype.com", "tls13")):
            rc, rep = self.curl_reply("https://%s:%d/hello" % (host, self.lab.ports[key]),
                                      "--cacert", self.lab.ca, source=BOARD_SOURCE)
            self.assertEqual(rc, 0)
            self.assertEqual(rep.status, 200, rep)
        exc = self.exceptions()
        self.assertEqual({e["destination"] for e in exc}, {"skype.com", "www.skype.com"}, exc)

    def test_skype_exe_path_lifted_but_executable_blocked(self):
        # The exception lifts the Skype list's URL suffix; block_executables is
        # the group's own rule, not a Skype rule, so an MZ body still stops
        # (docs/proxy.md: lists of category skype and the certificate).
        url = "http://origin.test:%d/SkypeSetup/skype.exe" % self.lab.ports["http"]
        rc, rep = self.curl_reply(url, source=BOARD_SOURCE)
        self.assertBlockPage(rep, "executable-download")
        exc = self.node.wait_event("skype-exception", "exception")
        self.assertIn("skype.exe", exc["detail"])
        blk = self.node.wait_event("executable-download", "block")
        self.assertEqual(blk["group"], "board")

    def test_default_group_still_blocked_on_same_node(self):
        rc, rep = self.curl_reply("http://skype.com:%d/hello" % self.lab.ports["http"])
        self.assertBlockPage(rep, "blocked-domain")
        ev = self.node.wait_event("blocked-domain", "block")
        self.assertEqual(ev["group"], "defaults")
        rc, rep = self.curl_reply("http://skype.com:%d/hello" % self.lab.ports["http"], source=BOARD_SOURCE)
        self.assertEqual(rep.status, 200, rep)


class ExceptionDownloads(NodeTestCase):
    """The board group also allowed executables: skype.exe downloads."""

    policy_overrides = {"groups": [{"name": "board", "sources": [BOARD_SOURCE + "/32"],
                                    "skype_exception": True, "block_executables": False}]}

    def test_skype_exe_download_allowed(self):
        out = self.tmp / "skype.exe"
        url = "http://origin.test:%d/SkypeSetup/skype.exe" % self.lab.ports["http"]
        rc, _, err = self.curl("-o", str(out), "-f", url, source=BOARD_SOURCE)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.read_bytes(), harness.MZ_BODY)
        self.node.stop()
        ev = self.node.events()
        self.assertEqual([e for e in ev if e["type"] == "block"], [])
        exc = [e for e in ev if e["type"] == "exception"]
        self.assertEqual(len(exc), 1, exc)
        self.assertEqual(exc[0]["reason"], "skype-exception")
        self.assertIn("skype.exe", exc[0]["detail"])
        self.assertEqual(exc[0]["group"], "board")

    def test_default_group_still_blocked(self):
        rc, rep = self.curl_reply("http://origin.test:%d/SkypeSetup/skype.exe" % self.lab.ports["http"])
        self.assertBlockPage(rep, "blocked-url-suffix")


if __name__ == "__main__":
    harness.main()
