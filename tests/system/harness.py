"""harness.py - what every system test shares: a lab of test certificates and
origin servers on loopback, a real portcullis-node started per test in its own
temp dir and mount namespace, real clients, and the event log.

Stdlib only. The lab is built once per test process (certificates from the
openssl CLI, origins as threads of this process); every test gets a fresh node
so its events, probe cache and policy are its own. tearDown fails the test
when the node wrote any sanitizer line or did not exit 0 on SIGTERM.

Names: origin.test, skype.com, www.skype.com, notskype.com and selfsigned.test
resolve to 127.0.0.1 inside the node's mount namespace, where a test hosts
file is bind-mounted on /etc/hosts, so the proxy's own getaddrinfo finds them.
Clients never resolve them: they go through the proxy.

Tests that need a network of their own (transparent mode) make it with
Namespaces (network namespaces deleted at close or exit) and in_netns, which
puts sockets of this process, servers or clients, into one of them.
"""

import argparse
import atexit
import contextlib
import copy
import ctypes
import hashlib
import http.server
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CASES_DIR = HERE / "cases"

NAMES = ["origin.test", "skype.com", "www.skype.com", "notskype.com"]
SELF_NAME = "selfsigned.test"
BOARD_SOURCE = "127.0.0.2"

# Any of these in the node's stderr fails the test.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                   "ERROR: ThreadSanitizer", "WARNING: ThreadSanitizer")

# Bounds for every wait; none of them is slept through when things work.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
EVENT_TIMEOUT = 5.0
IO_TIMEOUT = 8.0
CLIENT_TIMEOUT = 30.0

BIG_SIZE = 8 * 1024 * 1024
MZ_BODY = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 56 + b"This program cannot be run in DOS mode.\r\n"

NODE_PATH = os.environ.get("PORTCULLIS_NODE", "")
KEEP = os.environ.get("PORTCULLIS_KEEP", "") not in ("", "0")


def big_body():
    """The /big body: 8 MiB, deterministic, not compressible to nothing."""
    block = hashlib.sha256(b"portcullis").digest() * 2048  # 64 KiB
    return block * (BIG_SIZE // len(block))


# --- certificates ------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:${ENV::PC_SAN}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(args, cwd, env=None):
    r = subprocess.run(["openssl"] + args, cwd=cwd, env=env, capture_output=True,
                       timeout=CLIENT_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), r.stderr.decode(errors="replace")))


def make_certs(d):
    """A test CA, one CA-signed leaf per name and a self-signed leaf.
    Returns {"ca": path, name: (cert, key), SELF_NAME: (cert, key)}."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(_OPENSSL_CNF)
    env = dict(os.environ, PC_SAN="unused")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(["req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", "-subj",
              "/CN=Portcullis system-test CA", "-days", "30", "-keyout", "ca.key", "-out", "ca.pem"] + key,
             d, env)
    out = {"ca": str(d / "ca.pem")}
    for name in NAMES:
        env = dict(os.environ, PC_SAN=name)
        _openssl(["req", "-new", "-config", "openssl.cnf", "-subj", "/CN=" + name, "-keyout",
                  name + ".key", "-out", name + ".csr"] + key, d, env)
        _openssl(["x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "30", "-extfile", "openssl.cnf", "-extensions", "leaf",
                  "-out", name + ".pem"], d, env)
        out[name] = (str(d / (name + ".pem")), str(d / (name + ".key")))
    env = dict(os.environ, PC_SAN=SELF_NAME)
    _openssl(["req", "-x509", "-config", "openssl.cnf", "-extensions", "leaf", "-subj", "/CN=" + SELF_NAME,
              "-days", "30", "-keyout", SELF_NAME + ".key", "-out", SELF_NAME + ".pem"] + key, d, env)
    out[SELF_NAME] = (str(d / (SELF_NAME + ".pem")), str(d / (SELF_NAME + ".key")))
    return out


# --- origin servers ----------------------------------------------------------

class OriginHandler(http.server.BaseHTTPRequestHandler):
    """The origin every test talks to through the proxy. It tells what it
    received: X-Origin-Request is the request line as the origin saw it."""

    protocol_version = "HTTP/1.1"
    server_version = "PortcullisTestOrigin/1"
    timeout = 15

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body, ctype="text/plain", extra=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Origin-Request", self.requestline)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self):
        path = self.path.split("?", 1)[0]
        host = (self.headers.get("Host") or "").lower()
        if path == "/hello":
            return 200, ("hello from %s\n" % host).encode(), "text/plain", None
        if path == "/SkypeSetup/skype.exe":
            return 200, MZ_BODY, "application/octet-stream", None
        if path == "/setup":
            return (200, b"#!/bin/sh\necho this is not a PE file\n", "application/octet-stream",
                    {"Content-Disposition": 'attachment; filename="setup.exe"'})
        if path == "/mz":
            return 200, MZ_BODY, "application/octet-stream", None
        if path == "/big":
            return 200, self.server.big, "application/octet-stream", None
        if path == "/truncated":
            # Promises 1000 bytes, sends 10, closes: a broken framing.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            return None
        return 404, b"not found\n", "text/plain", None

    def do_GET(self):
        r = self._route()
        if r is not None:
            self._send(*r)

    do_HEAD = do_GET

    def do_POST(self):
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                data += self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    break
        else:
            n = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(n) if n else b""
        self._send(200, b"posted %d bytes\n" % len(data))


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # clients the proxy cut off are the point of many tests


class HTTPOrigin(_QuietServer):
    def __init__(self, addr=("127.0.0.1", 0)):
        super().__init__(addr, OriginHandler)
        self.big = big_body()


class TLSOrigin(_QuietServer):
    """HTTPS origin: one TLS version only, certificate chosen by SNI. The
    handshake runs in the connection's thread, never in the accept loop."""

    def __init__(self, version, certs, default_name, addr=("127.0.0.1", 0)):
        self._ctxs = {}
        for name, (cert, key) in certs.items():
            self._ctxs[name] = self._context(version, cert, key)
        self.ctx = self._ctxs[default_name]
        self.ctx.sni_callback = self._sni
        super().__init__(addr, OriginHandler)
        self.big = big_body()

    @staticmethod
    def _context(version, cert, key):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = version
        ctx.maximum_version = version
        ctx.load_cert_chain(cert, key)
        return ctx

    def _sni(self, sslobj, name, ctx):
        if name in self._ctxs:
            sslobj.context = self._ctxs[name]
        return None

    def finish_request(self, request, client_address):
        request.settimeout(15)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
            # A clean TLS close (close_notify): OpenSSL 3 clients report a
            # bare EOF as an error.
            tls.settimeout(2)
            tls.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        finally:
            tls.close()


class JunkServer:
    """A server that answers whatever it receives with bytes of no protocol
    (what a Skype relay looks like on port 80 or 443), then closes."""

    JUNK = b"\x00\x01SKYPE-RELAY\x00" + bytes(range(0x80, 0xc0))

    def __init__(self, addr=("127.0.0.1", 0)):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            c.settimeout(10)
            if c.recv(65536):
                c.sendall(self.JUNK)
                c.settimeout(2)
                while c.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stopping = True
        self.sock.close()


class Listener:
    """A TCP port with something behind it that the policy does not list."""

    def __init__(self, addr=("127.0.0.1", 0)):
        self.sock = socket.socket()
        self.sock.bind(addr)
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def _refusing_socket():
    """A bound socket that does not listen: its port stays ours and every
    connection to it is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


class Lab:
    """Certificates, origins and the base policy, once per test process."""

    def __init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pc-system-"))
        self.certs = make_certs(self.tmp / "certs")
        self.ca = self.certs["ca"]
        leafs = {n: self.certs[n] for n in NAMES}
        selfc = {SELF_NAME: self.certs[SELF_NAME]}
        self.servers = {
            "http": HTTPOrigin(),
            "tls12": TLSOrigin(ssl.TLSVersion.TLSv1_2, leafs, "origin.test"),
            "tls13": TLSOrigin(ssl.TLSVersion.TLSv1_3, leafs, "origin.test"),
            "self12": TLSOrigin(ssl.TLSVersion.TLSv1_2, selfc, SELF_NAME),
            "self13": TLSOrigin(ssl.TLSVersion.TLSv1_3, selfc, SELF_NAME),
        }
        self.threads = []
        for srv in self.servers.values():
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self.threads.append(t)
        self.unlisted = Listener()
        self.junk = {"junk_http": JunkServer(), "junk_tls": JunkServer()}
        self.ports = {k: s.server_address[1] for k, s in self.servers.items()}
        self.ports["unlisted"] = self.unlisted.port
        for k, j in self.junk.items():
            self.ports[k] = j.port
        self.refusing = _refusing_socket()
        self.ports["closed"] = self.refusing.getsockname()[1]
        self.hosts = self.tmp / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                              "127.0.0.1 %s\n" % " ".join(NAMES + [SELF_NAME]))
        self.big = self.servers["http"].big

    def close(self):
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()
        self.unlisted.close()
        self.refusing.close()
        for j in self.junk.values():
            j.close()
        if not KEEP:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def skype_list(self):
        f = REPO / "shared" / "lists" / "skype.json"
        if f.exists():
            return json.loads(f.read_text())
        return {"category": "skype", "domains": ["skype.com"], "url_suffixes": ["skype.exe"]}

    def policy(self, version=1):
        """The base policy of the suite: the lab's ports, the test CA, the
        shipped Skype list, group board = 127.0.0.2/32 with the exception."""
        p = self.ports
        return {
            "schema": "portcullis.policy/1",
            "version": version,
            "proxy": {
                "ports": {str(p["http"]): "http", str(p["tls12"]): "tls", str(p["tls13"]): "tls",
                          str(p["self12"]): "tls", str(p["self13"]): "tls", str(p["closed"]): "http",
                          str(p["junk_http"]): "http", str(p["junk_tls"]): "tls"},
                "ca_file": self.ca,
                "header_timeout_ms": 5000,
                "connect_timeout_ms": 5000,
                "probe_timeout_ms": 5000,
            },
            "lists": {"skype": self.skype_list()},
            "defaults": {
                "use_lists": ["skype"],
                "blocked_domains": [],
                "blocked_prefixes": [],
                "blocked_url_suffixes": [],
                "block_executables": True,
                "require_certificate": True,
                "skype_exception": False,
            },
            "groups": [{"name": "board", "sources": [BOARD_SOURCE + "/32"], "skype_exception": True}],
        }

    def subst(self, text):
        """{http}, {tls12}, ... in case files become the lab's ports."""
        return re.sub(r"\{(\w+)\}", lambda m: str(self.ports[m.group(1)]), text)


_lab = None
_lab_lock = threading.Lock()


def lab():
    global _lab
    with _lab_lock:
        if _lab is None:
            _lab = Lab()
            atexit.register(_lab.close)
        return _lab


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- the node ----------------------------------------------------------------

def node_path():
    if not NODE_PATH:
        raise RuntimeError("no portcullis-node: pass --node PATH or set PORTCULLIS_NODE")
    return NODE_PATH


def sanitizer_env():
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:" + env.get("ASAN_OPTIONS", "")
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:" + env.get("UBSAN_OPTIONS", "")
    return env


def sanitizer_lines(text):
    return [l for l in text.splitlines() if any(m in l for m in SANITIZER_MARKS)]


class Node:
    """One portcullis-node on listen (default 127.0.0.1:<free port>) with its
    own policy file, event log and stderr file in dir. wrap is
    a command prefix that execs what follows (e.g. ip netns exec NS), so the
    pid signalled stays the node's."""

    def __init__(self, lab_, dir_, policy, threads=None, extra_args=(), listen="127.0.0.1:0", wrap=()):
        self.lab = lab_
        self.dir = Path(dir_)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.policy_file = self.dir / "policy.json"
        self.events_file = self.dir / "events.jsonl"
        self.stderr_file = self.dir / "node.stderr"
        self.write_policy(policy)
        self.threads = threads
        self.extra_args = list(extra_args)
        self.listen = listen
        self.wrap = list(wrap)
        self.proc = None
        self.host = None
        self.port = None
        self.returncode = None
        self._stderr_fh = None
        self._seen = 0  # events consumed by take_events

    def write_policy(self, policy):
        self.policy = policy
        tmp = self.policy_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(policy, indent=1) if isinstance(policy, dict) else policy)
        os.replace(tmp, self.policy_file)

    def start(self):
        args = [node_path(), "--policy", str(self.policy_file), "--listen", self.listen,
                "--events", str(self.events_file)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        args += self.extra_args
        # A private mount namespace: the test hosts file is /etc/hosts for the
        # node only; exec keeps the node's pid the one we signal.
        cmd = self.wrap + ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                           str(self.lab.hosts)] + args
        self._stderr_fh = open(self.stderr_file, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._stderr_fh,
                                     stderr=self._stderr_fh, env=sanitizer_env())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = re.search(r"listening on (\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)", self.stderr())
            if m:
                self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise AssertionError("portcullis-node exited with %s before listening:\n%s"
                                     % (self.proc.returncode, self.stderr()))
            time.sleep(0.02)
        raise AssertionError("portcullis-node did not print 'listening on' in %ss:\n%s"
                             % (START_TIMEOUT, self.stderr()))

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def stderr(self):
        try:
            return self.stderr_file.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_stderr(self, pattern, timeout=EVENT_TIMEOUT, after=0):
        """Waits until stderr (from character offset after) matches pattern."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.stderr()[after:])
            if m:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError("node stderr never matched %r in %ss:\n%s"
                                     % (pattern, timeout, self.stderr()))
            time.sleep(0.02)

    def stop(self):
        """SIGTERM, wait; returns the exit code (idempotent)."""
        if self.proc is None:
            return None
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = "did not stop within %ss of SIGTERM (killed)" % STOP_TIMEOUT
            self._stderr_fh.close()
        return self.returncode

    # events

    def events(self):
        try:
            raw = self.events_file.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise AssertionError("event line is not JSON (%s): %r" % (e, line))
        return out

    def take_events(self):
        """Events written since the last take_events."""
        ev = self.events()
        new = ev[self._seen:]
        self._seen = len(ev)
        return new

    def mark(self):
        self._seen = len(self.events())

    def wait_event(self, reason=None, type_=None, timeout=EVENT_TIMEOUT, **fields):
        """The first event since the last mark/take with this reason (and
        type and fields); fails with the events seen when none comes."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events()[self._seen:]
            for e in ev:
                if reason is not None and e.get("reason") != reason:
                    continue
                if type_ is not None and e.get("type") != type_:
                    continue
                if any(e.get(k) != v for k, v in fields.items()):
                    continue
                return e
            if time.monotonic() >= deadline:
                want = dict(fields, reason=reason, type=type_)
                raise AssertionError("no event %s within %ss; events since mark:\n%s"
                                     % (want, timeout, "\n".join(json.dumps(x) for x in ev) or "(none)"))
            time.sleep(0.02)


# --- network namespaces ------------------------------------------------------

CLONE_NEWNET = 0x40000000
_libc = None


def _setns(fd, what):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns(%s): %s" % (what, os.strerror(e)))


@contextlib.contextmanager
def in_netns(name):
    """Runs the block with the calling thread in the network namespace name
    (made by `ip netns add`). A socket created inside stays in that namespace
    after the block, so servers and clients of this process can live in a
    test's namespaces: create the socket inside, use it anywhere."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            _setns(target, name)
            try:
                yield
            finally:
                _setns(home, "the test's own namespace")
        finally:
            os.close(target)
    finally:
        os.close(home)


def netns_connect(ns, addr, source=None, timeout=IO_TIMEOUT):
    """A TCP connection to addr (host, port) from network namespace ns,
    optionally bound to source."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect(addr)
    except BaseException:
        s.close()
        raise
    return s


class Namespaces:
    """Network namespaces one test process makes, named pcns<tag>-<role>, the
    tag being this process's pid (6 hex digits) and a random byte, so
    concurrent runs never meet. close() deletes them (and with them every
    interface inside); it is idempotent and also runs at exit, so a failed
    setup leaves nothing behind. Only interfaces created inside these
    namespaces are ever touched."""

    PREFIX = "pcns"

    def __init__(self, *roles):
        self.sweep()
        self.tag = "%06x%s" % (os.getpid() & 0xFFFFFF, secrets.token_hex(1))
        self.names = {r: "%s%s-%s" % (self.PREFIX, self.tag, r) for r in roles}
        self._made = []
        atexit.register(self.close)
        for r in roles:
            self.ip("netns", "add", self.names[r])
            self._made.append(self.names[r])
            self.ip("-n", self.names[r], "link", "set", "lo", "up")

    def __getitem__(self, role):
        return self.names[role]

    def ip(self, *args):
        r = subprocess.run(["ip"] + list(args), capture_output=True, timeout=CLIENT_TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.decode(errors="replace").strip()))
        return r.stdout.decode()

    def cmd(self, role, *cmd):
        """The command line that runs cmd inside role's namespace."""
        return ["ip", "netns", "exec", self.names[role]] + list(cmd)

    def run(self, role, *cmd, check=True, input_=None, timeout=CLIENT_TIMEOUT):
        r = subprocess.run(self.cmd(role, *cmd), input=input_, capture_output=True, timeout=timeout,
                           env=client_env())
        if check and r.returncode != 0:
            raise RuntimeError("%s in %s: exit %s: %s" % (" ".join(cmd), role, r.returncode,
                                                         r.stderr.decode(errors="replace").strip()))
        return r

    def veth(self, role_a, name_a, role_b, name_b):
        """A veth pair created directly inside the two namespaces, both ends up.
        Interface names are at most 15 bytes."""
        self.ip("link", "add", name_a, "netns", self.names[role_a], "type", "veth",
                "peer", "name", name_b, "netns", self.names[role_b])
        self.ip("-n", self.names[role_a], "link", "set", name_a, "up")
        self.ip("-n", self.names[role_b], "link", "set", name_b, "up")

    def close(self):
        while self._made:
            subprocess.run(["ip", "netns", "del", self._made.pop()], capture_output=True,
                           timeout=CLIENT_TIMEOUT)

    @classmethod
    def sweep(cls):
        """Deletes the namespaces of earlier runs whose process is gone: a run
        killed by SIGKILL (a CTest timeout) cannot clean up after itself."""
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=CLIENT_TIMEOUT)
        for line in r.stdout.decode(errors="replace").splitlines():
            m = re.match(r"(%s([0-9a-f]{6})[0-9a-f]{2}-\w+)( |$)" % cls.PREFIX, line)
            if not m:
                continue
            try:
                os.kill(int(m.group(2), 16), 0)
                continue  # its run is alive (or the pid was reused: keep it)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True, timeout=CLIENT_TIMEOUT)


# --- clients -----------------------------------------------------------------

def client_env(**extra):
    """A clean environment: no proxy variables unless given."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C", "LC_ALL": "C"}
    env.update(extra)
    return env


def run(cmd, input_=None, timeout=CLIENT_TIMEOUT, env=None):
    return subprocess.run(cmd, input=input_, capture_output=True, timeout=timeout,
                          env=env or client_env())


class HTTPReply:
    def __init__(self, status, reason, headers, body, raw):
        self.status, self.reason, self.headers, self.body, self.raw = status, reason, headers, body, raw

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self):
        return "HTTPReply(%s %s, %r, body=%r)" % (self.status, self.reason, self.headers, self.body[:200])


def parse_head(data):
    """(status, reason, headers, rest) of an HTTP response head at data's
    start, or None when data holds no complete head."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
    if not m:
        raise AssertionError("not an HTTP status line: %r" % lines[0])
    headers = []
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers.append((k.strip(), v.strip()))
    return int(m.group(1)), m.group(2), headers, data[end + 4:]


def connect(port, source=None, timeout=IO_TIMEOUT):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def recv_until_closed(s, timeout=IO_TIMEOUT, limit=1 << 24):
    """Everything the peer sends until it closes. Returns (data, how) with how
    "eof" or "reset"; fails when the peer keeps the connection open."""
    s.settimeout(timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < limit:
        if time.monotonic() >= deadline:
            raise AssertionError("the connection was not closed within %ss (got %r)" % (timeout, buf[:300]))
        try:
            d = s.recv(65536)
        except socket.timeout:
            raise AssertionError("the connection was not closed within %ss (got %r)" % (timeout, buf[:300]))
        except (ConnectionResetError, BrokenPipeError):
            return buf, "reset"
        if not d:
            return buf, "eof"
        buf += d
    raise AssertionError("the peer sent more than %d bytes without closing" % limit)


def read_response(s, buf=b"", timeout=IO_TIMEOUT, head_only_method=False):
    """Reads one complete response (Content-Length or chunked or to close)
    from s; returns (HTTPReply, leftover bytes)."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout

    def more():
        if time.monotonic() >= deadline:
            raise AssertionError("no complete response within %ss (got %r)" % (timeout, buf[:300]))
        d = s.recv(65536)
        return d

    while True:
        h = parse_head(buf)
        if h:
            break
        d = more()
        if not d:
            raise AssertionError("connection closed before a response head (got %r)" % buf[:300])
        buf += d
    status, reason, headers, rest = h
    rep = HTTPReply(status, reason, headers, b"", buf)
    if head_only_method or status in (204, 304) or 100 <= status < 200:
        return rep, rest
    cl = rep.header("Content-Length")
    if cl is not None:
        n = int(cl)
        while len(rest) < n:
            d = more()
            if not d:
                raise AssertionError("body cut at %d of %d bytes" % (len(rest), n))
            rest += d
        rep.body = rest[:n]
        return rep, rest[n:]
    if (rep.header("Transfer-Encoding") or "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                d = more()
                if not d:
                    raise AssertionError("chunked body cut")
                rest += d
            line, _, rest = rest.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(rest) < size + 2:
                d = more()
                if not d:
                    raise AssertionError("chunked body cut")
                rest += d
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                rep.body = body
                return rep, rest
    while True:
        d = more()
        if not d:
            rep.body = rest
            return rep, b""
        rest += d


def client_hello(sni, max_version=None):
    """A real ClientHello from Python's ssl (OpenSSL), for sni."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    if not data or data[0] != 0x16:
        raise RuntimeError("ssl produced no ClientHello")
    return data


def seeded_bytes(n, seed):
    return random.Random(seed).randbytes(n)


def open_tunnel(port, target, source=None, expect=200):
    """CONNECT target through the proxy; returns the socket after the 2xx
    (or the reply when expect is not 200)."""
    s = connect(port, source)
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    rep, rest = read_response(s, head_only_method=True)
    if expect == 200:
        if rep.status != 200:
            raise AssertionError("CONNECT %s: expected 200, got %r" % (target, rep))
        if rest:
            raise AssertionError("bytes after the CONNECT reply: %r" % rest[:100])
        return s
    # Not a tunnel: the reply has a body (the block page); read it all.
    body, _ = recv_until_closed(s)
    rep.body = rest + body
    return s, rep


# --- the test case -----------------------------------------------------------

class NodeTestCase(unittest.TestCase):
    """A test with its own node. Class attributes shape it:
    policy_overrides (merged into the lab's base policy), threads."""

    policy_overrides = {}
    threads = None
    start_node = True

    @classmethod
    def setUpClass(cls):
        cls.lab = lab()

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix=self.id().rsplit(".", 1)[-1][:40] + "-", dir=self.lab.tmp))
        self.node = None
        self._nodes = []
        if self.start_node:
            self.node = self.new_node()

    def policy(self, overrides=None, version=1):
        p = deep_merge(self.lab.policy(version), self.policy_overrides)
        return deep_merge(p, overrides or {})

    def new_node(self, policy=None, threads=None, name="node"):
        n = Node(self.lab, self.tmp / name, policy if policy is not None else self.policy(),
                 threads=threads or self.threads)
        self._nodes.append(n)
        n.start()
        return n

    def tearDown(self):
        problems = []
        for n in self._nodes:
            rc = n.stop()
            err = n.stderr()
            bad = sanitizer_lines(err)
            if bad:
                problems.append("%s: sanitizer output:\n%s" % (n.dir.name, err))
            elif rc != 0:
                problems.append("%s: exit status %s after SIGTERM (want 0):\n%s" % (n.dir.name, rc, err[-4000:]))
        if not KEEP:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if problems:
            self.fail("\n".join(problems))

    # assertions and clients

    def assertBlockPage(self, reply, reason, status=403):
        self.assertEqual(reply.status, status, "expected a %d page for %s, got %r" % (status, reason, reply))
        self.assertEqual(reply.header("X-Portcullis-Reason"), reason, repr(reply))
        self.assertIn(("<code>%s</code>" % reason).encode(), reply.body, repr(reply))

    def assertNoBlocks(self, node=None):
        """Stops the node (so every event is written) and asserts none of its
        events is a block."""
        node = node or self.node
        node.stop()
        blocks = [e for e in node.events() if e.get("type") == "block"]
        self.assertEqual(blocks, [], "unexpected block events")

    def curl(self, *args, source=None, node=None, proxy=True, timeout=CLIENT_TIMEOUT):
        """curl through the node; returns (returncode, stdout, stderr)."""
        node = node or self.node
        cmd = ["curl", "-sS", "--max-time", "20"]
        if proxy:
            cmd += ["-x", node.url]
        if source:
            cmd += ["--interface", source]
        r = run(cmd + list(args), timeout=timeout)
        return r.returncode, r.stdout, r.stderr.decode(errors="replace")

    def curl_reply(self, url, *args, source=None, node=None):
        """curl -i through the node; returns (returncode, HTTPReply or None)."""
        rc, out, err = self.curl("-i", url, *args, source=source, node=node)
        if not out:
            return rc, None
        # curl -i prints the CONNECT reply head first for https through a proxy.
        while True:
            h = parse_head(out)
            if h is None:
                return rc, None
            status, reason, headers, rest = h
            if status == 200 and reason.lower().startswith("connection established") and rest.startswith(b"HTTP/"):
                out = rest
                continue
            return rc, HTTPReply(status, reason, headers, rest, out)

    def raw_request(self, data, source=None, node=None):
        """Sends raw bytes to the proxy and reads until it closes."""
        node = node or self.node
        s = connect(node.port, source)
        try:
            s.sendall(data)
            return recv_until_closed(s)
        finally:
            s.close()


# --- entry point ---------------------------------------------------------------

def main(suite=None, verbosity=2):
    """python3 test_x.py --node PATH [unittest args]: runs one file (or the
    given suite, for run.py)."""
    global NODE_PATH
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--node", default=NODE_PATH)
    ns, rest = ap.parse_known_args()
    NODE_PATH = os.path.abspath(ns.node) if ns.node else ""
    os.environ["PORTCULLIS_NODE"] = NODE_PATH
    if not NODE_PATH or not os.access(NODE_PATH, os.X_OK):
        print("harness: portcullis-node not found (pass --node PATH or set PORTCULLIS_NODE): %r"
              % NODE_PATH, file=sys.stderr)
        sys.exit(2)
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        print("harness: 'unshare --mount' is not permitted here; the system tests need root "
              "(or CAP_SYS_ADMIN) to give the node its own /etc/hosts", file=sys.stderr)
        sys.exit(2)
    if suite is not None:
        result = unittest.TextTestRunner(verbosity=verbosity).run(suite)
        sys.exit(0 if result.wasSuccessful() else 1)
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=verbosity)
