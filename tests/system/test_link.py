"""test_link.py - the controller <-> node link end to end (docs/link.md), with
the real portcullis-controller and portcullis-node on loopback: enrollment and
its refusals, mutual TLS, policy push and acks, events from the node's spool
to the controller's table, kill -9 of either side, an outage with 10,000
events, staged rollout, bad input from a peer, and (against a fake controller
written here) a document the node must refuse and the safe-apply revert.

Stdlib + curl + openssl. Run:
  python3 test_link.py --controller PATH --node PATH [unittest args]
Every process's stderr is checked for sanitizer lines when it stops.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

CONTROLLER = os.environ.get("PORTCULLIS_CONTROLLER", "")
NODE = os.environ.get("PORTCULLIS_NODE", "")
KEEP = os.environ.get("PORTCULLIS_KEEP", "") not in ("", "0")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")
START_TIMEOUT = 30.0
CONVERGE_TIMEOUT = 30.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, fn, timeout=CONVERGE_TIMEOUT, interval=0.05):
    """Polls fn until it returns something true; fails naming what."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s (last: %r)" % (timeout, what, last))


def check_stderr(name, text):
    for mark in SANITIZER_MARKS:
        if mark in text:
            raise AssertionError("sanitizer report in %s stderr:\n%s" % (name, text))


# --- the controller ------------------------------------------------------------


class Controller:
    """portcullis-controller with fixed ports, so a restart keeps its address."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.db = self.tmp / "controller.db"
        self.port = free_port()
        self.hub_port = free_port()
        self.token = "pc-link-test-admin-token-" + "x" * 16
        self.proc = None
        self.runs = 0

    def start(self):
        self.runs += 1
        self.out = self.tmp / ("controller.out.%d" % self.runs)
        self.err = self.tmp / ("controller.err.%d" % self.runs)
        env = dict(os.environ, PORTCULLIS_ADMIN_TOKEN=self.token)
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen(
                [CONTROLLER, "--db", str(self.db), "--listen", "127.0.0.1:%d" % self.port,
                 "--hub-listen", "127.0.0.1:%d" % self.hub_port],
                stdout=o, stderr=e, env=env, cwd=self.tmp)
        wait_for("the controller to listen",
                 lambda: self._started(), timeout=START_TIMEOUT)
        self.ctx = ssl.create_default_context(cafile=str(self.db) + ".cert.pem")
        return self.out.read_text()

    def _started(self):
        if self.proc.poll() is not None:
            raise AssertionError("controller exited %d:\n%s" % (self.proc.returncode, self.err.read_text()))
        out = self.out.read_text()
        return "node hub listening on" in out and re.search(r"listening on \S+ \(port \d+\)", out)

    def stop(self):
        if not self.proc:
            return ""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("controller did not stop on SIGTERM:\n" + self.err.read_text())
        self.proc = None
        err = self.err.read_text()
        check_stderr("controller", err)
        if rc != 0:
            raise AssertionError("controller exited %d on SIGTERM:\n%s" % (rc, err))
        return err

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        check_stderr("controller", self.err.read_text())
        self.proc = None

    def request(self, method, path, body=None, timeout=15):
        h = {"Authorization": "Bearer " + self.token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=timeout)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            raw = r.read()
        finally:
            c.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return r.status, parsed

    def ok(self, method, path, body=None, want=(200, 201, 204)):
        st, b = self.request(method, path, body)
        if st not in want:
            raise AssertionError("%s %s: %d %r" % (method, path, st, b))
        return b

    def revision(self):
        return self.ok("GET", "/api/v1/revisions?limit=1")["items"][0]["revision"]

    def node(self, node_id):
        return self.ok("GET", "/api/v1/nodes/%d" % node_id)

    def hub_stats(self):
        return self.ok("GET", "/api/v1/hub")

    def db_rows(self, sql, *args):
        con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    @property
    def hub_url(self):
        return "https://127.0.0.1:%d" % self.hub_port


# --- the node ------------------------------------------------------------------


class Node:
    """portcullis-node with a state directory of its own."""

    def __init__(self, tmp, name, extra=None):
        self.tmp = Path(tmp)
        self.name = name
        self.state = self.tmp / ("state-" + name)
        self.events_file = self.tmp / ("events-" + name + ".jsonl")
        self.extra = list(extra or [])
        self.proc = None
        self.runs = 0
        self.port = None

    def enroll(self, hub_url, token, expect_ok=True):
        r = subprocess.run([NODE, "enroll", "--controller", hub_url, "--token", token,
                            "--state", str(self.state)], capture_output=True, text=True, timeout=60)
        check_stderr("node enroll", r.stderr)
        if expect_ok and r.returncode != 0:
            raise AssertionError("enroll failed %d:\n%s%s" % (r.returncode, r.stdout, r.stderr))
        return r

    def start(self, wait_link=True):
        self.runs += 1
        self.err = self.tmp / ("node-%s.err.%d" % (self.name, self.runs))
        with open(self.err, "wb") as e:
            self.proc = subprocess.Popen(
                [NODE, "--state", str(self.state), "--listen", "127.0.0.1:0", "--events",
                 str(self.events_file), "--threads", "1", "--backoff-min-ms", "100",
                 "--backoff-max", "1"] + self.extra,
                stdout=subprocess.DEVNULL, stderr=e)
        m = wait_for("the node to listen", lambda: self._listening(), timeout=START_TIMEOUT)
        self.port = int(m.group(2))
        if wait_link:
            self.wait_log("controller link up")
        return self.stderr()

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("node exited %d:\n%s" % (self.proc.returncode, self.stderr()))
        return re.search(r"listening on ([0-9.]+):(\d+)", self.stderr())

    def stderr(self):
        return self.err.read_text(errors="replace")

    def wait_log(self, text, count=1, timeout=CONVERGE_TIMEOUT):
        return wait_for("node %s to log %r x%d" % (self.name, text, count),
                        lambda: self.stderr().count(text) >= count, timeout=timeout)

    def stop(self):
        if not self.proc:
            return ""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("node did not stop on SIGTERM:\n" + self.stderr())
        self.proc = None
        err = self.stderr()
        check_stderr("node " + self.name, err)
        if rc != 0:
            raise AssertionError("node exited %d on SIGTERM:\n%s" % (rc, err))
        return err

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        check_stderr("node " + self.name, self.stderr())
        self.proc = None

    def produced(self):
        """Events the node wrote to its log (each also went to its spool)."""
        if not self.events_file.exists():
            return 0
        return sum(1 for line in self.events_file.read_text().splitlines() if line.strip())

    def request(self, host, path="/"):
        """One HTTP request through the explicit proxy; returns the status."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        try:
            s.sendall(("GET http://%s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                       % (host, path, host)).encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        m = re.match(rb"HTTP/1\.1 (\d{3})", data)
        return int(m.group(1)) if m else 0

    def make_events(self, n, host="www.skype.com", threads=8):
        """n blocked requests, each one event."""
        per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
        errors = []

        def work(k):
            for _ in range(k):
                st = self.request(host)
                if st != 403:
                    errors.append(st)
        ts = [threading.Thread(target=work, args=(k,)) for k in per]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise AssertionError("%d requests were not blocked: %r" % (len(errors), errors[:5]))


# --- test base -------------------------------------------------------------------


class LinkTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pc-link-")
        self.c = Controller(self.tmp)
        self.c.start()
        self.nodes = []
        self.region = self.c.ok("POST", "/api/v1/regions", {"name": "EMEA"})["id"]
        self.offices = {}

    def tearDown(self):
        failures = []
        for n in self.nodes:
            try:
                n.stop()
            except AssertionError as e:
                failures.append(str(e))
        try:
            self.c.stop()
        except AssertionError as e:
            failures.append(str(e))
        if not KEEP:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if failures:
            raise AssertionError("\n".join(failures))

    def office(self, name, region=None):
        if name not in self.offices:
            self.offices[name] = self.c.ok("POST", "/api/v1/offices",
                                           {"name": name, "region_id": region or self.region})["id"]
        return self.offices[name]

    def token_for(self, node_id, ttl=3600):
        body = self.c.ok("POST", "/api/v1/nodes/%d/enrollment" % node_id, {"ttl_seconds": ttl})
        self.assertTrue(body["token"].startswith("pce1."), body)
        self.assertIn("portcullis-node enroll", body["command"])
        return body["token"]

    def new_node(self, name, office="Berlin", start=True, extra=None):
        """Creates the node in the controller, enrolls it, starts it."""
        node_id = self.c.ok("POST", "/api/v1/nodes", {"name": name, "office_id": self.office(office)})["id"]
        n = Node(self.tmp, name, extra)
        n.id = node_id
        n.enroll(self.c.hub_url, self.token_for(node_id))
        self.nodes.append(n)
        if start:
            n.start()
        return n

    def block_domain(self, domain):
        """A global rule that changes every office's document."""
        self.c.ok("POST", "/api/v1/rules", {"scope": "global", "kind": "domain", "value": domain,
                                            "action": "block"})
        return self.c.revision()

    def wait_enforced(self, node, version, timeout=CONVERGE_TIMEOUT):
        return wait_for("node %s to enforce version %d" % (node.name, version),
                        lambda: self.c.node(node.id).get("enforced_version") == version and
                        self.c.node(node.id), timeout=timeout)

    def stored(self, node):
        return self.c.db_rows("SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) "
                              "FROM events WHERE node = ?", node.name)[0]

    def wait_delivered(self, node, timeout=60):
        """Every event the node logged is in the controller, once."""
        def done():
            n, distinct, top = self.stored(node)
            produced = node.produced()
            return produced > 0 and n == produced and (n, distinct, top)
        got = wait_for("node %s's events to be stored" % node.name, done, timeout=timeout)
        n, distinct, top = got
        self.assertEqual(n, distinct, "an event was stored twice")
        self.assertEqual(top, n, "sequence numbers have a gap")
        return n


# --- enrollment -------------------------------------------------------------------


class TestEnrollment(LinkTest):
    def test_enroll_connect_push_ack(self):
        n = self.new_node("berlin-gw1")
        st = n.state
        self.assertEqual(oct((st / "node.key").stat().st_mode & 0o777), "0o600")
        for f in ("node.crt", "ca.crt", "link.json"):
            self.assertTrue((st / f).exists(), f)
        self.assertEqual(json.loads((st / "link.json").read_text())["node"], "berlin-gw1")
        rev = self.c.revision()
        info = self.wait_enforced(n, rev)
        self.assertEqual(info["enrollment"], "enrolled")
        self.assertTrue(info["connected"])
        self.assertIsNone(info["pending_version"])
        self.assertIsNone(info["last_error"])
        self.assertEqual(len(info["cert_fingerprint"]), 64)
        # The document it enforces is the controller's, cached on disk.
        doc = json.loads((st / "policy.json").read_text())
        self.assertEqual(doc["version"], rev)

        # A change is pushed, applied, acked -- and enforced.
        self.assertNotEqual(n.request("blocked-by-rest.example"), 403)
        t0 = time.time()
        rev2 = self.block_domain("blocked-by-rest.example")
        self.wait_enforced(n, rev2)
        took = time.time() - t0
        self.assertEqual(n.request("blocked-by-rest.example"), 403)
        self.assertLess(took, 5.0, "REST change to ack took %.2f s" % took)
        self.assertIn("policy version %d applied" % rev2, n.stderr())

        # The block is an event in the controller, with the node's name.
        def event():
            st_, body = self.c.request("GET", "/api/v1/events?node=berlin-gw1")
            return st_ == 200 and [e for e in body["events"] if e["reason"] == "blocked-domain"
                                   and e["destination"] == "blocked-by-rest.example"]
        ev = wait_for("the block event at the controller", event)[0]
        self.assertEqual(ev["node"], "berlin-gw1")
        self.assertEqual(ev["policy_version"], rev2)

        # Counters reach the controller with the answer to the ping that
        # follows every ack: blocks by reason, bytes, the spool, the link.
        rev3 = self.block_domain("another.example")
        self.wait_enforced(n, rev3)

        def stats():
            st_ = self.c.node(n.id).get("stats") or {}
            return st_.get("blocks_by_reason", {}).get("blocked-domain", 0) >= 1 and st_
        st_ = wait_for("the node's counters at the controller", stats)
        self.assertGreaterEqual(st_["blocked"], 1)
        self.assertEqual(st_["agent"]["connected"], 1)
        self.assertIn("spool_pending", st_)

    def test_refused_tokens(self):
        node_id = self.c.ok("POST", "/api/v1/nodes", {"name": "gw-t", "office_id": self.office("Paris")})["id"]
        n = Node(self.tmp, "gw-t")
        tok = self.token_for(node_id)
        _, secret, fp = tok.split(".")

        # Unknown secret, this CA.
        r = n.enroll(self.c.hub_url, "pce1.%s.%s" % ("0" * 64, fp), expect_ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("token-unknown", r.stderr)
        self.assertFalse((n.state / "node.key").exists(), "a refused enrollment left a key")

        # Another CA's fingerprint: the node refuses the controller itself.
        r = n.enroll(self.c.hub_url, "pce1.%s.%s" % (secret, "ab" * 32), expect_ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("fingerprint", r.stderr)

        # Malformed token: a usage error.
        r = n.enroll(self.c.hub_url, "not-a-token", expect_ok=False)
        self.assertEqual(r.returncode, 2, r.stderr)

        # Used once, then refused.
        n.enroll(self.c.hub_url, tok)
        n2 = Node(self.tmp, "gw-t2")
        r = n2.enroll(self.c.hub_url, tok, expect_ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("token-used", r.stderr)

        # Expired by the operator.
        tok2 = self.token_for(node_id)
        self.c.ok("DELETE", "/api/v1/nodes/%d/enrollment" % node_id)
        r = n2.enroll(self.c.hub_url, tok2, expect_ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("token-expired", r.stderr)
        tokens = self.c.ok("GET", "/api/v1/nodes/%d/enrollment" % node_id)
        self.assertEqual(sorted(t["state"] for t in tokens["items"]), ["expired", "used"])
        self.assertNotIn("hash", json.dumps(tokens))

        # Bad bodies at the enrollment endpoint itself.
        for body, code in ((b"{", 400), (b'{"token": 1, "csr": "x"}', 400),
                           (json.dumps({"token": tok, "csr": "x", "extra": 1}).encode(), 400)):
            st, out = self.post_enroll(body)
            self.assertEqual(st, code, out)
            self.assertIn("error", json.loads(out))

    def post_enroll(self, body):
        ctx = ssl.create_default_context(cafile=str(self.c.db) + ".ca.pem")
        c = http.client.HTTPSConnection("127.0.0.1", self.c.hub_port, context=ctx, timeout=10)
        try:
            c.request("POST", "/enroll", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def test_foreign_ca_revoked_and_replaced_certificates(self):
        good = self.new_node("gw-good")
        self.wait_enforced(good, self.c.revision())

        # A certificate from another CA with the same node name.
        other = Path(self.tmp) / "other-ca"
        other.mkdir()
        sh = lambda *a: subprocess.run(["openssl"] + list(a), cwd=other, check=True, capture_output=True)
        sh("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-subj", "/CN=Evil CA", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem")
        sh("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-subj", "/CN=gw-good", "-keyout", "node.key", "-out", "node.csr")
        sh("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-days", "2", "-out", "node.crt")
        fake = Node(self.tmp, "gw-fake")
        fake.state.mkdir(mode=0o700)
        for f in ("node.key", "node.crt"):
            shutil.copy(other / f, fake.state / f)
        shutil.copy(good.state / "ca.crt", fake.state / "ca.crt")
        shutil.copy(good.state / "link.json", fake.state / "link.json")
        self.nodes.append(fake)
        refused0 = self.c.hub_stats()["refused"]
        fake.start(wait_link=False)
        wait_for("the hub to refuse the foreign certificate",
                 lambda: self.c.hub_stats()["refused"] > refused0)
        fake.wait_log("link down")
        self.assertNotIn("controller link up", fake.stderr())
        fake.stop()
        # The real node was not displaced.
        self.assertTrue(self.c.node(good.id)["connected"])

        # Revoked: its live connection closes at once, and it stays out.
        old_state = Path(self.tmp) / "old-state"
        shutil.copytree(good.state, old_state)
        t0 = time.time()
        self.c.ok("POST", "/api/v1/nodes/%d/revoke" % good.id)
        wait_for("the revoked node to be disconnected", lambda: not self.c.node(good.id)["connected"],
                 timeout=5)
        self.assertLess(time.time() - t0, 5)
        refused1 = self.c.hub_stats()["refused"]
        wait_for("the revoked node's reconnects to be refused",
                 lambda: self.c.hub_stats()["refused"] > refused1)
        self.assertEqual(self.c.node(good.id)["enrollment"], "revoked")

        # Re-enrollment replaces the certificate; the old one is refused.
        good.stop()
        good.enroll(self.c.hub_url, self.token_for(good.id))
        good.start()
        self.assertTrue(self.c.node(good.id)["connected"])
        stale = Node(self.tmp, "gw-stale")
        stale.state = old_state
        self.nodes.append(stale)
        refused2 = self.c.hub_stats()["refused"]
        stale.start(wait_link=False)
        wait_for("the replaced certificate to be refused", lambda: self.c.hub_stats()["refused"] > refused2)
        stale.stop()
        self.assertTrue(self.c.node(good.id)["connected"])


class TestLiveTail(LinkTest):
    def test_stream_shows_new_events_with_filters(self):
        n = self.new_node("gw-live")
        self.wait_enforced(n, self.c.revision())
        n.make_events(3)
        wait_for("the first events to be stored", lambda: self.stored(n)[0] >= 3)
        # Two streams: one for this node, one for a node that sends nothing.
        procs = []
        for node in ("gw-live", "gw-nobody"):
            procs.append(subprocess.Popen(
                ["curl", "-sN", "--max-time", "8", "--cacert", str(self.c.db) + ".cert.pem",
                 "-H", "Authorization: Bearer " + self.c.token,
                 "https://127.0.0.1:%d/api/v1/events/stream?node=%s&type=block" % (self.c.port, node)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(1.0)
        n.request("live-tail.skype.com")
        outs = [p.communicate(timeout=20)[0].decode() for p in procs]
        # Only what arrived after the stream opened, as SSE messages with ids.
        msgs = [json.loads(line[6:]) for line in outs[0].splitlines() if line.startswith("data: ")]
        self.assertEqual([m["destination"] for m in msgs], ["live-tail.skype.com"], outs[0])
        self.assertRegex(outs[0], r"(?m)^id: \d+$")
        self.assertRegex(outs[0], r"(?m)^event: event$")
        self.assertNotIn("data: ", outs[1])
        # Last-Event-ID resumes after the given event.
        first_id = int(re.search(r"(?m)^id: (\d+)$", outs[0]).group(1))
        r = subprocess.run(["curl", "-sN", "--max-time", "3", "--cacert", str(self.c.db) + ".cert.pem",
                            "-H", "Authorization: Bearer " + self.c.token, "-H", "Last-Event-ID: 1",
                            "https://127.0.0.1:%d/api/v1/events/stream?node=gw-live" % self.c.port],
                           capture_output=True, timeout=20)
        ids = [int(x) for x in re.findall(r"(?m)^id: (\d+)$", r.stdout.decode())]
        self.assertEqual(ids[0], 2, r.stdout[:300])
        self.assertIn(first_id, ids)
        # Bad filters are refused like the events query's.
        st, body = self.c.request("GET", "/api/v1/events/stream?type=sometimes")
        self.assertEqual(st, 422, body)


# --- failures ----------------------------------------------------------------------


class TestFailures(LinkTest):
    def test_kill9_controller_during_push_and_events(self):
        a = self.new_node("gw-a", "Berlin")
        b = self.new_node("gw-b", "Paris")
        for n in (a, b):
            self.wait_enforced(n, self.c.revision())
        stop = threading.Event()

        def traffic(n):
            while not stop.is_set():
                n.make_events(50, threads=2)
        ts = [threading.Thread(target=traffic, args=(n,)) for n in (a, b)]
        for t in ts:
            t.start()
        try:
            for i in range(3):
                time.sleep(0.5)
                # A change, and the controller killed while it pushes.
                self.block_domain("kill%d.example" % i)
                time.sleep(0.02 * i)
                self.c.kill9()
                time.sleep(0.3)
                self.c.start()
        finally:
            stop.set()
            for t in ts:
                t.join()
        rev = self.c.revision()
        for n in (a, b):
            self.wait_enforced(n, rev)
            self.assertEqual(n.request("kill2.example"), 403)
            self.wait_delivered(n)

    def test_kill9_node_then_offline_start(self):
        n = self.new_node("gw-k")
        rev = self.block_domain("only-from-controller.example")
        self.wait_enforced(n, rev)
        n.kill9()
        self.c.stop()
        # Offline: the cached policy is enforced before any connection.
        n.start(wait_link=False)
        self.assertIn("policy version %d" % rev, n.stderr())
        self.assertEqual(n.request("only-from-controller.example"), 403)
        n.make_events(200)
        self.assertNotIn("controller link up", n.stderr())
        self.c.start()
        n.wait_log("controller link up")
        self.wait_delivered(n)

    def test_event_without_a_port_does_not_hold_back_the_rest(self):
        n = self.new_node("gw-junk")
        self.wait_enforced(n, self.c.revision())
        # Junk on the proxy port: an event before any destination is known.
        s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        s.sendall(b"HELLO THERE\r\n\r\n")
        s.recv(4096)
        s.close()
        n.make_events(20)
        self.wait_delivered(n)
        rows = self.c.db_rows("SELECT reason, port FROM events WHERE node = 'gw-junk' AND port IS NULL")
        self.assertTrue(rows and rows[0][0].startswith("http-"), rows)
        self.assertEqual(self.c.hub_stats()["bad_messages"], 0)

    def test_second_stop_signal_while_stopping(self):
        n = self.new_node("gw-twice")
        self.wait_enforced(n, self.c.revision())
        # A terminal's Ctrl-C, then a service manager's SIGTERMs, again and
        # again until the node is gone: none of them may kill it.
        n.proc.send_signal(signal.SIGINT)
        sent = 0
        while n.proc.poll() is None and sent < 20000:
            try:
                n.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                break
            sent += 1
            time.sleep(0.0005)
        rc = n.proc.wait(timeout=20)
        n.proc = None
        check_stderr("node", n.stderr())
        self.assertEqual(rc, 0, n.stderr())

    def test_offline_node_shows_pending(self):
        n = self.new_node("gw-away")
        base = self.c.revision()
        self.wait_enforced(n, base)
        n.stop()
        wait_for("the node to be seen disconnected", lambda: not self.c.node(n.id)["connected"])
        rev = self.block_domain("while-away.example")
        info = wait_for("the missed push to show as pending",
                        lambda: self.c.node(n.id)["pending_version"] == rev and self.c.node(n.id))
        self.assertEqual(info["enforced_version"], base)
        n.start()
        info = self.wait_enforced(n, rev)
        self.assertIsNone(info["pending_version"])

    def test_outage_with_10000_events(self):
        n = self.new_node("gw-o")
        self.wait_enforced(n, self.c.revision())
        self.c.stop()
        n.make_events(10000, threads=16)
        self.assertGreaterEqual(n.produced(), 10000)
        t0 = time.time()
        self.c.start()
        total = self.wait_delivered(n, timeout=120)
        self.assertGreaterEqual(total, 10000)
        print("\n  10,000+ events delivered %.1f s after the controller came back" % (time.time() - t0),
              file=sys.stderr)
        # The node's spool is empty once everything is acked.
        wait_for("the spool to drain", lambda: self.c.node(n.id)["stats"] and
                 self.c.node(n.id)["stats"].get("spool_pending", 0) == 0, timeout=60)


# --- staged rollout ------------------------------------------------------------------


class TestRollout(LinkTest):
    def test_canary_then_promote(self):
        a = self.new_node("gw-canary", "Berlin")
        b = self.new_node("gw-rest", "Paris")
        base = self.c.revision()
        for n in (a, b):
            self.wait_enforced(n, base)
        self.c.ok("PUT", "/api/v1/rollout", {"mode": "manual"})
        rev = self.block_domain("staged.example")
        time.sleep(1.0)
        self.assertEqual(self.c.node(a.id)["enforced_version"], base, "held revision was pushed")
        self.c.ok("POST", "/api/v1/rollout/canary", {"revision": rev, "offices": [self.office("Berlin")]})
        self.wait_enforced(a, rev)
        time.sleep(1.0)
        self.assertEqual(self.c.node(b.id)["enforced_version"], base)
        self.assertEqual(a.request("staged.example"), 403)
        self.assertNotEqual(b.request("staged.example"), 403)
        self.c.ok("POST", "/api/v1/rollout/promote")
        self.wait_enforced(b, rev)
        self.assertEqual(b.request("staged.example"), 403)
        ro = self.c.ok("GET", "/api/v1/rollout")
        self.assertEqual((ro["mode"], ro["released"], ro["canary"]), ("manual", rev, None))


# --- bad input from a peer ---------------------------------------------------------------


def ws_connect(host, port, ctx, protocol="portcullis.v1", timeout=10):
    """A minimal RFC 6455 client over TLS; returns the socket after 101."""
    raw = socket.create_connection((host, port), timeout=timeout)
    s = ctx.wrap_socket(raw, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n"
               % (host, port, key, protocol)).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade: %r" % data)
        data += chunk
    if not data.startswith(b"HTTP/1.1 101"):
        raise ConnectionError("upgrade refused: %r" % data[:200])
    return s


def ws_send(s, payload, opcode=1, fin=True):
    if isinstance(payload, str):
        payload = payload.encode()
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 1 << 16 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    s.sendall(head + mask + body)


def ws_recv(s):
    """(opcode, payload) of the next frame, or (None, b'') on EOF."""
    def exact(k):
        b = b""
        while len(b) < k:
            c = s.recv(k - len(b))
            if not c:
                return None
            b += c
        return b
    h = exact(2)
    if h is None:
        return None, b""
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    return h[0] & 0x0F, exact(n) or b""


def ws_until_close(s, timeout=10):
    """Reads frames until close; returns (messages, close code)."""
    s.settimeout(timeout)
    msgs = []
    while True:
        try:
            op, p = ws_recv(s)
        except (socket.timeout, ssl.SSLError, ConnectionError, OSError):
            return msgs, None
        if op is None:
            return msgs, None
        if op == 8:
            return msgs, struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
        if op == 1:
            msgs.append(json.loads(p))


class TestBadPeers(LinkTest):
    def client_ctx(self, state):
        ctx = ssl.create_default_context(cafile=str(state / "ca.crt"))
        ctx.load_cert_chain(str(state / "node.crt"), str(state / "node.key"))
        return ctx

    def hello(self, name):
        return json.dumps({"type": "hello", "v": 1, "node": name, "software": "test", "policy": None,
                           "spool": {"last_seq": 0, "pending": 0, "dropped": 0}})

    def test_garbage_wrong_state_oversized_and_flood(self):
        good = self.new_node("gw-fine")
        self.wait_enforced(good, self.c.revision())
        # A second identity whose credentials the test drives by hand.
        node_id = self.c.ok("POST", "/api/v1/nodes", {"name": "gw-evil", "office_id": self.office("Berlin")})["id"]
        evil = Node(self.tmp, "gw-evil")
        evil.enroll(self.c.hub_url, self.token_for(node_id))
        ctx = self.client_ctx(evil.state)
        bad0 = self.c.hub_stats()["bad_messages"]

        cases = [
            ("not JSON", [b"{{{"], "bad-message"),
            ("unknown type", [json.dumps({"type": "shell", "v": 1})], "bad-message"),
            ("events before hello", [json.dumps({"type": "events", "v": 1, "events": [{"seq": 1}],
                                                 "dropped": 0})], "wrong-state"),
            ("another node's name", [json.dumps(json.loads(self.hello("gw-fine")))], "identity"),
            ("events without credit", [self.hello("gw-evil"), json.dumps(
                {"type": "events", "v": 1, "dropped": 0,
                 "events": [{"seq": i, "time": "2026-11-24T10:00:00.000Z", "type": "block",
                             "verdict": "blocked", "reason": "x"} for i in range(1, 1001)]}),
                json.dumps({"type": "events", "v": 1, "dropped": 0,
                            "events": [{"seq": i, "time": "2026-11-24T10:00:00.000Z", "type": "block",
                                        "verdict": "blocked", "reason": "x"} for i in range(1001, 2001)]})],
             None),
        ]
        for what, frames, code in cases:
            with self.subTest(what):
                s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
                for f in frames:
                    ws_send(s, f)
                msgs, close = ws_until_close(s)
                s.close()
                errors = [m for m in msgs if m.get("type") == "error"]
                self.assertTrue(errors, "%s: no error message (got %r, close %r)" % (what, msgs, close))
                if code:
                    self.assertEqual(errors[0]["code"], code, errors)
                self.assertIn(close, (4001, 4008, 1008, 1009), what)

        # An oversized frame: closed without the hub buffering it.
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello("gw-evil"))
        try:
            ws_send(s, b"x" * (2 * 1024 * 1024))
        except OSError:
            pass
        msgs, close = ws_until_close(s)
        s.close()
        self.assertIn(close, (None, 1009, 4001), "oversized frame not refused")

        # A flood of pings / stats.
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello("gw-evil"))
        try:
            for _ in range(20000):
                ws_send(s, json.dumps({"type": "stats", "v": 1, "time": 1, "counters": {"a": 1}}))
        except OSError:
            pass
        s.close()

        # Counted; the other node and REST unharmed; nothing stored for the peer.
        self.assertGreater(self.c.hub_stats()["bad_messages"], bad0)
        rev = self.block_domain("after-the-garbage.example")
        self.wait_enforced(good, rev)
        self.assertEqual(self.c.db_rows("SELECT count(*) FROM events WHERE node = 'gw-evil'")[0][0], 0)


# --- against a fake controller -------------------------------------------------------------


class FakeHub:
    """A TLS websocket server that plays the controller for one node: it
    speaks portcullis.v1 from a script, with a CA and certificates made here."""

    def __init__(self, d):
        self.d = Path(d)
        self.d.mkdir()
        sh = lambda *a: subprocess.run(["openssl"] + list(a), cwd=self.d, check=True, capture_output=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        sh("req", "-x509", *ec, "-subj", "/CN=Fake CA", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem",
           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        for name, ext in (("hub", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                          ("node", "extendedKeyUsage=clientAuth")):
            (self.d / (name + ".ext")).write_text(ext + "\n")
            sh("req", "-new", *ec, "-subj", "/CN=" + ("gw-fake" if name == "node" else "hub"), "-keyout",
               name + ".key", "-out", name + ".csr")
            sh("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
               "-days", "2", "-extfile", name + ".ext", "-out", name + ".crt")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(self.d / "hub.crt"), str(self.d / "hub.key"))
        self.ctx.load_verify_locations(str(self.d / "ca.pem"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.port = self.ls.getsockname()[1]

    def state_dir(self, path):
        path.mkdir(mode=0o700)
        shutil.copy(self.d / "node.key", path / "node.key")
        os.chmod(path / "node.key", 0o600)
        shutil.copy(self.d / "node.crt", path / "node.crt")
        shutil.copy(self.d / "ca.pem", path / "ca.crt")
        (path / "link.json").write_text(json.dumps({"controller": "https://127.0.0.1:%d" % self.port,
                                                    "node": "gw-fake"}))

    def accept(self, timeout=30):
        """Accepts one connection, answers the upgrade; returns (socket, hello)."""
        self.ls.settimeout(timeout)
        raw, _ = self.ls.accept()
        raw.settimeout(timeout)
        s = self.ctx.wrap_socket(raw, server_side=True)
        req = b""
        while b"\r\n\r\n" not in req:
            req += s.recv(4096)
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", req, re.I).group(1)
        acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + acc + b"\r\nSec-WebSocket-Protocol: portcullis.v1\r\n\r\n")
        return s, self.recv(s)

    @staticmethod
    def send(s, obj):
        data = json.dumps(obj).encode()
        n = len(data)
        head = bytes([0x81]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([127]) + struct.pack(">Q", n))
        s.sendall(head + data)

    @staticmethod
    def recv(s):
        """The next text message from the (masking) client."""
        while True:
            def exact(k):
                b = b""
                while len(b) < k:
                    c = s.recv(k - len(b))
                    if not c:
                        raise ConnectionError("closed")
                    b += c
                return b
            h = exact(2)
            n = h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", exact(8))[0]
            mask = exact(4)
            p = bytes(b ^ mask[i % 4] for i, b in enumerate(exact(n)))
            if h[0] & 0x0F == 1:
                return json.loads(p)
            if h[0] & 0x0F == 8:
                raise ConnectionError("closed by the node")

    def recv_type(self, s, t):
        while True:
            m = self.recv(s)
            if m["type"] == t:
                return m

    @staticmethod
    def expect_close(s, timeout=10):
        """Reads until the node's close frame, answers it as a server does and
        closes the socket; returns (code, reason)."""
        def exact(k):
            b = b""
            while len(b) < k:
                c = s.recv(k - len(b))
                if not c:
                    raise AssertionError("the node dropped the connection without a close frame")
                b += c
            return b
        s.settimeout(timeout)
        try:
            while True:
                h = exact(2)
                n = h[1] & 0x7F
                if n == 126:
                    n = struct.unpack(">H", exact(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", exact(8))[0]
                mask = exact(4)
                p = bytes(b ^ mask[i % 4] for i, b in enumerate(exact(n)))
                if h[0] & 0x0F == 8:
                    code = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
                    s.sendall(bytes([0x88, 2]) + p[:2])
                    return code, p[2:].decode(errors="replace")
        finally:
            s.close()


def policy_doc(version, extra_block=None):
    """The node's own example policy with a version (and a blocked domain)."""
    repo = Path(__file__).resolve().parent.parent.parent
    doc = json.loads((repo / "docs" / "examples" / "policy-block-skype.json").read_text())
    doc["version"] = version
    if extra_block:
        doc["defaults"].setdefault("blocked_domains", []).append(extra_block)
    return json.dumps(doc, separators=(",", ":"))


class TestAgainstFakeController(unittest.TestCase):
    """The node against a scripted controller: refused documents and safe apply.
    A document under the safe-apply check (here every one: --safe-apply always)
    counts as good only when a connection made after it was applied gets its
    hello answered: after acking it the node closes its link (1000) and
    reconnects; the fake hub answers events_ack to confirm, or stays silent (or
    does not accept) to make the node revert after 2 s."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pc-link-fake-"))
        self.hub = FakeHub(self.tmp / "fake")
        self.node = Node(self.tmp, "gw-fake", ["--safe-apply", "always", "--safe-apply-timeout", "2"])
        self.hub.state_dir(self.node.state)

    def tearDown(self):
        try:
            self.node.stop()
        finally:
            self.hub.ls.close()
            if not KEEP:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def push(self, s, doc, sha=None):
        FakeHub.send(s, {"type": "policy", "v": 1, "version": json.loads(doc)["version"],
                         "sha256": sha or hashlib.sha256(doc.encode()).hexdigest(), "document": doc})
        return self.hub.recv_type(s, "ack")

    @staticmethod
    def confirm(s):
        FakeHub.send(s, {"type": "events_ack", "v": 1, "seq": 0, "credit": 1000})

    def state_file(self, name):
        return (self.node.state / name).read_text()

    def reported(self, hello, doc):
        """hello's policy names doc (by version and the sha256 of its bytes)."""
        self.assertEqual(hello["policy"], {"version": json.loads(doc)["version"],
                                           "sha256": hashlib.sha256(doc.encode()).hexdigest()}, hello)

    def apply_and_recheck(self, s, doc):
        """Pushes doc on s: it is applied, then the node closes s normally to
        check the link with a new connection; returns that one and its hello."""
        ack = self.push(s, doc)
        self.assertEqual((ack["status"], ack["version"]), ("applied", json.loads(doc)["version"]), ack)
        code, reason = FakeHub.expect_close(s)
        self.assertEqual(code, 1000, reason)
        s2, hello = self.hub.accept(timeout=20)
        self.reported(hello, doc)
        self.assertNotIn("reverted", hello)
        return s2, hello

    def confirmed(self, s, doc, count):
        """Answers the new connection's hello: doc becomes the good one."""
        self.confirm(s)
        version = json.loads(doc)["version"]
        self.node.wait_log("policy version %d confirmed" % version, timeout=10)
        self.assertEqual(self.state_file("policy.good.json"), doc)
        self.assertEqual(self.node.stderr().count(
            "portcullis-node: safe apply: checking the controller link with a new connection"), count)

    def test_refused_documents_and_safe_apply_revert(self):
        self.node.start(wait_link=False)
        s, hello = self.hub.accept()
        self.assertEqual((hello["type"], hello["node"], hello["policy"]), ("hello", "gw-fake", None))
        self.confirm(s)

        # Version 5 is applied; a round trip on the connection it came on does
        # not confirm it (a firewall may pass established connections only):
        # the node reconnects, and the answer to that hello does.
        good = policy_doc(5, "good-five.example")
        s, _ = self.apply_and_recheck(s, good)
        self.assertFalse((self.node.state / "policy.good.json").exists())
        self.confirmed(s, good, 1)
        self.assertEqual(self.node.request("good-five.example"), 403)

        # A hash that does not match the bytes.
        ack = self.push(s, policy_doc(6), sha="0" * 64)
        self.assertEqual(ack["status"], "failed")
        self.assertIn("sha256", ack["error"])
        # A document the node's parser refuses: the reason comes back.
        bad = json.loads(policy_doc(7))
        bad["proxy"]["ports"] = {"443": "carrier-pigeon"}
        bad = json.dumps(bad)
        ack = self.push(s, bad)
        self.assertEqual(ack["status"], "failed")
        self.assertIn("$.proxy.ports", ack["error"])
        # Still enforcing version 5, on the same connection (a refused
        # document needs no check).
        self.assertEqual(self.node.request("good-five.example"), 403)
        self.assertEqual(json.loads(self.state_file("policy.json"))["version"], 5)

        # Version 8 is applied; the node's new connection gets no answer to
        # its hello. After 2 s the node puts version 5 back (the good one),
        # closes that connection and reconnects at once, and its hello says
        # what it enforces and what it reverted.
        eight = policy_doc(8, "eight.example")
        s, _ = self.apply_and_recheck(s, eight)
        self.assertEqual(self.node.request("eight.example"), 403)
        code, reason = FakeHub.expect_close(s, timeout=20)
        self.assertEqual((code, reason), (1000, "safe-apply revert"))
        s, hello = self.hub.accept(timeout=20)
        self.reported(hello, good)
        self.assertEqual(hello["reverted"]["version"], 8, hello)
        self.assertIn("safe-apply", hello["reverted"]["reason"])
        self.confirm(s)
        self.assertNotEqual(self.node.request("eight.example"), 403)
        self.assertEqual(self.node.request("good-five.example"), 403)
        self.assertEqual(self.state_file("policy.json"), good)
        self.assertEqual(self.state_file("policy.good.json"), good)
        s.close()

    def test_oversized_message_is_refused_with_a_close_frame(self):
        self.node.start(wait_link=False)
        s, hello = self.hub.accept()
        self.confirm(s)
        # More than the 4 MiB a node takes from its controller, in one frame:
        # the node closes with 1009 and connects again, on its own policy.
        big = b'{"type":"ping","v":1,"time":1,"pad":"' + b"x" * (5 * 1024 * 1024) + b'"}'
        try:
            s.sendall(bytes([0x81, 127]) + struct.pack(">Q", len(big)) + big)
        except OSError:
            pass
        code, reason = FakeHub.expect_close(s)
        self.assertEqual(code, 1009, reason)
        s2, hello2 = self.hub.accept(timeout=20)
        self.assertEqual(hello2["policy"], hello["policy"])
        s2.close()
        self.node.wait_log("message from the controller too large")

    def test_revert_without_a_good_document_goes_to_the_built_in_policy(self):
        self.node.start(wait_link=False)
        s, hello = self.hub.accept()
        self.confirm(s)
        # The first document is never confirmed: nothing good to go back to.
        four = policy_doc(4, "four.example")
        ack = self.push(s, four)
        self.assertEqual(ack["status"], "applied", ack)
        self.assertEqual(FakeHub.expect_close(s)[0], 1000)
        self.node.wait_log("policy version 4 reverted", timeout=20)
        s, hello = self.hub.accept(timeout=20)
        self.assertEqual(hello["policy"], None, hello)
        self.assertEqual(hello["reverted"]["version"], 4, hello)
        self.confirm(s)
        self.assertFalse((self.node.state / "policy.json").exists())
        self.assertFalse((self.node.state / "policy.good.json").exists())
        self.assertNotEqual(self.node.request("four.example"), 403)
        ack = self.push(s, four)
        self.assertEqual(ack["status"], "failed", ack)
        self.assertIn("version 4 was reverted by safe apply", ack["error"])
        s.close()

    def test_reverted_document_is_not_applied_again(self):
        self.node.start(wait_link=False)
        s, hello = self.hub.accept()
        self.assertEqual(hello["policy"], None)
        self.confirm(s)
        good = policy_doc(5, "good-five.example")
        s, _ = self.apply_and_recheck(s, good)
        self.confirmed(s, good, 1)

        # Version 8 cuts the node off: its new connection never completes
        # (the hub does not accept it in time), so after 2 s it reverts.
        eight = policy_doc(8, "eight.example")
        ack = self.push(s, eight)
        self.assertEqual(ack["status"], "applied", ack)
        self.assertEqual(FakeHub.expect_close(s)[0], 1000)
        self.node.wait_log("policy version 8 reverted", timeout=20)
        s, hello = self.hub.accept(timeout=20)
        self.reported(hello, good)
        self.assertEqual(hello["reverted"]["version"], 8, hello)
        self.confirm(s)
        record = json.loads(self.state_file("reverted.json"))
        self.assertIn(hashlib.sha256(eight.encode()).hexdigest(),
                      [r["sha256"] for r in record["reverted"]], record)

        # The same document again: refused with the reason, version 5 stays.
        ack = self.push(s, eight)
        self.assertEqual((ack["status"], ack["version"]), ("failed", 8), ack)
        self.assertEqual(ack["error"], "version 8 was reverted by safe apply (no round trip with the "
                                       "controller within 2 s); not applied again")
        self.assertNotEqual(self.node.request("eight.example"), 403)
        self.assertEqual(self.node.request("good-five.example"), 403)
        self.assertEqual(self.state_file("policy.json"), good)
        self.node.wait_log("policy version 8 refused: version 8 was reverted", timeout=5)

        # A different document is applied (and checked) as usual.
        nine = policy_doc(9, "nine.example")
        s, _ = self.apply_and_recheck(s, nine)
        self.confirmed(s, nine, 3)
        self.assertEqual(self.node.request("nine.example"), 403)
        self.assertNotEqual(self.node.request("good-five.example"), 403)

        # The record survives a restart: version 8 is still refused.
        s.close()
        self.node.stop()
        self.node.start(wait_link=False)
        s, hello = self.hub.accept()
        self.reported(hello, nine)
        self.assertNotIn("reverted", hello)
        self.confirm(s)
        ack = self.push(s, eight)
        self.assertEqual(ack["status"], "failed", ack)
        self.assertIn("was reverted by safe apply", ack["error"])
        self.assertEqual(self.node.request("nine.example"), 403)
        s.close()


# --- the hub's review fixes: safe-apply reverts, upgrades without a certificate, enrollment rate ---


def ws_messages(s, seconds):
    """Every text message that arrives within seconds (the socket stays open)."""
    msgs = []
    deadline = time.time() + seconds
    while True:
        left = deadline - time.time()
        if left <= 0:
            return msgs
        s.settimeout(left)
        try:
            op, p = ws_recv(s)
        except (socket.timeout, ssl.SSLError, OSError):
            return msgs
        if op is None or op == 8:
            return msgs
        if op == 1:
            msgs.append(json.loads(p))


def ws_wait_type(s, t, timeout=CONVERGE_TIMEOUT):
    """The next message of type t; fails if the connection closes first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s.settimeout(max(0.1, deadline - time.time()))
        op, p = ws_recv(s)
        if op is None or op == 8:
            raise AssertionError("closed while waiting for %r" % t)
        if op == 1:
            m = json.loads(p)
            if m["type"] == t:
                return m
    raise AssertionError("no %r within %.0f s" % (t, timeout))


class TestHubSafeguards(LinkTest):
    def scripted_node(self, name, office="Berlin"):
        """A node enrolled for real whose side of the link the test speaks by hand."""
        node_id = self.c.ok("POST", "/api/v1/nodes", {"name": name, "office_id": self.office(office)})["id"]
        n = Node(self.tmp, name)
        n.id = node_id
        n.enroll(self.c.hub_url, self.token_for(node_id))
        ctx = ssl.create_default_context(cafile=str(n.state / "ca.crt"))
        ctx.load_cert_chain(str(n.state / "node.crt"), str(n.state / "node.key"))
        return n, ctx

    @staticmethod
    def hello(name, policy=None, reverted=None):
        m = {"type": "hello", "v": 1, "node": name, "software": "scripted-test", "policy": policy,
             "spool": {"last_seq": 0, "pending": 0, "dropped": 0}}
        if reverted:
            m["reverted"] = reverted
        return json.dumps(m)

    def test_reverted_document_is_not_pushed_again_until_the_office_changes(self):
        n, ctx = self.scripted_node("gw-revert")
        # First connection: the built-in policy; the hub sends the office's document.
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello(n.name))
        pol = ws_wait_type(s, "policy")
        doc = pol["document"]
        self.assertEqual(hashlib.sha256(doc.encode()).hexdigest(), pol["sha256"])
        ws_send(s, json.dumps({"type": "ack", "v": 1, "version": pol["version"], "sha256": pol["sha256"],
                               "status": "applied", "error": None}))
        ws_wait_type(s, "ping")
        self.wait_enforced(n, pol["version"])
        s.close()

        # It comes back having reverted that document (safe apply put the
        # built-in policy back): the hub must not push the same bytes again.
        reason = "safe-apply: no round trip with the controller within 2 s after applying version %d" % pol["version"]
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello(n.name, reverted={"version": pol["version"], "reason": reason}))
        got = ws_messages(s, 3)
        self.assertIn("events_ack", [m["type"] for m in got], got)
        self.assertNotIn("policy", [m["type"] for m in got], "the reverted document was pushed again")

        def recorded():
            info = self.c.node(n.id)
            return info["connected"] and "reverted" in (info["last_error"] or "") and info
        info = wait_for("the revert to show as the node's last_error", recorded)
        self.assertIn("version %d" % pol["version"], info["last_error"])
        self.assertIn("safe-apply", info["last_error"])
        # What the node said it runs: the built-in policy.
        self.assertIsNone(info["enforced_version"], info)
        s.close()

        # Later connections (no `reverted` any more) are not sent it either,
        # and the reason stays.
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello(n.name))
        got = ws_messages(s, 3)
        self.assertNotIn("policy", [m["type"] for m in got], "pushed again after a reconnect")
        self.assertIn("reverted", self.c.node(n.id)["last_error"] or "")

        # The office's document changes: that one is sent, and once it is
        # applied the revert is history.
        rev2 = self.block_domain("after-the-revert.example")
        pol2 = ws_wait_type(s, "policy")
        self.assertEqual(pol2["version"], rev2)
        self.assertNotEqual(pol2["sha256"], pol["sha256"])
        ws_send(s, json.dumps({"type": "ack", "v": 1, "version": rev2, "sha256": pol2["sha256"],
                               "status": "applied", "error": None}))
        ws_wait_type(s, "ping")
        info = self.wait_enforced(n, rev2)
        wait_for("last_error to clear", lambda: self.c.node(n.id)["last_error"] is None)
        s.close()

    def test_upgrades_without_a_certificate_are_refused_before_they_count(self):
        n = self.new_node("gw-crowded", start=False)
        refused0 = self.c.hub_stats()["refused"]
        ctx = ssl.create_default_context(cafile=str(self.c.db) + ".ca.pem")
        # TLS connections that never upgrade, held open all along.
        idle = []
        for _ in range(20):
            raw = socket.create_connection(("127.0.0.1", self.c.hub_port), timeout=10)
            idle.append(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
        # 50 upgrades without a client certificate, all at once: each is
        # refused at the upgrade, none gets a websocket.
        outcomes = []

        def upgrade():
            t0 = time.time()
            raw = socket.create_connection(("127.0.0.1", self.c.hub_port), timeout=10)
            s = None
            try:
                s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: portcullis.v1\r\n\r\n")
                answer = s.recv(4096)
                outcomes.append(("accepted" if answer.startswith(b"HTTP/1.1 101") else "refused",
                                 time.time() - t0, answer[:40]))
            except OSError as e:
                outcomes.append(("refused", time.time() - t0, str(e)[:80]))
            finally:
                (s or raw).close()
        ts = [threading.Thread(target=upgrade) for _ in range(50)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual([o for o in outcomes if o[0] != "refused"], [], "an upgrade without a certificate was accepted")
        self.assertLess(max(o[1] for o in outcomes), 5.0, "refusals waited for the close grace")
        wait_for("the refusals to be counted", lambda: self.c.hub_stats()["refused"] >= refused0 + 50)
        # A real node still gets in, and is the only connection counted.
        n.start()
        wait_for("the node to show as connected", lambda: self.c.node(n.id)["connected"])
        st = self.c.hub_stats()
        self.assertEqual(st["connected"], 1, st)
        for s in idle:
            s.close()
        self.assertIn("no client certificate", self.c.err.read_text())

    def test_enrollment_rate_limit(self):
        ctx = ssl.create_default_context(cafile=str(self.c.db) + ".ca.pem")
        refused0 = self.c.hub_stats()["enrollments_refused"]
        statuses = []
        limited = []
        stop = threading.Event()
        deadline = time.time() + 20

        def hammer():
            c = None
            for _ in range(100):
                if stop.is_set() or time.time() > deadline:
                    break
                try:
                    if c is None:
                        c = http.client.HTTPSConnection("127.0.0.1", self.c.hub_port, context=ctx, timeout=10)
                    c.request("POST", "/enroll", body=b"{", headers={"Content-Type": "application/json"})
                    r = c.getresponse()
                    body = r.read()
                except (OSError, http.client.HTTPException):
                    if c:
                        c.close()
                    c = None
                    continue
                statuses.append(r.status)
                if r.status == 429:
                    limited.append((r.getheader("Retry-After"), json.loads(body)))
                    if len(limited) >= 5:
                        stop.set()
                else:
                    self.assertEqual(r.status, 400, body)
            if c:
                c.close()
        ts = [threading.Thread(target=hammer) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertTrue(limited, "no 429 in %d quick requests: %r" % (len(statuses), statuses[:30]))
        retry, body = limited[0]
        self.assertEqual(retry, "1")
        self.assertEqual(body["error"]["code"], "too-many-requests", body)
        self.assertGreaterEqual(self.c.hub_stats()["enrollments_refused"], refused0 + len(statuses))
        # The REST API and the hub answer meanwhile, and a real enrollment
        # works once the burst is over.
        time.sleep(1.5)
        n = self.new_node("gw-after-burst")
        wait_for("the node to show as connected", lambda: self.c.node(n.id)["connected"])
        self.assertGreaterEqual(self.c.hub_stats()["enrollments"], 1)

    def test_enroll_command_waits_out_a_burst(self):
        """`portcullis-node enroll` meeting the hub's 429 waits and tries again
        with the same token instead of failing."""
        ctx = ssl.create_default_context(cafile=str(self.c.db) + ".ca.pem")
        retried = 0
        for attempt in range(3):
            flood = threading.Event()
            limited = threading.Event()

            def hammer():
                c = None
                while not flood.is_set():
                    try:
                        if c is None:
                            c = http.client.HTTPSConnection("127.0.0.1", self.c.hub_port, context=ctx,
                                                            timeout=10)
                        c.request("POST", "/enroll", body=b"{", headers={"Content-Type": "application/json"})
                        r = c.getresponse()
                        r.read()
                        if r.status == 429:
                            limited.set()
                    except (OSError, http.client.HTTPException):
                        if c:
                            c.close()
                        c = None
                if c:
                    c.close()
            ts = [threading.Thread(target=hammer) for _ in range(4)]
            for t in ts:
                t.start()
            try:
                self.assertTrue(limited.wait(20), "the burst never met the rate limit")
                name = "gw-burst-%d" % attempt
                node_id = self.c.ok("POST", "/api/v1/nodes", {"name": name, "office_id": self.office("Berlin")})["id"]
                token = self.token_for(node_id)
                n = Node(self.tmp, name)
                p = subprocess.Popen([NODE, "enroll", "--controller", self.c.hub_url, "--token", token,
                                      "--state", str(n.state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                time.sleep(1.5)
            finally:
                flood.set()
                for t in ts:
                    t.join()
            out, err = p.communicate(timeout=60)
            check_stderr("node enroll", err)
            self.assertEqual(p.returncode, 0, err)
            self.assertIn("enrolled as " + name, out)
            if "busy with other enrollments (HTTP 429); trying again" in err:
                retried += 1
                break
            time.sleep(1.5)
        self.assertGreater(retried, 0, "the enroll command never met the limit in 3 bursts")

    def test_node_state_survives_a_locked_database(self):
        n, ctx = self.scripted_node("gw-locked")
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello(n.name))
        ws_wait_type(s, "events_ack")
        wait_for("the node to show as connected", lambda: self.c.node(n.id)["connected"])
        # Another writer holds the database longer than the writer's three
        # tries (5 s busy timeout each) while the node goes away: the record
        # that it left must be kept and stored once the database is free.
        con = sqlite3.connect(str(self.c.db), timeout=10, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            s.close()
            wait_for("the writer to give up a round", lambda: "will be tried again" in self.c.err.read_text(),
                     timeout=40)
        finally:
            con.execute("ROLLBACK")
            con.close()
        wait_for("the node to show as disconnected", lambda: not self.c.node(n.id)["connected"])
        self.assertNotIn("dropped after", self.c.err.read_text())

    def put_global_settings(self, body):
        """PUT /api/v1/settings/global with the If-Match it needs."""
        h = {"Authorization": "Bearer " + self.c.token}
        conn = http.client.HTTPSConnection("127.0.0.1", self.c.port, context=self.c.ctx, timeout=60)
        try:
            conn.request("GET", "/api/v1/settings/global", headers=h)
            r = conn.getresponse()
            r.read()
            h.update({"Content-Type": "application/json", "If-Match": r.getheader("ETag")})
            conn.request("PUT", "/api/v1/settings/global", body=json.dumps(body), headers=h)
            r = conn.getresponse()
            self.assertEqual(r.status, 200, r.read()[:300])
            r.read()
        finally:
            conn.close()

    def test_oversized_document_is_not_pushed(self):
        n, ctx = self.scripted_node("gw-big")
        s = ws_connect("127.0.0.1", self.c.hub_port, ctx)
        ws_send(s, self.hello(n.name))
        pol = ws_wait_type(s, "policy")
        ws_send(s, json.dumps({"type": "ack", "v": 1, "version": pol["version"], "sha256": pol["sha256"],
                               "status": "applied", "error": None}))
        ws_wait_type(s, "ping")
        self.wait_enforced(n, pol["version"])
        # Lists that make the office's document larger than a node accepts
        # (4 MiB as a message). Defining them changes nothing yet.
        names = []
        for k in range(6):
            doms = ["h%07d-%d.example-long-name.com" % (i, k) for i in range(24000)]
            self.c.ok("POST", "/api/v1/lists", {"name": "big%d" % k, "list": {"category": "games", "domains": doms}})
            names.append("big%d" % k)
        g = self.c.ok("GET", "/api/v1/settings/global")
        base = {k: v for k, v in g.items() if k not in ("etag", "id", "scope", "scope_id")}
        ws_messages(s, 1)  # the revisions the lists made
        self.put_global_settings(dict(base, use_lists=(base.get("use_lists") or []) + names))
        big = self.c.revision()

        def told():
            info = self.c.node(n.id)
            return "over the 4 MiB a node accepts" in (info["last_error"] or "") and info
        info = wait_for("the node's last_error to say the document is too large", told)
        self.assertIn("version %d" % big, info["last_error"])
        got = ws_messages(s, 3)
        self.assertNotIn("policy", [m["type"] for m in got], "an oversized document was pushed")
        self.assertIn("over the 4 MiB a node accepts", self.c.err.read_text())
        # Back under the limit: the next revision goes out as usual.
        self.put_global_settings(base)
        fixed = self.c.revision()
        pol = ws_wait_type(s, "policy")
        self.assertEqual(pol["version"], fixed)
        ws_send(s, json.dumps({"type": "ack", "v": 1, "version": fixed, "sha256": pol["sha256"],
                               "status": "applied", "error": None}))
        ws_wait_type(s, "ping")
        self.wait_enforced(n, fixed)
        wait_for("last_error to clear", lambda: self.c.node(n.id)["last_error"] is None)
        s.close()


def main():
    global CONTROLLER, NODE
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--controller", default=CONTROLLER)
    ap.add_argument("--node", default=NODE)
    ns, rest = ap.parse_known_args()
    CONTROLLER = os.path.abspath(ns.controller) if ns.controller else ""
    NODE = os.path.abspath(ns.node) if ns.node else ""
    for what, path in (("portcullis-controller", CONTROLLER), ("portcullis-node", NODE)):
        if not path or not os.access(path, os.X_OK):
            print("test_link: %s not found: %r" % (what, path), file=sys.stderr)
            sys.exit(2)
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
