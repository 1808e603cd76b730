"""lab.py - the firewall lab (docs/lab.md): an office LAN, its gateway running
portcullis-node, and an "internet" with a web server, a mail server and a
fake Skype supernode, all in network namespaces this module makes and deletes.

  staff  192.0.2.10/24   (group defaults: Skype blocked)      default via 192.0.2.1
  board  192.0.2.130/24  (group board: the Skype exception)   default via 192.0.2.1
  mail   192.0.2.25/24   (the office's mail server)           default via 192.0.2.1
    |  each an eth0, a veth into the gateway's bridge
  gw     lan0 (bridge) 192.0.2.1/24 | wan0 203.0.113.1/24, ip_forward=1
         portcullis-node --firewall --lan-interface lan0 --transparent --listen 192.0.2.1:3129
    |
  inet   eth0 203.0.113.254/24; on lo, 198.51.100.x/32:
           198.51.100.80   www.example.test (and download.skype.com): HTTP :80,
                           HTTPS :443 (test CA), /download/skype.exe
           198.51.100.25   mail.example.test: SMTP banner on :25
         203.0.113.7       the fake Skype supernode (supernode.py)
         203.0.113.10      portcullis-controller (REST :8443, hub :8444), when started

Routes exist only between 192.0.2.0/24, 203.0.113.0/24 and 198.51.100.0/24 and
no namespace has a default route out, so no traffic leaves the lab. There is
no NAT: the internet sees LAN addresses, as the firewall does.

Namespaces are named pclab<pid><random>-<role>. They are deleted (and with
them every interface, nftables table and socket in them) on close(), at exit
and on SIGTERM/Ctrl-C; every process the lab starts dies with it (parent-death
signal). A new lab first removes what an earlier, killed run left behind.

By hand (root):
  python3 tests/lab/lab.py up --node build/node/portcullis-node
prints the commands to try (the Skype client from each group, curl) and
keeps the lab up until Ctrl-C. `python3 lab.py sweep` removes leftovers.
"""

import argparse
import atexit
import contextlib
import ctypes
import http.server
import json
import os
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import supernode as sn  # noqa: E402
import skype_client  # noqa: E402

PREFIX = "pclab"

# The LAN.
LAN_NET = "192.0.2.0/24"
GW_LAN = "192.0.2.1"
STAFF = "192.0.2.10"
BOARD = "192.0.2.130"
BOARD_NET = "192.0.2.128/25"
LAN_MAIL = "192.0.2.25"
HOSTS = {"staff": STAFF, "board": BOARD, "mail": LAN_MAIL}
LAN_IF = "lan0"  # the gateway's bridge: the node's --lan-interface
PROXY_PORT = 3129

# The internet.
GW_WAN = "203.0.113.1"
INET_GW = "203.0.113.254"
SUPERNODE = "203.0.113.7"
CONTROLLER = "203.0.113.10"
WEB = "198.51.100.80"
WEB_NAME = "www.example.test"
SKYPE_DOWNLOAD = "download.skype.com"  # a second name of the web server, on the Skype list
MAIL = "198.51.100.25"
REST_PORT = 8443
HUB_PORT = 8444

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")
MZ_BODY = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 56 + b"This program cannot be run in DOS mode.\r\n"
TIMEOUT = 30.0
KEEP = os.environ.get("PORTCULLIS_KEEP", "") not in ("", "0")


def log(msg):
    print("lab: " + msg, file=sys.stderr, flush=True)


def wait_for(what, fn, timeout=TIMEOUT, interval=0.02):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s (last: %r)" % (timeout, what, last))


def die_with_parent():
    """In a child before exec: SIGTERM when the lab process dies, even by
    SIGKILL, so nothing the lab started outlives it. Its own process group:
    Ctrl-C in the terminal reaches only the lab, which stops its daemons in
    order (a daemon that got the terminal's SIGINT too would be stopping when
    the lab's SIGTERM comes, and die of that second signal)."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgid(0, 0)


# --- network namespaces ------------------------------------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd, what):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns(%s): %s" % (what, os.strerror(e)))


@contextlib.contextmanager
def in_netns(name):
    """The block runs with the calling thread in namespace name; a socket made
    inside stays there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open("/run/netns/" + name, os.O_RDONLY)
        try:
            _setns(target, name)
            try:
                yield
            finally:
                _setns(home, "the lab's own namespace")
        finally:
            os.close(target)
    finally:
        os.close(home)


def socket_factory(ns):
    """make_socket(family, type) for supernode.py / skype_client.py: a socket in ns."""
    def make(fam, typ):
        with in_netns(ns):
            return socket.socket(fam, typ)
    return make


def _ip(*args, check=True):
    r = subprocess.run(["ip"] + list(args), capture_output=True, timeout=TIMEOUT)
    if check and r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.decode(errors="replace").strip()))
    return r.stdout.decode()


def sweep():
    """Removes namespaces of earlier lab runs whose process is gone, first
    stopping what still runs inside them (processes of that run)."""
    removed = []
    for line in _ip("netns", "list").splitlines():
        m = re.match(r"(%s([0-9a-f]{6})[0-9a-f]{2}-\w+)( |$)" % PREFIX, line)
        if not m:
            continue
        try:
            os.kill(int(m.group(2), 16), 0)
            continue  # its run is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for pid in _ip("netns", "pids", m.group(1), check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", m.group(1), check=False)
        removed.append(m.group(1))
    return removed


class Namespaces:
    """Namespaces named <prefix><tag>-<role>. The lab's tag is its pid and a
    random byte (so sweep() can tell a dead run's); the demo passes its own
    prefix and tag "" and removes its leftovers itself (tests/lab/demo.py)."""

    def __init__(self, roles, prefix=PREFIX, tag=None):
        left = sweep()
        if left:
            log("removed %d namespace(s) of an earlier run: %s" % (len(left), ", ".join(left)))
        self.tag = tag if tag is not None else "%06x%s" % (os.getpid() & 0xFFFFFF, secrets.token_hex(1))
        self.names = {r: "%s%s-%s" % (prefix, self.tag, r) for r in roles}
        self._made = []
        for r in roles:
            _ip("netns", "add", self.names[r])
            self._made.append(self.names[r])
            _ip("-n", self.names[r], "link", "set", "lo", "up")

    def __getitem__(self, role):
        return self.names[role]

    def ip(self, role, *args):
        return _ip("-n", self.names[role], *args)

    def cmd(self, role, *cmd):
        return ["ip", "netns", "exec", self.names[role]] + [str(c) for c in cmd]

    def run(self, role, *cmd, check=True, input_=None, timeout=TIMEOUT, env=None):
        r = subprocess.run(self.cmd(role, *cmd), input=input_, capture_output=True, timeout=timeout,
                           env=env or clean_env())
        if check and r.returncode != 0:
            raise RuntimeError("%s in %s: exit %s: %s" % (" ".join(map(str, cmd)), role, r.returncode,
                                                         r.stderr.decode(errors="replace").strip()))
        return r

    def veth(self, role_a, name_a, role_b, name_b):
        _ip("link", "add", name_a, "netns", self.names[role_a], "type", "veth",
            "peer", "name", name_b, "netns", self.names[role_b])
        self.ip(role_a, "link", "set", name_a, "up")
        self.ip(role_b, "link", "set", name_b, "up")

    def close(self):
        while self._made:
            name = self._made.pop()
            # Whatever still runs inside was started by this lab.
            for pid in _ip("netns", "pids", name, check=False).split():
                if int(pid) != os.getpid():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            _ip("netns", "del", name, check=False)


def clean_env(**extra):
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C", "LC_ALL": "C"}
    env.update(extra)
    return env


# --- certificates --------------------------------------------------------------

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


def _openssl(args, cwd, san):
    r = subprocess.run(["openssl"] + args, cwd=cwd, env=dict(os.environ, PC_SAN=san), capture_output=True,
                       timeout=TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError("openssl %s: %s" % (" ".join(args), r.stderr.decode(errors="replace")))


def make_certs(d):
    """The test CA the LAN trusts, www.example.test (also download.skype.com) signed by it, and a
    self-signed certificate for the Skype name. Returns paths."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(_OPENSSL_CNF)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(["req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", "-subj", "/CN=Portcullis lab CA",
              "-days", "30", "-keyout", "ca.key", "-out", "ca.pem"] + key, d, "unused")
    san = "%s,DNS:%s" % (WEB_NAME, SKYPE_DOWNLOAD)
    _openssl(["req", "-new", "-config", "openssl.cnf", "-subj", "/CN=" + WEB_NAME, "-keyout", "web.key",
              "-out", "web.csr"] + key, d, san)
    _openssl(["x509", "-req", "-in", "web.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
              "-days", "30", "-extfile", "openssl.cnf", "-extensions", "leaf", "-out", "web.pem"], d, san)
    _openssl(["req", "-x509", "-config", "openssl.cnf", "-extensions", "leaf", "-subj", "/CN=" + sn.SKYPE_NAME,
              "-days", "30", "-keyout", "skype.key", "-out", "skype.pem"] + key, d, sn.SKYPE_NAME)
    return {"ca": d / "ca.pem", "web": (d / "web.pem", d / "web.key"), "skype": (d / "skype.pem", d / "skype.key")}


# --- servers in the internet -------------------------------------------------------


class WebHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PortcullisLabWeb/1"
    timeout = 15

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            body = ("<h1>hello from %s over %s</h1>\n" % (self.headers.get("Host", "?"),
                                                         self.server.scheme)).encode()
            ctype = "text/html"
        elif path == "/download/skype.exe":
            body, ctype = MZ_BODY, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET


class WebServer(http.server.ThreadingHTTPServer):
    """HTTP, or HTTPS when ctx is given (the handshake in the connection's thread)."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, sock, ctx=None):
        self.ctx = ctx
        self.scheme = "https" if ctx else "http"
        super().__init__(sock.getsockname(), WebHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()

    def handle_error(self, request, client_address):
        pass

    def finish_request(self, request, client_address):
        if not self.ctx:
            return super().finish_request(request, client_address)
        request.settimeout(15)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
            tls.settimeout(2)
            tls.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        finally:
            tls.close()


class SMTPBanner:
    """A mail server as far as the firewall cares: a 220 greeting on :25."""

    def __init__(self, sock, name):
        self.sock, self.name = sock, name
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                c.settimeout(5)
                c.sendall(("220 %s ESMTP portcullis-lab\r\n" % self.name).encode())
                if c.recv(4096).upper().startswith(b"QUIT"):
                    c.sendall(b"221 bye\r\n")
            except OSError:
                pass
            finally:
                c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _can_connect(ns, addr):
    with in_netns(ns):
        s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(addr)
        return True
    except OSError:
        return False
    finally:
        s.close()


def listening(ns, addr):
    with in_netns(ns):
        s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(addr)
    s.listen(64)
    return s


# --- processes ---------------------------------------------------------------------


def sanitizer_lines(text):
    return [l for l in text.splitlines() if any(m in l for m in SANITIZER_MARKS)]


class Proc:
    """A daemon in a namespace, its output in a file, dying with the lab."""

    def __init__(self, name, cmd, out_file, env, owner=None):
        self.name = name
        self.out_file = Path(out_file)
        self._fh = open(self.out_file, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._fh, stderr=self._fh, env=env,
                                     preexec_fn=die_with_parent)
        self.returncode = None
        if owner is not None:
            owner.append(self)  # stopped by the lab even when start-up fails below

    def output(self):
        try:
            return self.out_file.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_output(self, pattern, timeout=TIMEOUT, after=0):
        def check():
            m = re.search(pattern, self.output()[after:])
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError("%s exited %s:\n%s" % (self.name, self.proc.returncode, self.output()[-6000:]))
            return None
        return wait_for("%s to print %r" % (self.name, pattern), check, timeout)

    def stop(self, timeout=20):
        """SIGTERM, wait; the exit status (idempotent)."""
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.returncode = "killed: no exit within %ss of SIGTERM" % timeout
            self._fh.close()
        return self.returncode

    def problems(self):
        """Why this run was not clean (sanitizer lines, exit status), or ''."""
        rc = self.stop()
        out = self.output()
        if sanitizer_lines(out):
            return "%s: sanitizer output:\n%s" % (self.name, out[-8000:])
        if rc != 0:
            return "%s: exit status %s after SIGTERM (want 0):\n%s" % (self.name, rc, out[-4000:])
        return ""


def sanitizer_env(**extra):
    env = clean_env(**extra)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1"
    return env


class NodeProc(Proc):
    """portcullis-node in the gateway namespace (role; its proxy on listen:PROXY_PORT).
    lab is anything with ns, node_path and procs (Lab, or the demo's offices)."""

    def __init__(self, lab, dir_, args, env_extra=None, role="gw", listen=GW_LAN):
        self.lab = lab
        self.dir = Path(dir_)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.events_file = self.dir / "events.jsonl"
        self.args = list(args)
        cmd = lab.ns.cmd(role, lab.node_path, "--listen", "%s:%d" % (listen, PROXY_PORT), "--transparent",
                         "--events", self.events_file, "--threads", "1", *self.args)
        super().__init__("portcullis-node", cmd, self.dir / "node.out", sanitizer_env(**(env_extra or {})),
                         lab.procs)
        self._seen = 0
        self.wait_output(r"listening on [0-9.]+:\d+")

    def events(self):
        try:
            raw = self.events_file.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(l) for l in raw.splitlines() if l.strip()]

    def mark(self):
        self._seen = len(self.events())

    def new_events(self):
        return self.events()[self._seen:]


class ControllerProc(Proc):
    """portcullis-controller in the internet namespace, REST from there too;
    or, with role None, in the lab process's own namespace (the demo: REST on
    127.0.0.1 for the host's browser, the hub on an address the gateways reach)."""

    TOKEN = "pc-lab-admin-token-" + "x" * 24

    def __init__(self, lab, path, dir_, role="inet", rest=(CONTROLLER, REST_PORT), hub=(CONTROLLER, HUB_PORT),
                 token=None):
        self.lab = lab
        self.dir = Path(dir_)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "controller.db"
        self.role, self.rest, self.hub = role, rest, hub
        self.token = token or self.TOKEN
        argv = [path, "--db", self.db, "--listen", "%s:%d" % rest, "--hub-listen", "%s:%d" % hub]
        cmd = lab.ns.cmd(role, *argv) if role else [str(a) for a in argv]
        super().__init__("portcullis-controller", cmd, self.dir / "controller.out",
                         sanitizer_env(PORTCULLIS_ADMIN_TOKEN=self.token), lab.procs)
        self.wait_output(r"node hub listening on")
        self.wait_output(r"listening on \S+ \(port \d+\)")
        self.ctx = ssl.create_default_context(cafile=str(self.db) + ".cert.pem")
        self.ctx.check_hostname = False

    @property
    def hub_url(self):
        return "https://%s:%d" % self.hub

    def request(self, method, path, body=None, headers=None, timeout=15):
        import http.client
        ns, ctx, rest = (self.lab.ns[self.role] if self.role else None), self.ctx, self.rest

        class Conn(http.client.HTTPSConnection):
            def connect(self):
                with (in_netns(ns) if ns else contextlib.nullcontext()):
                    s = socket.socket()
                s.settimeout(timeout)
                s.connect(rest)
                self.sock = ctx.wrap_socket(s, server_hostname=rest[0])

        h = {"Authorization": "Bearer " + self.token}
        h.update(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c = Conn(rest[0], rest[1], context=ctx, timeout=timeout)
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

    def ok(self, method, path, body=None, headers=None, want=(200, 201, 204)):
        st, b = self.request(method, path, body, headers)
        if st not in want:
            raise AssertionError("%s %s: %d %r" % (method, path, st, b))
        return b


# --- the lab -------------------------------------------------------------------------


class Lab:
    """The namespaces, the network and the internet's servers. close() removes
    everything and is safe at any point of a failed build."""

    ROLES = ("staff", "board", "mail", "gw", "inet")

    def __init__(self, node_path=None, tmp=None):
        self.node_path = node_path
        self.tmp = Path(tmp) if tmp else Path(tempfile.mkdtemp(prefix="pc-lab-"))
        self.procs, self.servers, self.closers = [], [], []
        self.ns = None
        self._closed = False
        atexit.register(self.close)
        try:
            self.ns = Namespaces(self.ROLES)
            self._network()
            self.certs = make_certs(self.tmp / "certs")
            self._internet()
        except BaseException:
            self.close()
            raise

    def _network(self):
        ns = self.ns
        ns.ip("gw", "link", "add", LAN_IF, "type", "bridge")
        ns.ip("gw", "link", "set", LAN_IF, "up")
        ns.ip("gw", "addr", "add", GW_LAN + "/24", "dev", LAN_IF)
        for role, addr in HOSTS.items():
            port = "p-" + role
            ns.veth(role, "eth0", "gw", port)
            ns.ip("gw", "link", "set", port, "master", LAN_IF)
            ns.ip(role, "addr", "add", addr + "/24", "dev", "eth0")
            ns.ip(role, "route", "add", "default", "via", GW_LAN)
        ns.veth("gw", "wan0", "inet", "eth0")
        ns.ip("gw", "addr", "add", GW_WAN + "/24", "dev", "wan0")
        ns.ip("gw", "route", "add", "198.51.100.0/24", "via", INET_GW)
        ns.run("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns.ip("inet", "addr", "add", INET_GW + "/24", "dev", "eth0")
        for a in (SUPERNODE, CONTROLLER):
            ns.ip("inet", "addr", "add", a + "/24", "dev", "eth0")
        for a in (WEB, MAIL):  # on lo: the container may have no dummy interfaces
            ns.ip("inet", "addr", "add", a + "/32", "dev", "lo")
        ns.ip("inet", "route", "add", LAN_NET, "via", GW_WAN)
        # A connection from each host to the gateway proves the plumbing (and
        # waits for the links to come up; the container may have no ping).
        probe = listening(ns["gw"], (GW_LAN, 0))
        try:
            for role in HOSTS:
                wait_for("%s to reach the gateway" % role,
                         lambda role=role: _can_connect(ns[role], probe.getsockname()), timeout=10)
        finally:
            probe.close()

    def _internet(self):
        inet = self.ns["inet"]
        web_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        web_ctx.load_cert_chain(*map(str, self.certs["web"]))
        self.servers = [WebServer(listening(inet, (WEB, 80))), WebServer(listening(inet, (WEB, 443)), web_ctx)]
        for srv in self.servers:
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.mail_out = SMTPBanner(listening(inet, (MAIL, 25)), "mail.example.test")
        self.mail_lan = SMTPBanner(listening(self.ns["mail"], (LAN_MAIL, 25)), "mail.office.test")
        cert, key = self.certs["skype"]
        self.supernode = sn.Supernode(SUPERNODE, str(cert), str(key), make_socket=socket_factory(inet))
        self.closers += [self.mail_out, self.mail_lan, self.supernode]

    # policy

    @staticmethod
    def skype_list():
        return json.loads((REPO / "shared" / "lists" / "skype.json").read_text())

    def policy(self, version=1, firewall=True, exception=True):
        """The lab's policy document: ports 80/443, the test CA, the Skype list,
        group board (192.0.2.128/25) with the exception, and the firewall part
        of the white paper: only the mail server on 25, high ports refused, web
        redirected to the proxy, no DNS (clients use fixed addresses)."""
        p = {
            "schema": "portcullis.policy/1",
            "version": version,
            "proxy": {"ports": {"80": "http", "443": "tls"}, "ca_file": str(self.certs["ca"]),
                      "log_allowed": True, "connect_timeout_ms": 3000, "probe_timeout_ms": 3000},
            "lists": {"skype": self.skype_list()},
            "defaults": {"use_lists": ["skype"], "blocked_domains": [], "blocked_prefixes": [],
                         "blocked_url_suffixes": [], "block_executables": True, "require_certificate": True,
                         "skype_exception": False},
            "groups": [{"name": "board", "sources": [BOARD_NET], "skype_exception": exception}],
        }
        if firewall:
            p["firewall"] = {
                "lan": [LAN_NET],
                "web": "transparent",
                "allow": [{"name": "mail", "devices": [LAN_MAIL + "/32"], "proto": "tcp", "ports": ["25"]}],
                "dns": [],
                "high_ports": {"block": True, "from": 1024},
                "log_drops": None,
            }
        return p

    def write_policy(self, policy, name="policy.json"):
        f = self.tmp / name
        f.write_text(json.dumps(policy, indent=1))
        return f

    # the gateway

    def redirect_without_node_firewall(self):
        """For runs without --firewall: the transparent redirect alone (what
        test_transparent.py does), forwarding everything else."""
        ruleset = ("table ip pclab {\n  chain pre {\n    type nat hook prerouting priority dstnat;\n"
                   '    iifname "%s" tcp dport { 80, 443 } redirect to :%d;\n  }\n}\n' % (LAN_IF, PROXY_PORT))
        self.ns.run("gw", "nft", "-f", "-", input_=ruleset.encode())

    def start_node(self, args, name="node", env_extra=None):
        if not self.node_path:
            raise RuntimeError("no portcullis-node given")
        return NodeProc(self, self.tmp / name, args, env_extra)

    def start_controller(self, path, name="controller"):
        return ControllerProc(self, path, self.tmp / name)

    def firewall_counters(self, role="gw"):
        """{counter name: packets} of table inet portcullis in the gateway
        (named counters, and anonymous rule counters under their comment or
        'rule <handle>'); {} when the table is not loaded."""
        r = self.ns.run(role, "nft", "-j", "list", "table", "inet", "portcullis", check=False)
        if r.returncode != 0:
            return {}
        out = {}
        for item in json.loads(r.stdout).get("nftables", []):
            if "counter" in item:
                c = item["counter"]
                out[c["name"]] = c.get("packets", 0)
            elif "rule" in item:
                rule = item["rule"]
                for e in rule.get("expr", []):
                    c = e.get("counter") if isinstance(e, dict) else None
                    if isinstance(c, dict) and "packets" in c:
                        key = rule.get("comment") or "rule %s/%s" % (rule.get("chain"), rule.get("handle"))
                        out[key] = out.get(key, 0) + c["packets"]
        return out

    # clients

    def client(self, role, timeout=skype_client.DEFAULT_TIMEOUT):
        """A Skype-behaviour client whose sockets live in role's namespace."""
        return skype_client.Client(SUPERNODE, proxy=(GW_LAN, PROXY_PORT), timeout=timeout,
                                   make_socket=socket_factory(self.ns[role]))

    def curl(self, role, url, *args, timeout=20):
        """curl from role, trusting the lab's CA, www.example.test and
        download.skype.com resolved to the web server: (returncode, body
        bytes, stderr text)."""
        cmd = ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(self.certs["ca"]),
               "--resolve", "%s:80:%s" % (WEB_NAME, WEB), "--resolve", "%s:443:%s" % (WEB_NAME, WEB),
               "--resolve", "%s:80:%s" % (SKYPE_DOWNLOAD, WEB), "--resolve", "%s:443:%s" % (SKYPE_DOWNLOAD, WEB)]
        r = self.ns.run(role, *(cmd + list(args) + [url]), check=False, timeout=timeout + 10)
        return r.returncode, r.stdout, r.stderr.decode(errors="replace")

    def smtp_greeting(self, role, addr=MAIL, timeout=1.5):
        """The 220 line role gets from addr:25, or None (no connection)."""
        with in_netns(self.ns[role]):
            s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((addr, 25))
            return s.recv(4096).decode(errors="replace")
        except OSError:
            return None
        finally:
            s.close()

    def close(self):
        if self._closed:
            return
        self._closed = True
        for p in reversed(self.procs):
            p.stop()
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for c in self.closers:
            c.close()
        if self.ns:
            self.ns.close()
        if not KEEP:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- by hand ---------------------------------------------------------------------------


def _usage_text(lab):
    ns = lab.ns
    client = HERE / "skype_client.py"
    lines = ["", "The lab is up (namespaces %s-*). Try:" % (PREFIX + ns.tag)]
    for role in ("staff", "board"):
        lines.append("  ip netns exec %s python3 %s --supernode %s --proxy %s:%d"
                     % (ns[role], client, SUPERNODE, GW_LAN, PROXY_PORT))
    lines += ["  ip netns exec %s curl --cacert %s --resolve %s:443:%s https://%s/"
              % (ns["staff"], lab.certs["ca"], WEB_NAME, WEB, WEB_NAME),
              "  ip netns exec %s nft list table inet portcullis" % ns["gw"],
              "Files (policy, events, node output): %s" % lab.tmp,
              "Ctrl-C tears it all down."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="The Portcullis firewall lab (docs/lab.md).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab, start the node, wait for Ctrl-C")
    up.add_argument("--node", help="portcullis-node to run on the gateway (none: plain forwarding)")
    up.add_argument("--no-firewall", action="store_true", help="run the node without --firewall "
                    "(a plain redirect to its proxy instead)")
    sub.add_parser("sweep", help="remove what earlier runs left behind")
    a = ap.parse_args(argv)
    if a.cmd == "sweep":
        left = sweep()
        print("removed: %s" % (", ".join(left) or "nothing"))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    lab = Lab(node_path=os.path.abspath(a.node) if a.node else None)
    try:
        if a.node:
            fw = not a.no_firewall
            policy = lab.write_policy(lab.policy(firewall=fw))
            args = ["--policy", policy]
            if fw:
                args += ["--firewall", "--lan-interface", LAN_IF]
            else:
                lab.redirect_without_node_firewall()
            lab.start_node(args)
        print(_usage_text(lab), flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
