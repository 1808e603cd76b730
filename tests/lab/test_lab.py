"""test_lab.py - the white paper's claim, end to end on real network stacks
(docs/lab.md): "If Skype cannot contact a Supernode, the system has blocked
Skype from working."

The lab (lab.py) is an office LAN (staff 192.0.2.10, board 192.0.2.130, a
mail server 192.0.2.25), its gateway running portcullis-node with its
firewall (--firewall --lan-interface lan0 --transparent) and an internet
with a web server, a mail server and a fake Skype supernode. The
Skype-behaviour client (skype_client.py) walks the fallback chain from each
group.

  PolicyFile     the node runs from a policy file the test writes
  FromController the same lab driven by portcullis-controller over REST; the
                 Skype exception flipped off, and the time until the next
                 attempt is refused measured (target < 1 s)

Run (root; needs ip, nft, curl, openssl):
  python3 test_lab.py --node PATH --controller PATH [unittest args]
Any sanitizer line in a daemon's output, or an exit status other than 0 on
SIGTERM, fails the class.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lab as L  # noqa: E402
import skype_client  # noqa: E402

NODE = os.environ.get("PORTCULLIS_NODE", "")
CONTROLLER = os.environ.get("PORTCULLIS_CONTROLLER", "")

# Where each step of the chain must be stopped, for a group without the
# exception: by the firewall (a drop counter) or by the proxy (a block event
# with this reason; "http-" means any HTTP conformance reason).
FIREWALL_STEPS = {"udp": "drop_high_ports", "stun": "drop_high_ports", "turn": "drop_high_ports",
                  "tcp_high": "drop_high_ports"}
PROXY_STEPS = {"tcp80": "http-", "tcp443": "tls-record-type", "tls443": "blocked-domain",
               "proxy_connect": "no-original-destination"}
EVENT_WAIT = 3.0
ENFORCE_TARGET = 1.0


def firewall_args():
    return ["--firewall", "--lan-interface", L.LAN_IF]


class LabCase(unittest.TestCase):
    """Helpers shared by both classes; cls.lab and cls.node are set up by them."""

    lab = None
    node = None

    @classmethod
    def tearDownClass(cls):
        problems = []
        if cls.lab:
            for p in cls.lab.procs:
                why = p.problems()
                if why:
                    problems.append(why)
            cls.lab.close()
        if problems:
            raise AssertionError("\n".join(problems))

    def wait_event(self, pred, what, timeout=EVENT_WAIT):
        deadline = time.monotonic() + timeout
        while True:
            ev = self.node.new_events()
            for e in ev:
                if pred(e):
                    return e
            if time.monotonic() >= deadline:
                self.fail("no event %s within %ss; events since mark:\n%s"
                          % (what, timeout, "\n".join(json.dumps(e) for e in ev) or "(none)"))
            time.sleep(0.02)

    def counters(self):
        c = self.lab.firewall_counters()
        self.assertTrue(c, "table inet portcullis is not loaded in the gateway")
        return c

    def assertBlockedEverywhere(self, role, source, group):
        """Every step of the chain fails from role, each with its evidence:
        a firewall drop counter that went up, or the proxy's block event."""
        client = self.lab.client(role)
        evidence = []
        for step in skype_client.STEPS:
            before = self.counters()
            self.node.mark()
            r = client.run_step(step)
            self.assertFalse(r["reached"], "%s reached the supernode from %s: %r" % (step, role, r))
            if step in FIREWALL_STEPS:
                name = FIREWALL_STEPS[step]
                after = self.counters()
                self.assertGreater(after.get(name, 0), before.get(name, 0),
                                   "%s: counter %s did not go up (before %r, after %r)" % (step, name, before, after))
                evidence.append("%s: firewall %s %d -> %d" % (step, name, before.get(name, 0), after[name]))
            else:
                want = PROXY_STEPS[step]
                e = self.wait_event(lambda e: e.get("type") == "block" and e.get("source") == source and
                                    e.get("reason", "").startswith(want), "block %s* from %s" % (want, source))
                self.assertEqual(e["group"], group, json.dumps(e))
                evidence.append("%s: proxy event %s (%s)" % (step, e["reason"], e.get("detail", "")))
        print("\n  %s (%s): every step stopped:\n    %s" % (role, source, "\n    ".join(evidence)),
              file=sys.stderr)

    def assertOnlyTLS(self, role, source):
        """The exception group: the TLS 443 step reaches the supernode (an
        exception event), nothing else does."""
        self.node.mark()
        report = self.lab.client(role).walk()
        self.assertEqual(report["reached"], ["tls443"], json.dumps(report, indent=1))
        self.assertEqual(report["first"], "tls443")
        e = self.wait_event(lambda e: e.get("type") == "exception" and e.get("source") == source and
                            e.get("port") == 443, "exception on 443 from %s" % source)
        self.assertEqual(e["group"], "board", json.dumps(e))
        return report


class PolicyFile(LabCase):
    """The node runs from a policy file with a firewall part and group board
    (192.0.2.128/25) holding the Skype exception."""

    @classmethod
    def setUpClass(cls):
        cls.lab = L.Lab(node_path=NODE)
        try:
            cls.policy_file = cls.lab.write_policy(cls.lab.policy())
            cls.node = cls.lab.start_node(["--policy", cls.policy_file] + firewall_args())
        except BaseException:
            cls.lab.close()
            raise

    def test_blocked_group_every_step_fails(self):
        self.assertBlockedEverywhere("staff", L.STAFF, "defaults")

    def test_exception_group_only_tls443(self):
        self.assertOnlyTLS("board", L.BOARD)

    def test_web_pages_from_both_groups(self):
        for role in ("staff", "board"):
            for scheme in ("http", "https"):
                rc, body, err = self.lab.curl(role, "%s://%s/" % (scheme, L.WEB_NAME), "-f")
                self.assertEqual(rc, 0, "%s %s: %s" % (role, scheme, err))
                self.assertEqual(body, ("<h1>hello from %s over %s</h1>\n" % (L.WEB_NAME, scheme)).encode())

    def test_mail_server_alone_reaches_port_25(self):
        got = self.lab.smtp_greeting("mail")
        self.assertTrue(got and got.startswith("220 mail.example.test"), repr(got))
        for role in ("staff", "board"):
            before = self.counters()
            self.assertIsNone(self.lab.smtp_greeting(role), "%s reached port 25 outside" % role)
            after = self.counters()
            self.assertGreater(after.get("drop_default", 0), before.get("drop_default", 0), (before, after))

    def test_skype_exe_download_blocked(self):
        self.node.mark()
        rc, body, err = self.lab.curl("staff", "http://%s/download/skype.exe" % L.WEB_NAME, "-i")
        self.assertIn(b"403 Forbidden", body.split(b"\r\n", 1)[0], body[:200])
        self.assertNotIn(b"This program cannot be run in DOS mode", body)
        self.wait_event(lambda e: e.get("reason") == "blocked-url-suffix" and e.get("source") == L.STAFF,
                        "blocked-url-suffix from staff")
        # Where Skype is really downloaded from: the name is on the Skype list,
        # so the TLS connection is refused by its SNI.
        rc, body, err = self.lab.curl("staff", "https://%s/download/skype.exe" % L.SKYPE_DOWNLOAD)
        self.assertNotEqual(rc, 0, body[:200])
        self.assertNotIn(b"This program cannot be run in DOS mode", body)
        self.wait_event(lambda e: e.get("reason") == "blocked-domain" and e.get("source") == L.STAFF and
                        e.get("destination") == L.SKYPE_DOWNLOAD, "blocked-domain %s" % L.SKYPE_DOWNLOAD)

    def test_firewall_show(self):
        """What an administrator reads on the gateway: the table, its
        counters (the same as nftables' own), and that it matches the policy."""
        self.assertFalse(self.lab.client("staff").run_step("udp")["reached"])
        r = self.lab.ns.run("gw", NODE, "firewall", "show", "--policy", self.policy_file, "--lan-interface",
                            L.LAN_IF, check=False, env=L.sanitizer_env())
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 0, out)
        self.assertEqual(L.sanitizer_lines(out), [], out)
        self.assertIn("table inet portcullis", out)
        self.assertIn("matches the enforced policy: yes", out)
        m = re.search(r"drop_high_ports\s+(\d+) packets", out)
        self.assertIsNotNone(m, out)
        self.assertGreater(int(m.group(1)), 0, out)
        self.assertEqual(int(m.group(1)), self.counters()["drop_high_ports"], out)


class FromController(LabCase):
    """The controller in the internet (203.0.113.10), the node enrolled with
    it; group board's Skype allow rule is the exception."""

    @classmethod
    def setUpClass(cls):
        cls.lab = L.Lab(node_path=NODE)
        try:
            cls._setup()
        except BaseException:
            cls.lab.close()
            raise

    @classmethod
    def _setup(cls):
        lab = cls.lab
        c = cls.c = lab.start_controller(CONTROLLER)
        region = c.ok("POST", "/api/v1/regions", {"name": "Lab"})["id"]
        office = cls.office = c.ok("POST", "/api/v1/offices", {"name": "HQ", "region_id": region,
                                                               "lan_prefixes": [L.LAN_NET]})["id"]
        group = c.ok("POST", "/api/v1/groups", {"name": "board", "office_id": office,
                                                "sources": [L.BOARD_NET]})["id"]
        cls.rule = c.ok("POST", "/api/v1/rules", {"scope": "group", "scope_id": group, "kind": "skype",
                                                  "action": "allow", "comment": "the board may use Skype"})["id"]
        c.ok("PUT", "/api/v1/settings/office/%d" % office, cls.firewall_settings(), {"If-Match": "*"})
        node = cls.node_id = c.ok("POST", "/api/v1/nodes", {"name": "hq-gw", "office_id": office})["id"]
        token = c.ok("POST", "/api/v1/nodes/%d/enrollment" % node, {"ttl_seconds": 600})["token"]
        cls.state = lab.tmp / "node-state"
        r = lab.ns.run("gw", NODE, "enroll", "--controller", c.hub_url, "--token", token, "--state", cls.state,
                       check=False, env=L.sanitizer_env())
        if r.returncode != 0 or L.sanitizer_lines(r.stderr.decode(errors="replace")):
            raise AssertionError("enroll failed %d:\n%s%s" % (r.returncode, r.stdout.decode(), r.stderr.decode()))
        # The controller's documents carry no ca_file: the node's probe trusts
        # the lab's CA through OpenSSL's default store.
        cls.node = lab.start_node(["--state", cls.state, "--backoff-min-ms", "100", "--backoff-max", "1"]
                                  + firewall_args(), env_extra={"SSL_CERT_FILE": str(lab.certs["ca"])})
        cls.node.wait_output("controller link up")
        cls.wait_enforced()

    @staticmethod
    def firewall_settings():
        """The white paper's firewall as the office's settings (docs/controller-policy.md)."""
        return {"open_ports": [{"port": 25, "proto": "tcp", "devices": [L.LAN_MAIL + "/32"]}],
                "block_high_ports": True, "high_port_threshold": 1024, "dns_resolvers": [],
                "web_mode": "transparent"}

    @classmethod
    def wait_enforced(cls):
        rev = cls.c.ok("GET", "/api/v1/revisions?limit=1")["items"][0]["revision"]
        L.wait_for("the node to enforce revision %d" % rev,
                   lambda: cls.c.ok("GET", "/api/v1/nodes/%d" % cls.node_id).get("enforced_version") == rev)
        return rev

    def test_1_document_has_firewall(self):
        doc = self.c.ok("GET", "/api/v1/offices/%d/document" % self.office)["document"]
        if isinstance(doc, str):
            doc = json.loads(doc)
        fw = doc.get("firewall")
        self.assertIsInstance(fw, dict, json.dumps(doc)[:2000])
        self.assertIn(L.LAN_NET, fw.get("lan", []), fw)

    def test_2_chain_from_both_groups(self):
        self.assertBlockedEverywhere("staff", L.STAFF, "defaults")
        self.assertOnlyTLS("board", L.BOARD)
        got = self.lab.smtp_greeting("mail")
        self.assertTrue(got and got.startswith("220 mail.example.test"), repr(got))
        self.assertIsNone(self.lab.smtp_greeting("staff"))

    def test_3_flip_exception_off(self):
        client = self.lab.client("board", timeout=1.0)
        r = client.run_step("tls443")
        self.assertTrue(r["reached"], r)
        attempts = []
        t0 = time.monotonic()
        self.c.ok("PATCH", "/api/v1/rules/%d" % self.rule, {"action": "block"}, {"If-Match": "*"})
        t_rest = time.monotonic() - t0
        refused = None
        while time.monotonic() - t0 < 15:
            start = time.monotonic() - t0
            r = client.run_step("tls443")
            attempts.append((round(start, 3), r["reached"]))
            if not r["reached"]:
                refused = (start, time.monotonic() - t0, r)
                break
        self.assertIsNotNone(refused, "the exception was still in force 15 s after the REST call: %r" % attempts[-5:])
        start, seen, r = refused
        print("\n  exception flipped off: REST call answered after %.0f ms; the first refused attempt of the "
              "TLS 443 step started %.0f ms after the call (refusal seen at %.0f ms; %d allowed attempt(s) before it)"
              % (t_rest * 1000, start * 1000, seen * 1000, len(attempts) - 1), file=sys.stderr)
        # Every later attempt is refused too, and the board walks no step through.
        report = client.walk()
        self.assertEqual(report["reached"], [], json.dumps(report, indent=1))
        self.node.mark()
        client.run_step("tls443")
        self.wait_event(lambda e: e.get("type") == "block" and e.get("source") == L.BOARD and
                        e.get("reason") == "blocked-domain", "blocked-domain from board")
        self.assertLess(start, ENFORCE_TARGET, "enforcement took %.3f s (target < %.1f s)" % (start, ENFORCE_TARGET))


def main():
    global NODE, CONTROLLER
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--node", default=NODE)
    ap.add_argument("--controller", default=CONTROLLER)
    ns, rest = ap.parse_known_args()
    NODE = os.path.abspath(ns.node) if ns.node else ""
    CONTROLLER = os.path.abspath(ns.controller) if ns.controller else ""
    for what, path in (("portcullis-node (--node)", NODE), ("portcullis-controller (--controller)", CONTROLLER)):
        if not path or not os.access(path, os.X_OK):
            print("test_lab: %s not found: %r" % (what, path), file=sys.stderr)
            sys.exit(2)
    if os.geteuid() != 0:
        print("test_lab: needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    for tool in ("ip", "nft", "curl", "openssl"):
        if subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).returncode != 0:
            print("test_lab: %s is not installed" % tool, file=sys.stderr)
            sys.exit(2)
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
