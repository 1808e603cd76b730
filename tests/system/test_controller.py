"""test_controller.py - the real portcullis-controller on a free loopback port
with a temp database, driven over HTTPS: health, the first-start admin token,
auth and roles, CRUD on every policy object with the REST conventions (201 +
Location, ETag/If-Match, 404/405/409/412/413/415/422/428), settings,
revisions (diff, rollback), audit and events with filters and cursors, the
compiled documents and explain, users and tokens, bad input leaving the
database unchanged (read beside the server with sqlite3), and openapi.json
agreeing with the server's routes.

Stdlib + curl. Run: python3 test_controller.py --controller PATH [unittest args].
Each test class starts its own controller; tearDown fails on any sanitizer
line in its stderr or an unclean exit on SIGTERM.
"""

import argparse
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONTROLLER = os.environ.get("PORTCULLIS_CONTROLLER", "")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")
START_TIMEOUT = 20.0


class Controller:
    """One portcullis-controller process in its own temp dir."""

    def __init__(self, tmp, env=None, args=()):
        self.tmp = Path(tmp)
        self.args = list(args)
        self.db = self.tmp / "controller.db"
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("PORTCULLIS_ADMIN_TOKEN", None) if not env else None
        self.proc = None
        self.runs = 0

    def start(self):
        self.runs += 1
        self.out = self.tmp / ("stdout.%d" % self.runs)
        self.err = self.tmp / ("stderr.%d" % self.runs)
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen(
                [CONTROLLER, "--db", str(self.db), "--listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0"]
                + self.args,
                stdout=o, stderr=e, env=self.env, cwd=self.tmp)
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            m = re.search(r"listening on \S+ \(port (\d+)\)", self.out.read_text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise AssertionError("controller exited %d: %s" % (self.proc.returncode, self.err.read_text()))
            time.sleep(0.05)
        else:
            raise AssertionError("controller did not start: %s" % self.err.read_text())
        self.cert = str(self.db) + ".cert.pem"
        self.ctx = ssl.create_default_context(cafile=self.cert)
        return self.out.read_text()

    def stop(self):
        """SIGTERM; returns stderr. Fails on a sanitizer line or exit != 0."""
        if not self.proc:
            return ""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("controller did not stop on SIGTERM")
        self.proc = None
        err = self.err.read_text()
        for mark in SANITIZER_MARKS:
            if mark in err:
                raise AssertionError("sanitizer report in controller stderr:\n" + err)
        if rc != 0:
            raise AssertionError("controller exited %d on SIGTERM:\n%s" % (rc, err))
        return err

    def request(self, method, path, body=None, token=None, headers=None, ctype="application/json"):
        """Returns (status, headers dict (lower-case names), parsed JSON or raw bytes)."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            if isinstance(data, str):
                data = data.encode()
            if ctype:
                h["Content-Type"] = ctype
        c = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=15)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            raw = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            c.close()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return r.status, hdrs, parsed

    def curl(self, *args):
        """curl against the controller, pinned to its certificate; returns
        (status, body bytes)."""
        r = subprocess.run(["curl", "-s", "--cacert", self.cert, "-o", "-", "-w", "\n%{http_code}"]
                           + list(args), capture_output=True, timeout=60)
        body, _, code = r.stdout.rpartition(b"\n")
        return int(code or b"0"), body


def admin_token(stdout):
    m = re.search(r"admin token \(shown once, keep it\): (\S+)", stdout)
    return m.group(1) if m else None


class ControllerTest(unittest.TestCase):
    env = None

    def controller_args(self):
        """Extra command-line options for the controller."""
        return ()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pc-controller-")
        self.c = Controller(self.tmp, self.env, self.controller_args())
        self.first_out = self.c.start()
        self.admin = admin_token(self.first_out)

    def tearDown(self):
        try:
            self.c.stop()
        finally:
            if os.environ.get("PORTCULLIS_KEEP", "") in ("", "0"):
                shutil.rmtree(self.tmp, ignore_errors=True)

    def assertError(self, resp, status, code, field=None):
        st, _, body = resp
        self.assertEqual(st, status, "expected %d %s, got %d %r" % (status, code, st, body))
        self.assertIsInstance(body, dict, body)
        self.assertEqual(set(body), {"error"}, body)
        self.assertEqual(set(body["error"]), {"code", "message", "field"}, body)
        self.assertEqual(body["error"]["code"], code, body)
        self.assertTrue(body["error"]["message"], body)
        if field is not None:
            self.assertEqual(body["error"]["field"], field, body)

    def token(self, role):
        st, h, body = self.c.request("POST", "/api/v1/tokens", {"label": role + " test", "role": role},
                                     self.admin)
        self.assertEqual(st, 201, body)
        return body["token"]

    def regions(self):
        st, _, body = self.c.request("GET", "/api/v1/regions", token=self.admin)
        self.assertEqual(st, 200, body)
        return body["items"]

    def create_region(self, name="EMEA"):
        return self.create("regions", {"name": name})

    def user_token(self, name, role):
        st, h, u = self.c.request("POST", "/api/v1/users", {"name": name, "role": role}, self.admin)
        self.assertEqual((st, h["location"]), (201, "/api/v1/users/%d" % u["id"]), u)
        st, _, t = self.c.request("POST", "/api/v1/tokens", {"role": role, "user": name, "label": "t"}, self.admin)
        self.assertEqual((st, t["user"], t["role"]), (201, name, role), t)
        return t["token"]

    def create(self, coll, obj, token=None):
        st, h, body = self.c.request("POST", "/api/v1/" + coll, obj, token or self.admin)
        self.assertEqual(st, 201, body)
        self.assertEqual(h["location"], "/api/v1/%s/%d" % (coll, body["id"]))
        self.assertEqual(h["etag"], '"%d"' % body["etag"])
        return body, h

    def db(self, sql, *args):
        """Reads the database file beside the running server."""
        con = sqlite3.connect("file:%s?mode=ro" % self.c.db, uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def revision(self):
        st, _, body = self.c.request("GET", "/api/v1/revisions?limit=1", token=self.admin)
        self.assertEqual(st, 200, body)
        return body["items"][0]["revision"]


class TestStartAndAuth(ControllerTest):
    def test_health_without_auth(self):
        st, h, body = self.c.request("GET", "/api/v1/health")
        self.assertEqual(st, 200)
        self.assertEqual(body["status"], "ok")
        self.assertEqual(body["db"], "ok")
        self.assertTrue(body["version"])
        self.assertEqual(h["content-type"], "application/json")

    def test_certificate_and_fingerprint(self):
        """A self-signed certificate that verifies for 127.0.0.1 (the
        request above pins it), its fingerprint printed, key file 0600,
        and the same certificate reused on restart."""
        m = re.search(r"fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})", self.first_out)
        self.assertTrue(m, self.first_out)
        der = ssl.PEM_cert_to_DER_cert(Path(self.c.cert).read_text())
        import hashlib
        want = ":".join("%02X" % b for b in hashlib.sha256(der).digest())
        self.assertEqual(m.group(1), want)
        key = Path(str(self.c.db) + ".key.pem")
        self.assertEqual(key.stat().st_mode & 0o777, 0o600)
        self.c.stop()
        out = self.c.start()
        self.assertIn(want, out)
        self.assertIn("using self-signed certificate", out)

    def test_admin_token_printed_once(self):
        self.assertTrue(self.admin and self.admin.startswith("pct_"), self.first_out)
        self.assertEqual(self.c.request("GET", "/api/v1/regions", token=self.admin)[0], 200)
        self.c.stop()
        out = self.c.start()
        self.assertNotIn("admin token", out)
        self.assertNotIn(self.admin, out)
        self.assertNotIn(self.admin, self.c.err.read_text())
        # still valid after the restart
        self.assertEqual(self.c.request("GET", "/api/v1/regions", token=self.admin)[0], 200)

    def test_401(self):
        self.assertError(self.c.request("GET", "/api/v1/regions"), 401, "unauthorized")
        self.assertError(self.c.request("GET", "/api/v1/regions", token="pc_nope"), 401, "unauthorized")
        self.assertError(self.c.request("GET", "/api/v1/regions", headers={"Authorization": "Basic eDp5"}),
                         401, "unauthorized")
        st, h, _ = self.c.request("GET", "/api/v1/regions", token="x" * 5000)
        self.assertEqual(st, 401)

    def test_roles(self):
        viewer, operator = self.token("viewer"), self.token("operator")
        self.assertEqual(self.c.request("GET", "/api/v1/regions", token=viewer)[0], 200)
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "A"}, viewer), 403, "forbidden")
        self.assertEqual(self.regions(), [])
        self.assertEqual(self.c.request("POST", "/api/v1/regions", {"name": "A"}, operator)[0], 201)
        self.assertError(self.c.request("GET", "/api/v1/tokens", token=operator), 403, "forbidden")
        self.assertError(self.c.request("POST", "/api/v1/tokens", {"label": "x", "role": "admin"}, operator),
                         403, "forbidden")
        # a revoked token is refused
        st, _, toks = self.c.request("GET", "/api/v1/tokens", token=self.admin)
        vid = [t["id"] for t in toks["items"] if t["role"] == "viewer"][0]
        self.assertEqual(self.c.request("DELETE", "/api/v1/tokens/%d" % vid, token=self.admin)[0], 204)
        self.assertError(self.c.request("GET", "/api/v1/regions", token=viewer), 401, "unauthorized")
        # the list never carries secrets
        self.assertNotIn("token", json.dumps(toks["items"]).replace('"token', ""))
        for t in toks["items"]:
            self.assertNotIn("token", t)


class TestEnvToken(ControllerTest):
    env = {"PORTCULLIS_ADMIN_TOKEN": "env-admin-token-0123456789abcdef0123456789"}

    def test_env_admin_token(self):
        self.assertIsNone(self.admin)
        self.assertIn("PORTCULLIS_ADMIN_TOKEN", self.first_out)
        self.assertNotIn(self.env["PORTCULLIS_ADMIN_TOKEN"], self.first_out)
        self.assertEqual(self.c.request("GET", "/api/v1/regions", token=self.env["PORTCULLIS_ADMIN_TOKEN"])[0],
                         200)


class TestBadEnvToken(unittest.TestCase):
    def test_short_env_token_refused_before_the_database(self):
        """The store takes 32 to 256 printable characters; a shorter one is
        refused at start, before the database exists (so a corrected second
        start is still a first start)."""
        with tempfile.TemporaryDirectory() as d:
            db = Path(d) / "c.db"
            env = dict(os.environ, PORTCULLIS_ADMIN_TOKEN="short-token-0123456789")
            r = subprocess.run([CONTROLLER, "--db", str(db), "--listen", "127.0.0.1:0"], env=env,
                               capture_output=True, text=True, timeout=60)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("32 to 256", r.stderr)
            self.assertFalse(db.exists())


class TestRegions(ControllerTest):
    def test_crud(self):
        body, h = self.create_region("EMEA")
        rid = body["id"]
        self.assertEqual(h["location"], "/api/v1/regions/%d" % rid)
        self.assertTrue(h["etag"])
        st, h2, got = self.c.request("GET", h["location"], token=self.admin)
        self.assertEqual(st, 200)
        self.assertEqual(got["name"], "EMEA")
        etag = h2["etag"]
        # PUT without If-Match: 428; with a wrong one: 412, unchanged
        self.assertError(self.c.request("PUT", h["location"], {"name": "Europe"}, self.admin), 428,
                         "precondition_required")
        self.assertError(self.c.request("PUT", h["location"], {"name": "Europe"}, self.admin,
                                        {"If-Match": '"nope"'}), 412, "precondition_failed")
        self.assertEqual(self.regions()[0]["name"], "EMEA")
        st, h3, got = self.c.request("PUT", h["location"], {"name": "Europe"}, self.admin, {"If-Match": etag})
        self.assertEqual(st, 200, got)
        self.assertEqual(got["name"], "Europe")
        self.assertNotEqual(h3["etag"], etag)
        # the old ETag is now stale: a lost update is a 412
        self.assertError(self.c.request("PATCH", h["location"], {"name": "lost"}, self.admin,
                                        {"If-Match": etag}), 412, "precondition_failed")
        st, h4, got = self.c.request("PATCH", h["location"], {"name": "Europa"}, self.admin,
                                     {"If-Match": h3["etag"]})
        self.assertEqual((st, got["name"]), (200, "Europa"))
        self.assertEqual(set(got), {"id", "name", "etag"})
        # delete
        self.assertError(self.c.request("DELETE", h["location"], token=self.admin, headers={"If-Match": etag}),
                         412, "precondition_failed")
        st, _, _ = self.c.request("DELETE", h["location"], token=self.admin, headers={"If-Match": h4["etag"]})
        self.assertEqual(st, 204)
        self.assertError(self.c.request("GET", h["location"], token=self.admin), 404, "not_found")
        self.assertError(self.c.request("DELETE", h["location"], token=self.admin, headers={"If-Match": "*"}),
                         404, "not_found")
        self.assertError(self.c.request("GET", "/api/v1/regions/abc", token=self.admin), 404, "not_found")
        self.assertEqual(self.regions(), [])

    def test_conflict(self):
        self.create_region("EMEA")
        b, h = self.create_region("APAC")
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "EMEA"}, self.admin), 409, "conflict",
                         "name")
        self.assertError(self.c.request("PUT", h["location"], {"name": "EMEA"}, self.admin, {"If-Match": h["etag"]}),
                         409, "conflict", "name")
        self.assertEqual(sorted(r["name"] for r in self.regions()), ["APAC", "EMEA"])

    def test_invalid_input_changes_nothing(self):
        b, h = self.create_region("EMEA")
        before, rev = self.regions(), self.revision()
        cases = [
            ({"name": "x", "colour": "red"}, 422, "invalid", "colour"),
            ({}, 422, "invalid", "name"),
            ({"name": 5}, 422, "invalid", "name"),
            ({"name": ""}, 422, "invalid", "name"),
            ({"name": "x" * 129}, 422, "invalid", "name"),
            ({"name": "a\u0001b"}, 422, "invalid", "name"),
            ('{"name":"x","name":"y"}', 422, "duplicate_field", "name"),
            ("[1,2]", 422, "invalid", None),
            ('{"name": "x"', 400, "bad_json", None),
            ('{"name": "x"} trailing', 400, "bad_json", None),
            ("", 400, "bad_json", None),
            (b'{"name":"\xff\xfe"}', 422, "invalid", "name"),
        ]
        for body, status, code, field in cases:
            with self.subTest(body=body):
                self.assertError(self.c.request("POST", "/api/v1/regions", body, self.admin), status, code, field)
                self.assertError(self.c.request("PUT", h["location"], body, self.admin, {"If-Match": h["etag"]}),
                                 status, code, field)
        self.assertEqual(self.regions(), before)
        # the file itself, read beside the running server: no row, no revision
        self.assertEqual(self.db("SELECT count(*) FROM regions"), [(1,)])
        self.assertEqual(self.revision(), rev)
        self.assertEqual(self.db("SELECT max(number) FROM revisions"), [(rev,)])

    def test_content_type_415(self):
        self.assertError(self.c.request("POST", "/api/v1/regions", '{"name":"x"}', self.admin, ctype="text/plain"),
                         415, "unsupported_media_type")
        self.assertError(self.c.request("POST", "/api/v1/regions", '{"name":"x"}', self.admin, ctype=None),
                         415, "unsupported_media_type")
        self.assertEqual(self.c.request("POST", "/api/v1/regions", {"name": "x"}, self.admin,
                                        ctype="application/json; charset=utf-8")[0], 201)

    def test_body_too_large_413(self):
        big = b'{"name":"' + b"a" * (2 * 1024 * 1024) + b'"}'
        path = Path(self.tmp) / "big.json"
        path.write_bytes(big)
        url = "https://127.0.0.1:%d/api/v1/regions" % self.c.port
        auth = "Authorization: Bearer " + self.admin
        st, body = self.c.curl("-H", auth, "-H", "Content-Type: application/json", "--data-binary",
                               "@" + str(path), url)
        self.assertEqual(st, 413, body)
        self.assertEqual(json.loads(body)["error"]["code"], "too_large")
        st, body = self.c.curl("-H", auth, "-H", "Content-Type: application/json", "-H",
                               "Transfer-Encoding: chunked", "--data-binary", "@" + str(path), url)
        self.assertEqual(st, 413, body)
        self.assertEqual(self.regions(), [])
        # the server is fine afterwards
        self.assertEqual(self.c.request("GET", "/api/v1/health")[0], 200)

    def test_sql_metacharacters_round_trip(self):
        names = ["x'; DROP TABLE regions; --", 'a"b', "100% _under_", "back\\slash", "Zürich ☃",
                 "); DELETE FROM api_tokens WHERE (1=1"]
        for n in names:
            b, h = self.create_region(n)
            st, _, got = self.c.request("GET", h["location"], token=self.admin)
            self.assertEqual(got["name"], n)
        self.assertEqual(sorted(r["name"] for r in self.regions()), sorted(names))
        self.assertEqual(self.c.request("GET", "/api/v1/tokens", token=self.admin)[0], 200)

    def test_405_and_no_route(self):
        st, h, body = self.c.request("DELETE", "/api/v1/regions", token=self.admin)
        self.assertError((st, h, body), 405, "method_not_allowed")
        self.assertEqual(h["allow"], "GET, POST")
        self.assertError(self.c.request("GET", "/api/v1/nothing", token=self.admin), 404, "no_route")
        self.assertError(self.c.request("GET", "/api/v1/regions/1/x", token=self.admin), 404, "no_route")


class TestPolicyObjects(ControllerTest):
    def setup_office(self):
        region, _ = self.create_region("EMEA")
        office, oh = self.create("offices", {"name": "Berlin", "region_id": region["id"],
                                             "lan_prefixes": ["10.1.0.0/16"]})
        return region, office, oh

    def test_lists_are_paged(self):
        """Object lists come in pages by id with a cursor; every object once."""
        region, office, _ = self.setup_office()
        made = [self.create("nodes", {"name": "gw-%03d" % i, "office_id": office["id"]})[0]["id"]
                for i in range(7)]
        seen, cursor, pages = [], None, 0
        while True:
            st, _, page = self.c.request("GET", "/api/v1/nodes?limit=3" + ("&cursor=%s" % cursor if cursor else ""),
                                         token=self.admin)
            self.assertEqual(st, 200, page)
            self.assertLessEqual(len(page["items"]), 3)
            seen += [n["id"] for n in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual((seen, pages), (made, 3))
        st, _, page = self.c.request("GET", "/api/v1/nodes", token=self.admin)
        self.assertEqual(([n["id"] for n in page["items"]], page["next_cursor"]), (made, None))
        for qs, field in (("?limit=0", "limit"), ("?limit=1001", "limit"), ("?cursor=x", "cursor"),
                          ("?colour=red", "colour")):
            with self.subTest(qs=qs):
                st, _, err = self.c.request("GET", "/api/v1/nodes" + qs, token=self.admin)
                self.assertEqual((st, err["error"]["field"]), (422, field), err)

    def test_sql_metacharacters_in_every_string_field(self):
        """Every string field of every resource takes SQL metacharacters as
        data: free text round-trips; a field with a grammar (CIDR, domain)
        refuses them with 422 naming the field; nothing else changes."""
        region, office, _ = self.setup_office()
        evil = "x'); DROP TABLE offices; --"
        tables = sorted(r[0] for r in self.db("SELECT name FROM sqlite_master WHERE type = 'table'"))
        free_text = [
            ("offices", {"name": evil, "region_id": region["id"]}, "name"),
            ("groups", {"name": "g1", "office_id": office["id"], "sources": ["10.1.9.0/24"], "users": [evil]},
             "users"),
            ("rules", {"scope": "office", "scope_id": office["id"], "kind": "domain", "value": "ok.example",
                       "action": "block", "comment": evil}, "comment"),
            ("tokens", {"role": "viewer", "label": evil}, "label"),
        ]
        for coll, obj, field in free_text:
            with self.subTest(coll=coll, field=field):
                st, h, body = self.c.request("POST", "/api/v1/" + coll, obj, self.admin)
                self.assertEqual(st, 201, body)
                st, _, got = self.c.request("GET", "/api/v1/%s/%d" % (coll, body["id"]), token=self.admin)
                self.assertEqual((st, got[field]), (200, obj[field]))
        before = self.revision()
        grammar = [
            ("groups", {"name": "g2", "office_id": office["id"], "sources": [evil]}, "sources[0]"),
            ("groups", {"name": evil, "office_id": office["id"], "sources": ["10.1.8.0/24"]}, "name"),
            ("rules", {"scope": "office", "scope_id": office["id"], "kind": "domain", "value": evil,
                       "action": "block"}, "value"),
            ("offices", {"name": "o2", "region_id": region["id"], "lan_prefixes": [evil]}, "lan_prefixes[0]"),
            ("lists", {"name": "l2", "list": {"category": "custom", "domains": [evil]}}, "list.domains[0]"),
            ("nodes", {"name": evil, "office_id": office["id"]}, "name"),
            ("users", {"name": evil, "role": "viewer"}, "name"),
        ]
        for coll, obj, field in grammar:
            with self.subTest(coll=coll, field=field):
                st, _, err = self.c.request("POST", "/api/v1/" + coll, obj, self.admin)
                self.assertEqual(st, 422, err)
                self.assertTrue(err["error"]["field"].startswith(field.split("[")[0]), err)
        self.assertEqual(self.revision(), before, "a refused change made a revision")
        after = sorted(r[0] for r in self.db("SELECT name FROM sqlite_master WHERE type = 'table'"))
        self.assertEqual(after, tables)

    def test_crud_every_kind(self):
        """Create, read, PATCH, PUT and DELETE each kind, with ETags; every
        change is one revision with the token's user as author."""
        region, office, _ = self.setup_office()
        kinds = [
            ("groups", {"name": "board", "office_id": office["id"], "sources": ["10.1.2.0/24"]},
             {"sources": ["10.1.3.0/24"]}, "sources", ["10.1.3.0/24"]),
            ("rules", {"scope": "office", "scope_id": office["id"], "kind": "domain", "value": "Example.COM",
                       "action": "block"}, {"comment": "why"}, "comment", "why"),
            ("lists", {"name": "mine", "list": {"category": "custom", "domains": ["example.org"]}},
             {"name": "mine2"}, "name", "mine2"),
            ("nodes", {"name": "gw-berlin-1", "office_id": office["id"]}, {"name": "gw-berlin-2"}, "name",
             "gw-berlin-2"),
            ("offices", {"name": "Paris", "region_id": region["id"]}, {"lan_prefixes": ["10.2.0.0/16"]},
             "lan_prefixes", ["10.2.0.0/16"]),
        ]
        for coll, obj, patch, key, want in kinds:
            with self.subTest(coll=coll):
                rev = self.revision()
                body, h = self.create(coll, obj)
                self.assertEqual(self.revision(), rev + 1)
                st, gh, got = self.c.request("GET", h["location"], token=self.admin)
                # A node's link state (pending_version, ...) is the hub's to
                # change at any time: compare the object's own fields.
                live = ("pending_version", "last_seen", "connected", "stats", "stats_at")
                strip = lambda o: {k: v for k, v in o.items() if k not in live} if isinstance(o, dict) else o
                self.assertEqual((st, strip(got), gh["etag"]), (200, strip(body), h["etag"]))
                st, _, items = self.c.request("GET", "/api/v1/" + coll, token=self.admin)
                self.assertIn(body["id"], [i["id"] for i in items["items"]])
                self.assertError(self.c.request("PATCH", h["location"], patch, self.admin), 428,
                                 "precondition_required")
                st, ph, got = self.c.request("PATCH", h["location"], patch, self.admin, {"If-Match": h["etag"]})
                self.assertEqual(st, 200, got)
                self.assertEqual(got[key], want)
                # PUT with the object as read (id, etag and read-only fields are ignored)
                st, uh, got2 = self.c.request("PUT", h["location"], got, self.admin, {"If-Match": ph["etag"]})
                self.assertEqual(st, 200, got2)
                self.assertError(self.c.request("DELETE", h["location"], token=self.admin,
                                                headers={"If-Match": h["etag"]}), 412, "precondition_failed")
                st, _, _ = self.c.request("DELETE", h["location"], token=self.admin,
                                          headers={"If-Match": uh["etag"]})
                self.assertEqual(st, 204)
                self.assertError(self.c.request("GET", h["location"], token=self.admin), 404, "not_found")
        self.assertEqual({r[0] for r in self.db("SELECT DISTINCT author FROM revisions WHERE number > 1")},
                         {"admin"})

    def test_store_errors_mapped(self):
        region, office, oh = self.setup_office()
        # a region with offices is still used: 409, unchanged
        st, h, got = self.c.request("GET", "/api/v1/regions/%d" % region["id"], token=self.admin)
        self.assertError(self.c.request("DELETE", "/api/v1/regions/%d" % region["id"], token=self.admin,
                                        headers={"If-Match": h["etag"]}), 409, "conflict")
        # the store's validation names the field
        self.assertError(self.create_bad("offices", {"name": "X", "region_id": 999}), 422, "invalid", "region_id")
        self.assertError(self.create_bad("groups", {"name": "g", "sources": ["10.0.0.1/8"]}), 422, "invalid",
                         "sources[0]")
        self.assertError(self.create_bad("groups", {"name": "g", "sources": ["10.9.0.0/16"],
                                                    "users": {"a": 1, "a": 2}}), 422, "invalid", "users")
        self.assertError(self.create_bad("groups", '{"name":"g","sources":["10.9.0.0/16"],"x":{"a":1,"a":2}}'),
                         422, "duplicate_field", "x.a")
        self.assertError(self.create_bad("rules", {"scope": "global", "kind": "dns", "action": "block"}), 422,
                         "invalid", "kind")
        self.assertEqual(self.db("SELECT count(*) FROM groups"), [(0,)])
        # PATCH merges over the object as read: only the given field changes
        st, ph, got = self.c.request("PATCH", oh["location"], {"name": "Berlin-Mitte"}, self.admin,
                                     {"If-Match": oh["etag"]})
        self.assertEqual((st, got["name"], got["lan_prefixes"]), (200, "Berlin-Mitte", ["10.1.0.0/16"]))

    def create_bad(self, coll, obj):
        return self.c.request("POST", "/api/v1/" + coll, obj, self.admin)

    def test_viewer_reads_only(self):
        viewer, operator = self.token("viewer"), self.token("operator")
        region, office, oh = self.setup_office()
        for coll in ("regions", "offices", "groups", "rules", "lists", "nodes"):
            self.assertEqual(self.c.request("GET", "/api/v1/" + coll, token=viewer)[0], 200)
            self.assertError(self.c.request("POST", "/api/v1/" + coll, {"name": "x"}, viewer), 403, "forbidden")
        self.assertError(self.c.request("PUT", "/api/v1/settings/global", {}, viewer, {"If-Match": "*"}), 403,
                         "forbidden")
        self.assertError(self.c.request("POST", "/api/v1/revisions/1/rollback", {}, viewer), 403, "forbidden")
        self.assertError(self.c.request("GET", "/api/v1/users", token=operator), 403, "forbidden")
        body, _ = self.create("nodes", {"name": "gw1", "office_id": office["id"]}, operator)
        self.assertEqual(self.db("SELECT actor FROM audit WHERE object_type = 'node'"), [("admin",)])


class TestSettings(ControllerTest):
    def test_get_put_per_scope(self):
        region, _ = self.create_region("EMEA")
        st, h, glob = self.c.request("GET", "/api/v1/settings/global", token=self.admin)
        self.assertEqual((st, glob["scope"], glob["ports"]["443"]), (200, "global", "tls"))
        url = "/api/v1/settings/region/%d" % region["id"]
        st, h, got = self.c.request("GET", url, token=self.admin)
        self.assertEqual((st, got["block_executables"]), (200, None))
        self.assertError(self.c.request("PUT", url, {"block_executables": False}, self.admin), 428,
                         "precondition_required")
        st, h2, got = self.c.request("PUT", url, {"block_executables": False}, self.admin, {"If-Match": h["etag"]})
        self.assertEqual((st, got["block_executables"]), (200, False), got)
        self.assertError(self.c.request("PUT", url, {"block_executables": True}, self.admin, {"If-Match": h["etag"]}),
                         412, "precondition_failed")
        self.assertError(self.c.request("PUT", url, {"high_port_threshold": 70000}, self.admin,
                                        {"If-Match": h2["etag"]}), 422, "invalid", "high_port_threshold")
        self.assertError(self.c.request("PUT", url, {"colour": 1}, self.admin, {"If-Match": h2["etag"]}), 422,
                         "invalid", "colour")
        self.assertError(self.c.request("GET", "/api/v1/settings/office/99", token=self.admin), 404, "not_found")
        self.assertError(self.c.request("GET", "/api/v1/settings/region/x", token=self.admin), 404, "not_found")
        st, _, all_ = self.c.request("GET", "/api/v1/settings", token=self.admin)
        self.assertEqual([s["scope"] for s in all_["items"]], ["global", "region"])

    def test_firewall_fields(self):
        """The firewall settings: seeded at global, validated with the field
        named, normalized, inherited into every office's "firewall" part,
        and rolled back with the rest."""
        st, h, glob = self.c.request("GET", "/api/v1/settings/global", token=self.admin)
        self.assertEqual(st, 200, glob)
        self.assertEqual({k: glob[k] for k in ("block_high_ports", "high_port_threshold", "open_ports",
                                                "dns_resolvers", "web_mode", "web_devices",
                                                "log_drops_per_minute")},
                         {"block_high_ports": True, "high_port_threshold": 1024, "open_ports": [],
                          "dns_resolvers": None, "web_mode": "transparent", "web_devices": [],
                          "log_drops_per_minute": 0})
        region, _ = self.create_region("EMEA")
        office, _ = self.create("offices", {"name": "Berlin", "region_id": region["id"],
                                            "lan_prefixes": ["10.1.0.0/16"]})
        url = "/api/v1/settings/office/%d" % office["id"]
        st, h, got = self.c.request("GET", url, token=self.admin)
        self.assertEqual([got[k] for k in ("dns_resolvers", "web_mode", "web_devices", "log_drops_per_minute")],
                         [None] * 4)
        before = self.revision()
        for body, field in [
            ({"dns_resolvers": ["198.51.100.0/24"]}, "dns_resolvers[0]"),
            ({"dns_resolvers": "198.51.100.53"}, "dns_resolvers"),
            ({"web_mode": "bridge"}, "web_mode"),
            ({"web_devices": ["10.1.0.1/16"]}, "web_devices[0]"),
            ({"web_mode": "transparent", "web_devices": ["10.1.0.8"]}, "web_devices"),
            ({"log_drops_per_minute": 10001}, "log_drops_per_minute"),
            ({"open_ports": [{"port": "8100-8000", "proto": "tcp", "devices": ["10.1.0.25"]}]},
             "open_ports[0].port"),
            ({"open_ports": [{"port": 25, "proto": "tcp", "devices": ["10.1.0.25"]},
                             {"port": "20-30", "proto": "tcp", "devices": ["10.1.0.26"]}]}, "open_ports[1]"),
        ]:
            with self.subTest(body=body):
                self.assertError(self.c.request("PUT", url, body, self.admin, {"If-Match": h["etag"]}), 422,
                                 "invalid", field)
        self.assertEqual(self.revision(), before)

        body = {"open_ports": [{"port": "8000-8100", "proto": "tcp", "devices": ["10.1.7.0/24"]},
                               {"port": "25", "proto": "tcp", "devices": ["10.1.0.26", "10.1.0.25"]}],
                "dns_resolvers": ["::ffff:198.51.100.53"], "web_mode": "proxy", "web_devices": ["10.1.0.8"],
                "log_drops_per_minute": 30, "high_port_threshold": 2000}
        st, h2, got = self.c.request("PUT", url, body, self.admin, {"If-Match": h["etag"]})
        self.assertEqual(st, 200, got)
        self.assertEqual(got["open_ports"], [
            {"devices": ["10.1.7.0/24"], "port": "8000-8100", "proto": "tcp"},
            {"devices": ["10.1.0.26/32", "10.1.0.25/32"], "port": 25, "proto": "tcp"}])
        self.assertEqual((got["dns_resolvers"], got["web_mode"], got["web_devices"], got["log_drops_per_minute"]),
                         (["198.51.100.53"], "proxy", ["10.1.0.8/32"], 30))
        changed = self.revision()
        self.assertEqual(changed, before + 1)

        # The office's document: its firewall part, inherited where the office sets nothing.
        st, _, d = self.c.request("GET", "/api/v1/offices/%d/document" % office["id"], token=self.admin)
        self.assertEqual(st, 200, d)
        self.assertEqual(d["document"]["firewall"], {
            "lan": ["10.1.0.0/16"], "web": "proxy", "web_devices": ["10.1.0.8/32"],
            "allow": [{"name": "port-25-tcp", "devices": ["10.1.0.25/32", "10.1.0.26/32"], "proto": "tcp",
                       "ports": ["25"]},
                      {"name": "port-8000-8100-tcp", "devices": ["10.1.7.0/24"], "proto": "tcp",
                       "ports": ["8000-8100"]}],
            "dns": ["198.51.100.53"], "high_ports": {"block": True, "from": 2000},
            "log_drops": {"per_minute": 30}})

        # A dry run of closing port 25 names the entry.
        st, _, res = self.c.request("POST", "/api/v1/dry-run", {
            "kind": "settings", "scope": "office", "id": office["id"],
            "body": dict(body, open_ports=body["open_ports"][:1])}, self.admin)
        self.assertEqual((st, res["changed"]), (200, 1), res)
        self.assertEqual(res["offices"][0]["diff"][0]["path"], "$.firewall.allow[?(@.name=='port-25-tcp')]")
        self.assertEqual(res["offices"][0]["diff"][0]["op"], "removed")

        # The revision's change carries the fields; a rollback restores them.
        st, _, one = self.c.request("GET", "/api/v1/revisions/%d" % changed, token=self.admin)
        self.assertEqual(one["changes"][0]["after"]["web_mode"], "proxy")
        st, _, rb = self.c.request("POST", "/api/v1/revisions/%d/rollback" % before, None, self.admin)
        self.assertEqual(st, 201, rb)
        st, _, got = self.c.request("GET", url, token=self.admin)
        self.assertEqual([got[k] for k in ("open_ports", "dns_resolvers", "web_mode", "web_devices",
                                           "log_drops_per_minute")], [None] * 5)
        st, _, d = self.c.request("GET", "/api/v1/offices/%d/document" % office["id"], token=self.admin)
        self.assertEqual(d["document"]["firewall"], {
            "lan": ["10.1.0.0/16"], "web": "transparent", "web_devices": [], "allow": [], "dns": None,
            "high_ports": {"block": True, "from": 1024}, "log_drops": None})


class TestRevisionsAndAudit(ControllerTest):
    def test_list_get_diff_rollback(self):
        base = self.revision()
        emea, _ = self.create_region("EMEA")
        apac, _ = self.create_region("APAC")
        st, _, revs = self.c.request("GET", "/api/v1/revisions?limit=2", token=self.admin)
        self.assertEqual([r["revision"] for r in revs["items"]], [base + 2, base + 1])
        st, _, older = self.c.request("GET", "/api/v1/revisions?before=%d" % (base + 1), token=self.admin)
        self.assertEqual([r["revision"] for r in older["items"]], list(range(base, 0, -1)))
        st, _, one = self.c.request("GET", "/api/v1/revisions/%d" % (base + 1), token=self.admin)
        self.assertEqual((st, one["changes"][0]["op"], one["changes"][0]["after"]["name"]), (200, "added", "EMEA"))
        st, _, diff = self.c.request("GET", "/api/v1/revisions/diff?from=%d&to=%d" % (base, base + 2),
                                     token=self.admin)
        self.assertEqual(sorted(c["after"]["name"] for c in diff["changes"] if c["type"] == "region"),
                         ["APAC", "EMEA"])
        self.assertError(self.c.request("GET", "/api/v1/revisions/diff", token=self.admin), 422, "missing_field",
                         "from")
        self.assertError(self.c.request("GET", "/api/v1/revisions/diff?from=1&to=999", token=self.admin), 404,
                         "not_found")
        self.assertError(self.c.request("GET", "/api/v1/revisions/999", token=self.admin), 404, "not_found")
        self.assertError(self.c.request("GET", "/api/v1/revisions?limit=0", token=self.admin), 422, "invalid",
                         "limit")
        # roll back to before both regions: one new revision, the regions gone
        st, h, rb = self.c.request("POST", "/api/v1/revisions/%d/rollback" % base, None, self.admin)
        self.assertEqual((st, rb), (201, {"revision": base + 3, "restored": base}), rb)
        self.assertEqual(h["location"], "/api/v1/revisions/%d" % (base + 3))
        self.assertEqual(self.regions(), [])
        self.assertError(self.c.request("POST", "/api/v1/revisions/999/rollback", {}, self.admin), 404, "not_found")
        self.assertError(self.c.request("POST", "/api/v1/revisions/1/rollback", {"x": 1}, self.admin), 422,
                         "unknown_field", "x")

    def test_audit_filters_and_cursor(self):
        alice = self.user_token("alice", "operator")
        self.create("regions", {"name": "A"}, alice)
        self.create("regions", {"name": "B"}, alice)
        st, _, page = self.c.request("GET", "/api/v1/audit?actor=alice&limit=1", token=self.admin)
        self.assertEqual(st, 200, page)
        self.assertEqual([(e["actor"], e["after"]["name"]) for e in page["entries"]], [("alice", "B")])
        self.assertTrue(page["next_cursor"])
        st, _, page2 = self.c.request("GET", "/api/v1/audit?actor=alice&limit=1&cursor=" + page["next_cursor"],
                                      token=self.admin)
        self.assertEqual([e["after"]["name"] for e in page2["entries"]], ["A"])
        st, _, tok = self.c.request("GET", "/api/v1/audit?object_type=token", token=self.admin)
        self.assertTrue(tok["entries"])
        self.assertTrue(all(e["object_type"] == "token" for e in tok["entries"]))
        self.assertNotIn(alice, json.dumps(tok))
        st, _, none = self.c.request("GET", "/api/v1/audit?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00.5Z",
                                     token=self.admin)
        self.assertEqual((st, none["entries"]), (200, []))
        self.assertError(self.c.request("GET", "/api/v1/audit?from=2026-02-30T00:00:00Z", token=self.admin), 422,
                         "invalid", "from")
        self.assertError(self.c.request("GET", "/api/v1/audit?actr=x", token=self.admin), 422, "unknown_field",
                         "actr")
        self.assertError(self.c.request("GET", "/api/v1/audit?cursor=zz", token=self.admin), 422, "invalid",
                         "cursor")

class TestUsersAndTokens(ControllerTest):
    def test_users_and_tokens(self):
        self.user_token("bob", "viewer")
        self.assertError(self.c.request("POST", "/api/v1/tokens", {"role": "admin", "user": "bob"}, self.admin),
                         422, "invalid", "role")
        self.assertError(self.c.request("POST", "/api/v1/tokens", {"role": "viewer", "user": "nobody"}, self.admin),
                         422, "invalid", "user")
        self.assertError(self.c.request("POST", "/api/v1/users", {"name": "bob", "role": "viewer"}, self.admin),
                         409, "conflict")
        st, h, t = self.c.request("POST", "/api/v1/tokens", {"role": "viewer"}, self.admin)
        self.assertEqual((st, t["user"]), (201, "admin"))
        self.assertEqual(h["location"], "/api/v1/tokens/%d" % t["id"])
        st, _, got = self.c.request("GET", h["location"], token=self.admin)
        self.assertEqual((st, got["id"], "token" in got), (200, t["id"], False))
        self.assertEqual(self.c.request("DELETE", h["location"], token=self.admin)[0], 204)
        st, _, got = self.c.request("GET", h["location"], token=self.admin)
        self.assertTrue(got["revoked_at"])
        self.assertError(self.c.request("GET", "/api/v1/regions", token=t["token"]), 401, "unauthorized")
        self.assertError(self.c.request("DELETE", "/api/v1/tokens/999", token=self.admin), 404, "not_found")
        st, _, users = self.c.request("GET", "/api/v1/users", token=self.admin)
        bob = [u for u in users["items"] if u["name"] == "bob"][0]
        self.assertEqual(self.c.request("DELETE", "/api/v1/users/%d" % bob["id"], token=self.admin)[0], 204)
        self.assertError(self.c.request("GET", "/api/v1/users/%d" % bob["id"], token=self.admin), 404, "not_found")
        admin_id = [u for u in users["items"] if u["name"] == "admin"][0]["id"]
        self.assertError(self.c.request("DELETE", "/api/v1/users/%d" % admin_id, token=self.admin), 409, "conflict")


class TestEvents(ControllerTest):
    def insert_events(self, rows):
        """No route ingests events yet (the node link is another issue):
        write them as the store would, beside the running server."""
        con = sqlite3.connect(str(self.c.db), timeout=10)
        try:
            con.executemany(
                "INSERT INTO events (node, seq, time, received, type, verdict, reason, office_id, region_id,"
                " group_name) VALUES (?, ?, ?, ?, ?, ?, 'blocked-domain', ?, ?, ?)", rows)
            con.commit()
        finally:
            con.close()

    def test_filters_and_cursor(self):
        t0 = 1_780_000_000_000
        self.insert_events([
            ("gw1", 1, t0, t0, "block", "blocked", 1, 1, "defaults"),
            ("gw1", 2, t0 + 1000, t0, "exception", "allowed", 1, 1, "board"),
            ("gw2", 1, t0 + 2000, t0, "block", "blocked", 2, 1, "defaults"),
            ("gw3", 1, t0 + 3000, t0, "block", "blocked", 3, 2, "defaults"),
        ])
        def q(qs):
            st, _, body = self.c.request("GET", "/api/v1/events" + qs, token=self.admin)
            self.assertEqual(st, 200, body)
            return [(e["node"], e["seq"]) for e in body["events"]], body["next_cursor"]
        self.assertEqual(q("")[0], [("gw3", 1), ("gw2", 1), ("gw1", 2), ("gw1", 1)])
        self.assertEqual(q("?office=1")[0], [("gw1", 2), ("gw1", 1)])
        self.assertEqual(q("?region=1&type=block")[0], [("gw2", 1), ("gw1", 1)])
        self.assertEqual(q("?group=board")[0], [("gw1", 2)])
        self.assertEqual(q("?node=gw2")[0], [("gw2", 1)])
        self.assertEqual(q("?from=%d&to=%d" % (t0 + 1000, t0 + 3000))[0], [("gw2", 1), ("gw1", 2)])
        first, cur = q("?limit=3")
        self.assertEqual(len(first), 3)
        self.assertEqual(q("?limit=3&cursor=" + cur), ([("gw1", 1)], None))
        for qs, code, field in (("?type=bad", "invalid", "type"), ("?office=x", "invalid", "office"),
                                ("?limit=1001", "invalid", "limit"), ("?from=yesterday", "invalid", "from"),
                                ("?colour=red", "unknown_field", "colour"), ("?cursor=%27;--", "invalid", "cursor")):
            with self.subTest(qs=qs):
                self.assertError(self.c.request("GET", "/api/v1/events" + qs, token=self.admin), 422, code, field)


class TestCompiled(ControllerTest):
    def setup_policy(self):
        region, _ = self.create_region("EMEA")
        office, _ = self.create("offices", {"name": "Berlin", "region_id": region["id"], "lan_prefixes": ["10.1.0.0/16"]})
        group, _ = self.create("groups", {"name": "board", "office_id": office["id"], "sources": ["10.1.2.0/24"]})
        self.create("rules", {"scope": "group", "scope_id": group["id"], "kind": "skype", "action": "allow"})
        return office

    def test_document(self):
        office = self.setup_policy()
        url = "https://127.0.0.1:%d/api/v1/offices/%d/document" % (self.c.port, office["id"])
        st, raw = self.c.curl("-H", "Authorization: Bearer " + self.admin, url)
        self.assertEqual(st, 200, raw)
        body = json.loads(raw)
        self.assertEqual((body["office_id"], body["revision"]), (office["id"], self.revision()))
        doc_bytes = raw[raw.index(b'"document":') + len(b'"document":'):-1]
        import hashlib
        self.assertEqual(hashlib.sha256(doc_bytes).hexdigest(), body["sha256"])
        self.assertEqual([g["name"] for g in body["document"]["groups"]], ["board"])
        self.assertError(self.c.request("GET", "/api/v1/offices/999/document", token=self.admin), 404, "not_found")

    def test_explain(self):
        office = self.setup_policy()
        def explain(obj):
            return self.c.request("POST", "/api/v1/explain", obj, self.admin)
        st, _, e = explain({"office": office["id"], "source": "10.1.2.5", "host": "www.skype.com", "port": 443})
        self.assertEqual((st, e["verdict"], e["group"]), (200, "exception", "board"), e)
        st, _, e = explain({"office": office["id"], "source": "10.1.3.5", "host": "www.skype.com", "port": 443})
        self.assertEqual((e["verdict"], e["group"]), ("block", "defaults"))
        st, _, e = explain({"office": office["id"], "source": "10.1.3.5", "host": "example.org", "port": 80,
                            "path": "/dl/SkypeSetup.exe"})
        self.assertEqual(st, 200, e)
        for obj, code, field in [
            ({"office": office["id"], "source": "nope", "port": 443}, "invalid", "source"),
            ({"office": office["id"], "source": "10.1.3.5", "port": 0}, "invalid", "port"),
            ({"office": office["id"], "source": "10.1.3.5"}, "missing_field", "port"),
            ({"office": "1", "source": "10.1.3.5", "port": 80}, "wrong_type", "office"),
            ({"office": 999, "source": "10.1.3.5", "port": 80}, "invalid", "office"),
            ({"office": office["id"], "source": "10.1.3.5", "port": 80, "verbose": True}, "unknown_field", "verbose"),
        ]:
            with self.subTest(obj=obj):
                self.assertError(explain(obj), 422, code, field)


    def test_dry_run(self):
        office = self.setup_policy()
        region2, _ = self.create_region("APAC")
        other, _ = self.create("offices", {"name": "Tokyo", "region_id": region2["id"], "lan_prefixes": ["10.2.0.0/16"]})
        before = self.revision()
        def dry(obj, token=None):
            return self.c.request("POST", "/api/v1/dry-run", obj, token or self.admin)
        # Blocking a domain for the EMEA region changes Berlin's document only.
        rule = {"scope": "region", "scope_id": office["region_id"], "kind": "domain",
                "value": "games.example", "action": "block"}
        st, _, res = dry({"kind": "rule", "op": "create", "body": rule})
        self.assertEqual(st, 200, res)
        self.assertEqual(res["changed"], 1, res)
        self.assertEqual([o["office_id"] for o in res["offices"]], [office["id"]])
        self.assertIn("games.example", json.dumps(res["offices"][0]["diff"]))
        # Nothing was stored: same revision, no such rule, Tokyo untouched.
        self.assertEqual(self.revision(), before)
        st, _, rules = self.c.request("GET", "/api/v1/rules", token=self.admin)
        self.assertNotIn("games.example", json.dumps(rules))
        # Granting Skype to all of APAC changes Tokyo's document only.
        st, _, res = dry({"kind": "rule", "op": "create",
                          "body": {"scope": "region", "scope_id": region2["id"], "kind": "skype", "action": "allow"}})
        self.assertEqual((st, [o["office_id"] for o in res["offices"]]), (200, [other["id"]]), res)
        # Settings: certificates off globally changes both offices.
        st, _, res = dry({"kind": "settings", "scope": "global", "body": {"require_certificate": False}})
        self.assertEqual((st, res["changed"]), (200, 2), res)
        self.assertEqual(self.revision(), before)
        # What the store refuses is refused in a dry run, with the field; a viewer may not.
        self.assertError(dry({"kind": "office", "op": "create", "body": {"name": "", "region_id": region2["id"]}}),
                         422, "invalid", "name")
        self.assertError(dry({"kind": "rule", "op": "delete", "id": 999}), 404, "not_found")
        self.assertError(dry({"kind": "planet", "op": "create", "body": {}}), 422, "invalid", "kind")
        self.assertError(dry({"kind": "rule", "op": "explode", "body": {}}), 422, "invalid", "op")
        viewer = self.token("viewer")
        st, _, _ = dry({"kind": "rule", "op": "create", "body": rule}, token=viewer)
        self.assertEqual(st, 403)
        self.assertEqual(self.revision(), before)

class TestOpenAPI(ControllerTest):
    def routes_in_source(self):
        src = (REPO / "controller" / "api.c").read_text()
        table = src[src.index("static const route routes[]"):]
        table = table[:table.index("};")]
        return {(p, m) for p, m in re.findall(r'\{"(/api/v1/[^"]*)",\s*"([A-Z]+)"', table)}

    def test_served_document_is_the_file(self):
        st, h, served = self.c.request("GET", "/api/v1/openapi.json")
        self.assertEqual(st, 200)
        self.assertEqual(served, json.loads((REPO / "docs" / "api" / "openapi.json").read_text()))
        self.assertTrue(served["openapi"].startswith("3."))

    def test_routes_and_document_agree(self):
        st, h, doc = self.c.request("GET", "/api/v1/openapi.json")
        documented = set()
        for path, item in doc["paths"].items():
            for method in item:
                if method in ("get", "put", "post", "patch", "delete"):
                    documented.add((path, method.upper()))
        served = self.routes_in_source()
        self.assertTrue(served)
        self.assertEqual(sorted(served - documented), [], "routes the server answers but openapi.json lacks")
        self.assertEqual(sorted(documented - served), [], "openapi.json paths the server does not route")
        # and the running server answers every documented one
        for path, method in sorted(documented):
            with self.subTest(path=path, method=method):
                url = path.replace("{id}", "999999")
                if url.endswith("/stream"):
                    url += "?type=none"  # a refused filter: an open stream never ends
                body = {} if method in ("POST", "PUT", "PATCH") else None
                st, h, got = self.c.request(method, url, body, self.admin, {"If-Match": "*"})
                code = got.get("error", {}).get("code") if isinstance(got, dict) else None
                self.assertNotIn(code, ("no_route", "method_not_allowed"), (st, got))
                self.assertNotEqual(st, 500, got)


class TestConfig(unittest.TestCase):
    """-n checks the configuration; the config file is strict."""

    def run_ctl(self, *args):
        return subprocess.run([CONTROLLER] + list(args), capture_output=True, text=True, timeout=60)

    def test_check_config(self):
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "c.json"
            cfg.write_text(json.dumps({"listen": "127.0.0.1:8443", "db": str(Path(d) / "x.db"),
                                       "server_name": "controller.example"}))
            r = self.run_ctl("--config", str(cfg), "-n")
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "configuration OK"), r.stderr)
            self.assertFalse((Path(d) / "x.db").exists(), "-n must not create the database")
            cfg.write_text(json.dumps({"listen": "127.0.0.1:8443", "db": "x.db", "colour": "red"}))
            r = self.run_ctl("--config", str(cfg), "-n")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("colour", r.stderr)
            cfg.write_text(json.dumps({"listen": 8443, "db": "x.db"}))
            r = self.run_ctl("--config", str(cfg), "-n")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("listen", r.stderr)
            cfg.write_text("{not json")
            r = self.run_ctl("--config", str(cfg), "-n")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("not valid JSON", r.stderr)
            r = self.run_ctl("--db", "x.db", "--listen", "localhost:99999", "-n")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("listen", r.stderr)
            cfg.write_text(json.dumps({"db": "x.db", "cert_file": str(Path(d) / "none.pem"),
                                       "key_file": str(Path(d) / "none.key")}))
            r = self.run_ctl("--config", str(cfg), "-n")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("none.pem", r.stderr)


class TestSignIn(ControllerTest):
    """Sign-in with a password for the dashboard: the session cookie, CSRF,
    roles, sign-out and the rate limit (docs/controller.md, "Sign-in and
    sessions")."""

    def user_id(self, name):
        st, _, users = self.c.request("GET", "/api/v1/users", token=self.admin)
        self.assertEqual(st, 200, users)
        return [u for u in users["items"] if u["name"] == name][0]["id"]

    def set_password(self, name, password):
        st, _, body = self.c.request("PUT", "/api/v1/users/%d/password" % self.user_id(name),
                                     {"password": password}, self.admin)
        self.assertEqual(st, 204, body)

    def sign_in(self, name, password, headers=None):
        """Returns (status, headers, body, Cookie header value or None)."""
        st, h, body = self.c.request("POST", "/api/v1/session", {"name": name, "password": password},
                                     headers=headers)
        cookie = None
        if "set-cookie" in h:
            cookie = h["set-cookie"].split(";")[0].strip()
        return st, h, body, cookie

    def regions_named(self, name):
        return self.db("SELECT count(*) FROM regions WHERE name = ?", name)[0][0]

    def test_sign_in_csrf_and_sign_out(self):
        self.set_password("admin", "admin password one")
        stored = self.db("SELECT password_hash FROM users WHERE name = 'admin'")[0][0]
        self.assertRegex(stored, r"^scrypt\$32768\$8\$1\$[0-9a-f]{32}\$[0-9a-f]{64}$")
        st, h, body, cookie = self.sign_in("admin", "admin password one")
        self.assertEqual(st, 201, body)
        self.assertEqual(set(body), {"user", "role", "csrf_token", "expires_at"})
        self.assertEqual((body["user"], body["role"]), ("admin", "admin"))
        self.assertRegex(body["csrf_token"], r"^[0-9a-f]{64}$")
        attrs = [a.strip() for a in h["set-cookie"].split(";")]
        self.assertRegex(attrs[0], r"^pc_session=[0-9a-f]{64}$")
        self.assertIn("HttpOnly", attrs[1:])
        self.assertIn("Secure", attrs[1:])
        self.assertIn("SameSite=Strict", attrs[1:])
        self.assertIn("Path=/", attrs[1:])
        csrf = body["csrf_token"]
        ck = {"Cookie": cookie}

        st, _, who = self.c.request("GET", "/api/v1/session", headers=ck)
        self.assertEqual((st, who["user"], who["role"], who["csrf_token"]), (200, "admin", "admin", csrf))
        st, _, _ = self.c.request("GET", "/api/v1/regions", headers=ck)
        self.assertEqual(st, 200, "a read needs no CSRF header")

        # A change with the cookie alone is refused and stores nothing.
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "NoCsrf"}, headers=ck), 403, "csrf")
        self.assertEqual(self.regions_named("NoCsrf"), 0)
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "BadCsrf"},
                                        headers=dict(ck, **{"X-CSRF-Token": "0" * 64})), 403, "csrf")
        self.assertEqual(self.regions_named("BadCsrf"), 0)
        with_csrf = dict(ck, **{"X-CSRF-Token": csrf})
        st, _, r = self.c.request("POST", "/api/v1/regions", {"name": "WithCsrf"}, headers=with_csrf)
        self.assertEqual(st, 201, r)
        self.assertEqual(self.regions_named("WithCsrf"), 1)
        # The audit names the session's user.
        self.assertEqual(self.db("SELECT actor FROM audit WHERE object_type = 'region' AND action = 'create' "
                                 "ORDER BY id DESC LIMIT 1")[0][0], "admin")
        # Cross-origin: refused even with the right token; the same origin is fine.
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "Evil"},
                                        headers=dict(with_csrf, Origin="https://evil.example")), 403, "csrf")
        self.assertEqual(self.regions_named("Evil"), 0)
        st, _, r = self.c.request("POST", "/api/v1/regions", {"name": "SameOrigin"},
                                  headers=dict(with_csrf, Origin="https://127.0.0.1:%d" % self.c.port))
        self.assertEqual(st, 201, r)
        # A bearer token wins over the cookie, and needs no CSRF header.
        viewer = self.token("viewer")
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "Bearer"}, viewer, ck), 403, "forbidden")
        st, _, r = self.c.request("POST", "/api/v1/regions", {"name": "Bearer"}, self.admin, ck)
        self.assertEqual(st, 201, r)
        # Signing in from another origin is refused.
        st, h, body, c2 = self.sign_in("admin", "admin password one", {"Origin": "https://evil.example"})
        self.assertError((st, h, body), 403, "csrf")
        self.assertIsNone(c2)

        # Sign-out needs the CSRF header too; then the cookie is dead.
        self.assertError(self.c.request("DELETE", "/api/v1/session", headers=ck), 403, "csrf")
        st, h, _ = self.c.request("DELETE", "/api/v1/session", headers=with_csrf)
        self.assertEqual(st, 204)
        self.assertIn("Max-Age=0", h["set-cookie"])
        self.assertTrue(h["set-cookie"].startswith("pc_session=;"), h["set-cookie"])
        self.assertError(self.c.request("GET", "/api/v1/regions", headers=ck), 401, "unauthorized")
        self.assertError(self.c.request("GET", "/api/v1/session", headers=ck), 401, "unauthorized")
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "After"}, headers=with_csrf),
                         401, "unauthorized")
        self.assertEqual(self.regions_named("After"), 0)
        actions = [r[0] for r in self.db("SELECT action FROM audit WHERE object_type = 'session' "
                                         "AND actor = 'admin' ORDER BY id")]
        self.assertEqual(actions, ["sign-in", "sign-out"])
        # No password anywhere in the audit log.
        self.assertEqual(self.db("SELECT count(*) FROM audit WHERE coalesce(before, '') || "
                                 "coalesce(after, '') || object_id LIKE '%password one%'")[0][0], 0)

    def test_viewer_session_and_own_password(self):
        st, _, u = self.c.request("POST", "/api/v1/users", {"name": "vera", "role": "viewer"}, self.admin)
        self.assertEqual(st, 201, u)
        self.set_password("vera", "vera password one")
        st, _, body, cookie = self.sign_in("vera", "vera password one")
        self.assertEqual((st, body["role"]), (201, "viewer"), body)
        h = {"Cookie": cookie, "X-CSRF-Token": body["csrf_token"]}
        self.assertEqual(self.c.request("GET", "/api/v1/regions", headers=h)[0], 200)
        self.assertError(self.c.request("POST", "/api/v1/regions", {"name": "ByViewer"}, headers=h), 403, "forbidden")
        self.assertEqual(self.regions_named("ByViewer"), 0)
        self.assertError(self.c.request("GET", "/api/v1/users", headers=h), 403, "forbidden")
        # Her own password: the current one is required and checked.
        url = "/api/v1/users/%d/password" % u["id"]
        self.assertError(self.c.request("PUT", url, {"password": "vera password two"}, headers=h),
                         422, "missing_field", "current")
        self.assertError(self.c.request("PUT", url, {"password": "vera password two", "current": "not it at all"},
                                        headers=h), 403, "forbidden", "current")
        self.assertError(self.c.request("PUT", url, {"password": "short", "current": "vera password one"},
                                        headers=h), 422, "invalid", "password")
        st, _, r = self.c.request("PUT", url, {"password": "vera password two", "current": "vera password one"},
                                  headers=h)
        self.assertEqual(st, 204, r)
        self.assertEqual(self.c.request("GET", "/api/v1/session", headers=h)[0], 200, "her session stays")
        self.assertEqual(self.sign_in("vera", "vera password one")[0], 401)
        self.assertEqual(self.sign_in("vera", "vera password two")[0], 201)
        # Not anyone else's.
        self.assertError(self.c.request("PUT", "/api/v1/users/%d/password" % self.user_id("admin"),
                                        {"password": "taken over now", "current": "vera password two"},
                                        headers=h), 403, "forbidden")
        # An admin's reset ends her sessions.
        self.set_password("vera", "vera password three")
        self.assertError(self.c.request("GET", "/api/v1/session", headers=h), 401, "unauthorized")

    def test_wrong_password_unknown_user_and_rate_limit(self):
        self.set_password("admin", "admin password one")
        st, h, wrong, c = self.sign_in("admin", "not the password")
        self.assertError((st, h, wrong), 401, "unauthorized")
        self.assertIsNone(c)
        st, h, unknown, c = self.sign_in("nobody", "not the password")
        self.assertError((st, h, unknown), 401, "unauthorized")
        self.assertEqual(wrong["error"]["message"], unknown["error"]["message"])
        for i in range(4):
            self.assertEqual(self.sign_in("admin", "wrong %d password" % i)[0], 401)
        # The sixth: refused before the password is even checked.
        st, h, body, c = self.sign_in("admin", "admin password one")
        self.assertError((st, h, body), 429, "rate_limited")
        self.assertTrue(0 < int(h["retry-after"]) <= 300, h)
        self.assertIsNone(c)
        fails = self.db("SELECT actor, object_id FROM audit WHERE action = 'sign-in-failed' ORDER BY id")
        self.assertEqual(fails[0], ("anonymous", "admin"))
        self.assertIn(("anonymous", "nobody"), fails)
        self.assertEqual(len(fails), 6)
        self.assertEqual(self.db("SELECT count(*) FROM audit WHERE coalesce(before, '') || coalesce(after, '') "
                                 "|| object_id LIKE '%password%'")[0][0], 0)
        # 20 failures from one address: every name is refused there.
        for i in range(14):
            self.assertEqual(self.sign_in("guess%d" % i, "not the password")[0], 401)
        st, h, body, _ = self.sign_in("someone", "not the password")
        self.assertError((st, h, body), 429, "rate_limited")


class TestDashboardFiles(ControllerTest):
    """--web-root: the dashboard's built files outside /api/, with the security
    headers, cache rules and precompressed variants; nothing outside the
    directory is ever served."""

    INDEX = b"<!doctype html><title>Portcullis</title><script src=/app.0123abcd.js></script>"
    APP = b"console.log('portcullis dashboard');\n" * 50
    CSS = b"body { margin: 0 }\n"

    def controller_args(self):
        self.web = Path(tempfile.mkdtemp(prefix="pc-web-"))
        (self.web / "index.html").write_bytes(self.INDEX)
        (self.web / "app.0123abcd.js").write_bytes(self.APP)
        with gzip.open(self.web / "app.0123abcd.js.gz", "wb") as f:
            f.write(self.APP)
        (self.web / "style.css").write_bytes(self.CSS)
        (self.web / "assets").mkdir()
        (self.web / "assets" / "logo.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
        os.symlink("/etc/passwd", self.web / "passwd")
        os.symlink("/etc/passwd", self.web / "leak.txt")
        os.symlink("/etc", self.web / "etc")
        return ("--web-root", str(self.web))

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            shutil.rmtree(self.web, ignore_errors=True)

    def get(self, path, method="GET", headers=None):
        """Raw (status, headers, body bytes): no JSON parsing."""
        c = http.client.HTTPSConnection("127.0.0.1", self.c.port, context=self.c.ctx, timeout=15)
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def assertSecurityHeaders(self, h):
        self.assertEqual(h["content-security-policy"],
                         "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                         "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        self.assertEqual(h["x-content-type-options"], "nosniff")
        self.assertEqual(h["referrer-policy"], "no-referrer")
        self.assertEqual(h["x-frame-options"], "DENY")

    def test_index_and_files(self):
        self.assertIn("dashboard served from", self.first_out)
        st, h, body = self.get("/")
        self.assertEqual((st, body), (200, self.INDEX))
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        self.assertEqual(h["cache-control"], "no-cache")
        self.assertSecurityHeaders(h)
        st, h, body = self.get("/app.0123abcd.js")
        self.assertEqual((st, body), (200, self.APP), "no Accept-Encoding: the plain file")
        self.assertNotIn("content-encoding", h)
        self.assertEqual(h["content-type"], "text/javascript; charset=utf-8")
        self.assertEqual(h["cache-control"], "public, max-age=31536000, immutable")
        self.assertSecurityHeaders(h)
        st, h, body = self.get("/app.0123abcd.js", headers={"Accept-Encoding": "gzip, deflate"})
        self.assertEqual((st, h.get("content-encoding")), (200, "gzip"), h)
        self.assertEqual(gzip.decompress(body), self.APP)
        self.assertLess(len(body), len(self.APP))
        self.assertIn("accept-encoding", h["vary"].lower())
        st, h, body = self.get("/app.0123abcd.js", headers={"Accept-Encoding": "gzip;q=0, br;q=0"})
        self.assertEqual((st, body, h.get("content-encoding")), (200, self.APP, None), "q=0 refuses gzip")
        st, h, body = self.get("/style.css")
        self.assertEqual((st, body, h["content-type"]), (200, self.CSS, "text/css; charset=utf-8"))
        self.assertEqual(h["cache-control"], "no-cache", "no hash in the name: revalidated")
        st, h, body = self.get("/assets/logo.svg")
        self.assertEqual((st, h["content-type"]), (200, "image/svg+xml"))
        st, h, body = self.get("/", method="HEAD")
        self.assertEqual((st, body), (200, b""))
        self.assertEqual(h["content-length"], str(len(self.INDEX)))

    def test_app_routes_and_missing_files(self):
        for path in ("/some/route", "/offices", "/policy/regions/3"):
            with self.subTest(path=path):
                st, h, body = self.get(path)
                self.assertEqual((st, body), (200, self.INDEX), "a dashboard route gets index.html")
                self.assertEqual(h["cache-control"], "no-cache")
                self.assertSecurityHeaders(h)
        for path in ("/missing.js", "/assets/missing.png", "/assets", "/assets/"):
            with self.subTest(path=path):
                st, h, body = self.get(path)
                self.assertEqual(st, 404, body)
                self.assertTrue(h["content-type"].startswith("text/plain"), h)
                self.assertSecurityHeaders(h)
        # /api/ stays the API's: JSON errors, never index.html.
        st, h, body = self.c.request("GET", "/api/v1/nothing-here")
        self.assertEqual((st, body["error"]["code"]), (404, "no_route"), body)

    def test_nothing_outside_the_root(self):
        passwd = Path("/etc/passwd").read_bytes()
        for path in ("/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/a/%2F../x", "/%2Fetc%2Fpasswd",
                     "/..%2F..%2Fetc%2Fpasswd", "/passwd", "/leak.txt", "/etc/passwd", "/etc/hostname",
                     "/assets/../../etc/passwd", "/./index.html", "/.hidden", "/index.html%00.js",
                     "/assets/..%5C..%5Cetc%5Cpasswd", "//etc/passwd"):
            with self.subTest(path=path):
                st, h, body = self.get(path)
                self.assertEqual(st, 404, (path, body[:200]))
                self.assertNotIn(b"root:", body)
                self.assertNotEqual(body, passwd)
                self.assertSecurityHeaders(h)

    def test_other_methods(self):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                st, h, body = self.get("/", method=method)
                self.assertEqual(st, 405, body)
                self.assertEqual(h["allow"], "GET, HEAD")
                self.assertSecurityHeaders(h)
        st, h, body = self.get("/some/route", method="POST")
        self.assertEqual(st, 405)


class TestDashboardNotBuilt(ControllerTest):
    """Without --web-root (or with a directory that has no index.html) the
    controller still starts and "/" says the dashboard is not built."""

    def check_not_built(self):
        st, h, body = self.c.request("GET", "/")
        self.assertEqual(st, 200, body)
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        self.assertIn(b"The Portcullis dashboard is not built here", body)
        self.assertIn(b"/api/v1/", body)
        self.assertIn(b"--web-root", body)
        self.assertIn("default-src 'self'", h["content-security-policy"])
        self.assertEqual(self.c.request("GET", "/api/v1/health")[0], 200, "the API works without it")
        st, h, body = self.c.request("GET", "/app.0123abcd.js")
        self.assertEqual(st, 404, body)

    def test_no_web_root(self):
        self.assertIn("no dashboard", self.first_out)
        self.check_not_built()

    def test_empty_web_root(self):
        self.c.stop()
        empty = Path(self.tmp) / "dist"
        empty.mkdir()
        self.c.args = ["--web-root", str(empty)]
        self.c.start()
        self.assertIn("no readable index.html", self.c.err.read_text())
        self.check_not_built()


def main():
    global CONTROLLER
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--controller", default=CONTROLLER)
    ns, rest = ap.parse_known_args()
    CONTROLLER = os.path.abspath(ns.controller) if ns.controller else ""
    if not CONTROLLER or not os.access(CONTROLLER, os.X_OK):
        print("test_controller: portcullis-controller not found (pass --controller PATH or set "
              "PORTCULLIS_CONTROLLER): %r" % CONTROLLER, file=sys.stderr)
        sys.exit(2)
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
