"""test_firewall.py - portcullis-node --firewall on a real gateway: nftables
in network namespaces this test makes and deletes (the host's own ruleset is
never touched):

  lan  192.0.2.10/24 (client), 192.0.2.25/24 (mail server), 2001:db8:1::10/64
   |   default via the gateway
  gw   192.0.2.1/24 | 198.51.100.1/24 (and 2001:db8:1::1 | 2001:db8:2::1),
       forwarding on, portcullis-node --firewall --lan-interface <gw's LAN
       veth> --transparent on :3129
   |
  inet 198.51.100.10 and 2001:db8:2::10: a TCP service on 25, 40000, 40001,
       40002 (each says "hello <port>"), and HTTP on 80 (IPv4)

The policy whitelists the mail server on 25 and the client (both its
addresses) on 40001 (a high port); everything else forwarded is dropped and
counted, and LAN web traffic goes to the node's proxy. Checked: the table
is loaded before the proxy listens (fail closed), a start whose firewall
nftables refuses is fatal with nftables' message and leaves the loaded table
alone, `firewall show` says whether the table matches the policy,
`--dry-run` prints the ruleset without loading it, forwarding over IPv4 and
IPv6 is dropped/counted/allowed as the policy says, SIGHUP applies a new
firewall, and documents from a (scripted) controller go to the firewall
first, are refused whole when it does not take them, and stats carry its
counters.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

import harness

GW_LAN, GW_INET = "192.0.2.1", "198.51.100.1"
CLIENT, MAIL = "192.0.2.10", "192.0.2.25"
SERVER = "198.51.100.10"
GW6_LAN, GW6_INET = "2001:db8:1::1", "2001:db8:2::1"
CLIENT6, SERVER6 = "2001:db8:1::10", "2001:db8:2::10"
PROXY_PORT = 3129
SERVICE_PORTS = (25, 40000, 40001, 40002)
DROP_WAIT = 1.5  # a connect whose SYN is dropped gives up after this


def policy(allow_extra=(), version=1):
    allow = [
        {"name": "mail", "devices": [MAIL + "/32"], "proto": "tcp", "ports": ["25"]},
        {"name": "app", "devices": [CLIENT, CLIENT6], "proto": "tcp", "ports": ["40001"]},
    ] + list(allow_extra)
    return {
        "schema": "portcullis.policy/1",
        "version": version,
        "proxy": {"ports": {"80": "http"}, "log_allowed": True},
        "defaults": {"use_lists": []},
        "firewall": {"lan": ["192.0.2.0/24", "2001:db8:1::/64"], "web": "transparent", "allow": allow, "dns": [],
                     "high_ports": {"block": True, "from": 1024}},
    }


class Net:
    """The three namespaces and the inet side's services."""

    def __init__(self):
        self.ns = harness.Namespaces("lan", "gw", "inet")
        self.socks = []
        try:
            t = self.ns.tag
            self.lan_if, self.gw_lan_if = "pc%sl0" % t, "pc%sg0" % t
            self.gw_inet_if, self.inet_if = "pc%sg1" % t, "pc%si0" % t
            ns = self.ns
            ns.veth("lan", self.lan_if, "gw", self.gw_lan_if)
            ns.veth("gw", self.gw_inet_if, "inet", self.inet_if)
            for a in (CLIENT, MAIL):
                ns.ip("-n", ns["lan"], "addr", "add", a + "/24", "dev", self.lan_if)
            ns.ip("-n", ns["lan"], "route", "add", "default", "via", GW_LAN)
            ns.ip("-n", ns["gw"], "addr", "add", GW_LAN + "/24", "dev", self.gw_lan_if)
            ns.ip("-n", ns["gw"], "addr", "add", GW_INET + "/24", "dev", self.gw_inet_if)
            ns.ip("-n", ns["inet"], "addr", "add", SERVER + "/24", "dev", self.inet_if)
            ns.ip("-n", ns["inet"], "route", "add", "192.0.2.0/24", "via", GW_INET)
            ns.run("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1")
            ns.run("gw", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            for role, ifname, addr in (("lan", self.lan_if, CLIENT6), ("gw", self.gw_lan_if, GW6_LAN),
                                       ("gw", self.gw_inet_if, GW6_INET), ("inet", self.inet_if, SERVER6)):
                ns.ip("-n", ns[role], "-6", "addr", "add", addr + "/64", "dev", ifname, "nodad")
            ns.ip("-n", ns["lan"], "-6", "route", "add", "default", "via", GW6_LAN)
            ns.ip("-n", ns["inet"], "-6", "route", "add", "2001:db8:1::/64", "via", GW6_INET)
            for port in SERVICE_PORTS:
                self._serve(port, lambda c, p=port: c.sendall(b"hello %d\n" % p))
                self._serve(port, lambda c, p=port: c.sendall(b"hello %d\n" % p), SERVER6)
            self._serve(80, self._http)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _http(c):
        c.settimeout(harness.IO_TIMEOUT)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                return
            buf += d
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
                  b"Connection: close\r\n\r\nfrom inet")

    def _serve(self, port, handler, addr=SERVER):
        with harness.in_netns(self.ns["inet"]):
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(16)
        self.socks.append(s)

        def loop():
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                try:
                    handler(c)
                except OSError:
                    pass
                finally:
                    c.close()

        threading.Thread(target=loop, daemon=True).start()

    def gw(self, *cmd, check=False, input_=None):
        return self.ns.run("gw", *cmd, check=check, input_=input_)

    def close(self):
        for s in self.socks:
            s.close()
        self.ns.close()


class NodeProc:
    """portcullis-node in the gw namespace; stderr kept in a file."""

    def __init__(self, tmp, net, args):
        self.stderr_file = tmp / ("node-%d.stderr" % time.monotonic_ns())
        self._fh = open(self.stderr_file, "wb")
        cmd = net.ns.cmd("gw", harness.node_path()) + list(args)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._fh, stderr=self._fh,
                                     env=harness.sanitizer_env())
        self.returncode = None

    def stderr(self):
        return self.stderr_file.read_bytes().decode(errors="replace")

    def wait_stderr(self, pattern, timeout=harness.START_TIMEOUT, after=0):
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.stderr()[after:])
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise AssertionError("node stderr never matched %r (exit %s):\n%s"
                                     % (pattern, self.proc.poll(), self.stderr()))
            time.sleep(0.02)

    def wait_exit(self, timeout=harness.START_TIMEOUT):
        self.returncode = self.proc.wait(timeout=timeout)
        self._fh.close()
        return self.returncode

    def stop(self):
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=harness.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = "killed after SIGTERM"
            self._fh.close()
        return self.returncode


class Firewall(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if shutil.which("nft") is None:
            raise unittest.SkipTest("nft (nftables) is not installed")
        cls.net = Net()
        cls.tmp = Path(tempfile.mkdtemp(prefix="pc-firewall-"))

    @classmethod
    def tearDownClass(cls):
        cls.net.close()
        if not harness.KEEP:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.nodes = []
        self.dir = Path(tempfile.mkdtemp(prefix=self._testMethodName[:30] + "-", dir=self.tmp))
        self.policy_file = self.dir / "policy.json"
        self.write_policy(policy())
        self.net.gw("nft", "delete", "table", "inet", "portcullis")

    def tearDown(self):
        problems = []
        for n in self.nodes:
            running = n.returncode is None
            rc = n.stop()
            err = n.stderr()
            if harness.sanitizer_lines(err):
                problems.append("sanitizer output:\n" + err)
            elif running and rc != 0:
                problems.append("exit status %s after SIGTERM (want 0):\n%s" % (rc, err[-3000:]))
        self.net.gw("nft", "delete", "table", "inet", "portcullis")
        if problems:
            self.fail("\n".join(problems))

    # helpers

    def write_policy(self, doc):
        tmp = self.policy_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.policy_file)

    def node_args(self, iface=None):
        return ["--firewall", "--lan-interface", iface or self.net.gw_lan_if,
                "--listen", "0.0.0.0:%d" % PROXY_PORT, "--transparent",
                "--policy", str(self.policy_file), "--state", str(self.dir / "state"),
                "--events", str(self.dir / "events.jsonl"), "--threads", "1"]

    def start_node(self, iface=None):
        n = NodeProc(self.dir, self.net, self.node_args(iface))
        self.nodes.append(n)
        return n

    def show(self, *extra, state=None):
        r = self.net.gw(harness.node_path(), "firewall", "show", "--state", str(state or self.dir / "state"),
                        "--policy", str(self.policy_file), *extra)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def counters(self):
        """{"drop_default_packets": n, "drop_default_bytes": n, ...} from
        `firewall show`."""
        rc, out, err = self.show()
        c = {}
        for m in re.finditer(r"^\s+(drop_\w+)\s+(\d+) packets\s+(\d+) bytes$", out, re.M):
            c[m.group(1) + "_packets"], c[m.group(1) + "_bytes"] = int(m.group(2)), int(m.group(3))
        return c

    def connect(self, port, source=CLIENT, timeout=DROP_WAIT, server=SERVER):
        """What the lan side gets from server:port: the greeting, or None
        when the connection is not made (dropped)."""
        with harness.in_netns(self.net.ns["lan"]):
            s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET)
        try:
            s.settimeout(timeout)
            s.bind((source, 0))
            s.connect((server, port))
        except (socket.timeout, TimeoutError):
            s.close()
            return None
        except BaseException:
            s.close()
            raise
        try:
            s.settimeout(harness.IO_TIMEOUT)
            return s.recv(64)
        finally:
            s.close()

    # tests

    def test_fail_closed_start_and_show(self):
        n = self.start_node()
        n.wait_stderr(r"listening on 0\.0\.0\.0:%d" % PROXY_PORT)
        err = n.stderr()
        loaded = err.find("firewall loaded (table inet portcullis) from policy version 1")
        self.assertGreaterEqual(loaded, 0, err)
        self.assertLess(loaded, err.find("listening on"), "the firewall must be in place before the proxy listens:\n" + err)

        rc, out, serr = self.show()
        self.assertEqual(rc, 0, out + serr)
        self.assertIn("table inet portcullis {", out)
        self.assertRegex(out, r"\n  drop_high_ports +0 packets +0 bytes\n")
        self.assertIn("enforced policy: version 1 from %s" % self.policy_file, out)
        self.assertTrue(out.rstrip().endswith("matches the enforced policy: yes"), out)

        # Another policy: the same table does not match it.
        other = self.dir / "other.json"
        other.write_text(json.dumps(policy([{"devices": [CLIENT], "proto": "udp", "ports": ["5000"]}])))
        r = self.net.gw(harness.node_path(), "firewall", "show", "--state", str(self.dir / "state"),
                        "--policy", str(other))
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"matches the enforced policy: no", r.stdout)

        # A hand edit of the table is seen too.
        self.net.gw("nft", "add", "rule", "inet", "portcullis", "forward", "tcp", "dport", "22", "accept",
                    check=True)
        rc, out, _ = self.show()
        self.assertEqual(rc, 1)
        self.assertIn("matches the enforced policy: no", out)

    def test_refused_firewall_is_fatal_and_keeps_the_table(self):
        first = self.start_node()
        first.wait_stderr(r"listening on")
        # A LAN interface name longer than the kernel's 15 bytes: nftables
        # refuses the ruleset; the node must not start its proxy.
        bad = self.start_node(iface="lan-interface-too-long")
        self.assertEqual(bad.wait_exit(), 1)
        err = bad.stderr()
        self.assertRegex(err, r"the firewall of .* does not load: line \d+:\d+-\d+: Error: String exceeds "
                              r"maximum length of 16 \(at: \"lan-interface-too-long\"\)")
        self.assertNotIn("listening on", err)
        rc, out, _ = self.show()
        self.assertEqual(rc, 0, out)
        self.assertIn("matches the enforced policy: yes", out)

    def test_no_proxy_without_firewall(self):
        # Nothing loaded and the firewall refused: nothing listens either.
        bad = self.start_node(iface="lan-interface-too-long")
        self.assertEqual(bad.wait_exit(), 1)
        r = self.net.gw("nft", "list", "tables")
        self.assertNotIn(b"portcullis", r.stdout)
        with harness.in_netns(self.net.ns["gw"]):
            s = socket.socket()
        with s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", PROXY_PORT)), 0)

    def test_dry_run_prints_and_loads_nothing(self):
        r = self.net.gw(harness.node_path(), *self.node_args(), "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        text = r.stdout.decode()
        self.assertTrue(text.startswith("# portcullis-node firewall"), text[:200])
        self.assertIn("table inet portcullis\ndelete table inet portcullis\ntable inet portcullis {", text)
        self.assertIn('elements = { "%s" }' % self.net.gw_lan_if, text)
        self.assertIn("192.0.2.25/32 . tcp . 25", text)
        self.assertIn("redirect to :%d" % PROXY_PORT, text)
        self.assertNotIn(b"portcullis", self.net.gw("nft", "list", "tables").stdout)
        # What it prints is what nftables accepts.
        c = self.net.gw("nft", "-c", "-f", "-", input_=r.stdout)
        self.assertEqual(c.returncode, 0, c.stderr)

    def test_forwarding_dropped_counted_allowed(self):
        n = self.start_node()
        n.wait_stderr(r"listening on")
        before = self.counters()
        self.assertEqual(before.get("drop_high_ports_packets"), 0, before)

        # A high port not whitelisted: dropped and counted.
        self.assertIsNone(self.connect(40000))
        after = self.counters()
        self.assertGreaterEqual(after["drop_high_ports_packets"], 1, after)
        self.assertGreater(after["drop_high_ports_bytes"], 0, after)
        # The whitelisted high port passes, from the whitelisted device only.
        self.assertEqual(self.connect(40001), b"hello 40001\n")
        self.assertIsNone(self.connect(40001, source=MAIL))
        # The mail server alone on 25; the client's attempt is a default drop.
        self.assertEqual(self.connect(25, source=MAIL), b"hello 25\n")
        self.assertIsNone(self.connect(25))
        self.assertGreaterEqual(self.counters()["drop_default_packets"], 1)
        # Nothing comes in from outside.
        with harness.in_netns(self.net.ns["lan"]):
            srv = socket.socket()
        with srv:
            srv.bind((CLIENT, 2222))
            srv.listen(1)
            try:
                s = harness.netns_connect(self.net.ns["inet"], (CLIENT, 2222), timeout=DROP_WAIT)
                s.close()
                self.fail("a connection from outside reached the LAN")
            except (socket.timeout, TimeoutError):
                pass
        self.assertGreaterEqual(self.counters()["drop_inbound_packets"], 1)

        # LAN web traffic goes to the node's proxy (its own upstream
        # connection is never filtered), and the proxy logs it.
        s = harness.netns_connect(self.net.ns["lan"], (SERVER, 80), CLIENT)
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % SERVER.encode())
            reply, _ = harness.recv_until_closed(s)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertTrue(reply.endswith(b"from inet"), reply[-200:])
        deadline = time.monotonic() + harness.EVENT_TIMEOUT
        while time.monotonic() < deadline:
            events = (self.dir / "events.jsonl").read_text() if (self.dir / "events.jsonl").exists() else ""
            if '"allow"' in events:
                break
            time.sleep(0.05)
        self.assertIn('"allow"', events, "the proxy saw no redirected connection")

        # SIGUSR1 prints the counters too.
        mark = len(n.stderr())
        n.proc.send_signal(signal.SIGUSR1)
        n.wait_stderr(r"firewall drop_inbound_packets \d+", after=mark)

    def test_ipv6_forwarding(self):
        n = self.start_node()
        n.wait_stderr(r"listening on")
        self.assertEqual(self.connect(40001, source=CLIENT6, server=SERVER6), b"hello 40001\n")
        before = self.counters()["drop_high_ports_packets"]
        self.assertIsNone(self.connect(40000, source=CLIENT6, server=SERVER6))
        self.assertGreater(self.counters()["drop_high_ports_packets"], before)
        # The whitelist entry is per address: the IPv4 client is not the IPv6 one.
        self.assertEqual(self.connect(40001), b"hello 40001\n")
        self.assertIsNone(self.connect(25, source=CLIENT6, server=SERVER6))

    def test_sighup_applies_a_new_firewall(self):
        n = self.start_node()
        n.wait_stderr(r"listening on")
        self.assertIsNone(self.connect(40002))
        self.write_policy(policy([{"name": "new", "devices": [CLIENT], "proto": "tcp", "ports": ["40002"]}],
                                 version=2))
        mark = len(n.stderr())
        n.proc.send_signal(signal.SIGHUP)
        n.wait_stderr(r"policy version 2 applied \(firewall and proxy\)", after=mark)
        self.assertEqual(self.connect(40002), b"hello 40002\n")
        rc, out, _ = self.show()
        self.assertEqual(rc, 0, out)
        self.assertIn("version 2", out)

    def test_controller_documents_firewall_first(self):
        """Documents from a controller (test_link's scripted one, listening
        inside gw): the firewall is applied before the proxy's policy; one
        whose firewall does not load is acked "failed" with the reason and
        changes neither; stats carry the firewall's counters."""
        import test_link

        with harness.in_netns(self.net.ns["gw"]):
            hub = test_link.FakeHub(self.dir / "hub")
        try:
            state = self.dir / "agent-state"
            hub.state_dir(state)

            def doc(version, web, allow_port):
                d = policy([{"name": "extra", "devices": [CLIENT], "proto": "tcp", "ports": [str(allow_port)]}],
                           version=version)
                d["firewall"]["web"] = web
                if web == "proxy":
                    d["firewall"]["web_devices"] = ["192.0.2.8"]
                return json.dumps(d, separators=(",", ":"))

            def push(s, text):
                test_link.FakeHub.send(s, {"type": "policy", "v": 1, "version": json.loads(text)["version"],
                                           "sha256": hashlib.sha256(text.encode()).hexdigest(),
                                           "document": text})
                return hub.recv_type(s, "ack")

            # Not transparent: the proxy-mode document of --policy loads.
            self.write_policy(json.loads(doc(1, "proxy", 40000)))
            n = NodeProc(self.dir, self.net, [
                "--firewall", "--lan-interface", self.net.gw_lan_if, "--listen", "127.0.0.1:0",
                "--policy", str(self.policy_file), "--state", str(state), "--events", "none",
                "--threads", "1", "--safe-apply", "never", "--backoff-min-ms", "100", "--backoff-max", "1"])
            self.nodes.append(n)
            n.wait_stderr(r"listening on")
            s, hello = hub.accept()
            test_link.FakeHub.send(s, {"type": "events_ack", "v": 1, "seq": 0, "credit": 1000})

            two = doc(2, "proxy", 40002)
            ack = push(s, two)
            self.assertEqual((ack["status"], ack["version"]), ("applied", 2), ack)
            self.assertEqual(self.connect(40002), b"hello 40002\n")
            rc, out, _ = self.show(state=state)
            self.assertEqual(rc, 0, out)
            self.assertIn("version 2 from %s/policy.json (cached from the controller)" % state, out)

            # Transparent mode needs a transparent listener this node does not
            # have: the firewall refuses the document before the proxy sees it.
            ack = push(s, doc(3, "transparent", 40000))
            self.assertEqual((ack["status"], ack["version"]), ("failed", 3), ack)
            self.assertIn("$.firewall.web: 'transparent' redirects LAN web traffic", ack["error"])
            self.assertEqual(self.connect(40002), b"hello 40002\n")
            self.assertEqual((state / "policy.json").read_text(), two)
            rc, out, _ = self.show(state=state)
            self.assertEqual(rc, 0, out)
            self.assertIn("version 2 from", out)

            # Stats answer a ping; the firewall's counters are in them.
            self.assertIsNone(self.connect(40000))
            test_link.FakeHub.send(s, {"type": "ping", "v": 1, "time": int(time.time())})
            stats = hub.recv_type(s, "stats")
            fw = stats["counters"]["firewall"]
            self.assertGreaterEqual(fw["drop_high_ports_packets"], 1, stats)
            self.assertIn("drop_inbound_bytes", fw)
            s.close()
        finally:
            hub.ls.close()


if __name__ == "__main__":
    harness.main()
