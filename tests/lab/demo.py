"""demo.py - the main job in one command (README.md, docs/lab.md#the-demo):
the firewall lab (lab.py) grown to a company. portcullis-controller runs in
this machine's own network namespace with two regions and three offices; each
office is a gateway namespace running portcullis-node (--firewall
--transparent, enrolled with the controller) and a LAN with two groups; the
example policy is set over REST; the Skype-behaviour client walks the white
paper's fallback chain once from each group of each office, so the controller
has events to show; a summary table is printed, then the REST/dashboard URL,
the admin token and the fingerprints. Ctrl-C (or SIGTERM) removes it all.

  this machine   portcullis-controller: REST (dashboard later) 127.0.0.1:8443,
                 node hub 203.0.113.10:8444 on pcdemo0, a veth into the internet
  pcdemo-inet    bridge wan 203.0.113.254/24 (router) + 203.0.113.7 (supernode);
                 on lo 198.51.100.80 (www.example.test) and 198.51.100.25 (mail)
  pcdemo-<office>-gw     wan0 203.0.113.<n>, lan0 192.0.2.<b+1>/26, portcullis-node
  pcdemo-<office>-staff  192.0.2.<b+10>  group staff (Skype blocked)
  pcdemo-<office>-board  192.0.2.<b+40>  group board (the Skype exception)
  pcdemo-<office>-mail   192.0.2.<b+25>  the office's mail server (port 25 open)

Offices: Berlin 192.0.2.0/26 and Paris 192.0.2.64/26 in region EMEA, Boston
192.0.2.128/26 in region Americas. No namespace has a default route out and only
the 203.0.113.0/24 link reaches this machine's namespace: nothing leaves.

A run first removes what an earlier one left (the state file names its pid,
its processes and its temp dir; every namespace named pcdemo-* and the link
pcdemo0 go too); if the earlier demo is still running it is stopped first.

  python3 tests/lab/demo.py --node PATH --controller PATH [--once] [--rest ADDR:PORT]
  python3 tests/lab/demo.py --clean     remove an earlier run's leftovers only

--once (or DEMO_ONCE=1) brings it up, prints the summary and tears it down;
its exit status is 0 only when every office's staff reached nothing, its board
only the TLS 443 step, the controller holds events from all three nodes, and
every daemon stopped cleanly.
"""

import argparse
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
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import lab as L  # noqa: E402
import skype_client  # noqa: E402
import supernode as sn  # noqa: E402

PREFIX = "pcdemo"  # namespaces pcdemo-<role>, the link pcdemo0, temp dirs pcdemo-*
ROOT_IF = PREFIX + "0"  # this machine's end of the veth into the internet
STATE = Path(os.environ.get("DEMO_STATE", "/run/portcullis-demo.json"))
REST_DEFAULT = os.environ.get("DEMO_REST", "127.0.0.1:8443")
HUB = (L.CONTROLLER, L.HUB_PORT)  # 203.0.113.10:8444, on ROOT_IF
INET_GW = L.INET_GW  # 203.0.113.254
LAN_IF = L.LAN_IF
EVENT_WAIT = 20.0
# What the walk must show (the lab's claim, per office): staff nothing, board only TLS 443.
WANT_REACHED = {"staff": [], "board": ["tls443"]}
# Proxy events each walk leaves at the controller: the four proxy steps are
# block events; for the board, tls443 is an exception event instead.
WANT_EVENTS = {"staff": {"block": 4}, "board": {"block": 3, "exception": 1}}

T0 = time.monotonic()


def say(msg):
    print("demo: [%5.1fs] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


class Office:
    def __init__(self, name, region, octet, wan_host):
        self.name, self.region = name, region
        self.key = name.lower()
        # Each office a /26 of the documentation range 192.0.2.0/24:
        # staff in its lower /27 (with the mail server), board in the upper.
        b = octet
        self.net = "192.0.2.%d/26" % b
        self.gw = "192.0.2.%d" % (b + 1)
        self.hosts = {"staff": "192.0.2.%d" % (b + 10), "board": "192.0.2.%d" % (b + 40),
                      "mail": "192.0.2.%d" % (b + 25)}
        self.groups = {"staff": "192.0.2.%d/27" % b, "board": "192.0.2.%d/27" % (b + 32)}
        self.wan = "203.0.113.%d" % wan_host
        self.node_name = self.key + "-gw"
        self.id = self.node_id = None
        self.node = None

    def role(self, what):
        return "%s-%s" % (self.key, what)


OFFICES = [Office("Berlin", "EMEA", 0, 1), Office("Paris", "EMEA", 64, 2), Office("Boston", "Americas", 128, 3)]
REGIONS = ["EMEA", "Americas"]


# --- leftovers of an earlier run ---------------------------------------------------------


def _start_time(pid):
    """The process's start time (clock ticks since boot), to tell it from a
    later process that got the same pid; None when there is no such process."""
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not reaped yet: nothing to stop
        return None
    return int(fields[19])


def _same_process(entry):
    try:
        pid, start = int(entry["pid"]), entry.get("start")
    except (KeyError, TypeError, ValueError):
        return None
    return pid if start is not None and _start_time(pid) == start else None


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _start_time(pid) is None:
            return True
        time.sleep(0.1)
    return False


def read_state():
    try:
        return json.loads(STATE.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        say("ignoring the unreadable state file %s: %s" % (STATE, e))
        return None


def remove_leftovers():
    """Stops an earlier demo still running, kills what it started, deletes its
    namespaces, link and temp dir. Returns what it removed (text)."""
    removed = []
    st = read_state()
    if st and st.get("demo", {}).get("pid") != os.getpid():
        pid = _same_process(st.get("demo", {}))
        if pid:
            say("an earlier demo is still running (pid %d): stopping it" % pid)
            _kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 30):
                _kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
            removed.append("the running demo (pid %d)" % pid)
        for child in st.get("processes", []):
            pid = _same_process(child)
            if pid:
                _kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
                removed.append("%s (pid %d)" % (child.get("name", "process"), pid))
    # Temp dirs of earlier runs (also one kept with PORTCULLIS_KEEP): no
    # other demo runs now, so none is in use.
    for d in sorted(Path("/tmp").glob(PREFIX + "-*")):
        if re.fullmatch(PREFIX + r"-\d+", d.name) and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    for line in L._ip("netns", "list").splitlines():
        name = line.split(" ", 1)[0]
        if not name.startswith(PREFIX + "-"):
            continue
        for pid in L._ip("netns", "pids", name, check=False).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        L._ip("netns", "del", name, check=False)
        removed.append("namespace " + name)
    if L._ip("link", "show", ROOT_IF, check=False):
        L._ip("link", "del", ROOT_IF, check=False)
        removed.append("link " + ROOT_IF)
    try:
        STATE.unlink()
    except FileNotFoundError:
        pass
    return removed


def leftovers():
    """What of a demo exists now: namespaces, the link, the state file."""
    out = [l.split(" ", 1)[0] for l in L._ip("netns", "list").splitlines() if l.startswith(PREFIX + "-")]
    if L._ip("link", "show", ROOT_IF, check=False):
        out.append("link " + ROOT_IF)
    if STATE.exists():
        out.append(str(STATE))
    return out


# --- the demo ------------------------------------------------------------------------------


class Demo:
    """Everything the demo makes; close() removes it at any point of a failed
    bring-up. Has what lab.NodeProc and lab.ControllerProc need of a lab: ns,
    node_path, procs."""

    firewall_counters = L.Lab.firewall_counters

    def __init__(self, node_path, controller_path, rest):
        self.node_path, self.controller_path, self.rest = node_path, controller_path, rest
        self.tmp = Path("/tmp/%s-%d" % (PREFIX, os.getpid()))
        self.procs, self.servers, self.closers = [], [], []
        self.ns = None
        self.ctl = None
        self.token = secrets.token_hex(24)
        self._link = False
        self._closed = False

    # state file

    def save_state(self):
        procs = [{"name": p.name, "pid": p.proc.pid, "start": _start_time(p.proc.pid)} for p in self.procs]
        st = {"demo": {"pid": os.getpid(), "start": _start_time(os.getpid())}, "tmp": str(self.tmp),
              "processes": procs, "namespaces": sorted(self.ns.names.values()) if self.ns else [],
              "link": ROOT_IF if self._link else None}
        STATE.parent.mkdir(parents=True, exist_ok=True)
        t = STATE.with_name(STATE.name + ".tmp")
        t.write_text(json.dumps(st, indent=1) + "\n")
        os.replace(t, STATE)

    # bring-up

    def up(self):
        self.tmp.mkdir(mode=0o700)  # remove_leftovers() removed any of that name
        self.save_state()
        roles = ["inet"] + [o.role(w) for o in OFFICES for w in ("gw", "staff", "board", "mail")]
        self.ns = L.Namespaces(roles, prefix=PREFIX, tag="")
        self.save_state()
        self._network()
        self.certs = L.make_certs(self.tmp / "certs")
        self._internet()
        say("network up: %d namespaces, the link %s (%s) into the internet" % (len(roles), ROOT_IF, HUB[0]))
        self._controller()
        self._policy()
        self._nodes()

    def _network(self):
        ns = self.ns
        ns.ip("inet", "link", "add", "wan", "type", "bridge")
        ns.ip("inet", "link", "set", "wan", "up")
        for a in (INET_GW, L.SUPERNODE):
            ns.ip("inet", "addr", "add", a + "/24", "dev", "wan")
        for a in (L.WEB, L.MAIL):
            ns.ip("inet", "addr", "add", a + "/32", "dev", "lo")
        # This machine's end: the controller's hub listens here.
        L._ip("link", "add", ROOT_IF, "type", "veth", "peer", "name", "ctl0", "netns", ns["inet"])
        self._link = True
        self.save_state()
        L._ip("addr", "add", HUB[0] + "/24", "dev", ROOT_IF)
        L._ip("link", "set", ROOT_IF, "up")
        ns.ip("inet", "link", "set", "ctl0", "master", "wan")
        ns.ip("inet", "link", "set", "ctl0", "up")
        for o in OFFICES:
            gw = o.role("gw")
            ns.ip(gw, "link", "add", LAN_IF, "type", "bridge")
            ns.ip(gw, "link", "set", LAN_IF, "up")
            ns.ip(gw, "addr", "add", o.gw + "/26", "dev", LAN_IF)
            for what, addr in o.hosts.items():
                port = "p-" + what
                ns.veth(o.role(what), "eth0", gw, port)
                ns.ip(gw, "link", "set", port, "master", LAN_IF)
                ns.ip(o.role(what), "addr", "add", addr + "/26", "dev", "eth0")
                ns.ip(o.role(what), "route", "add", "default", "via", o.gw)
            port = "w-" + o.key
            ns.veth(gw, "wan0", "inet", port)
            ns.ip("inet", "link", "set", port, "master", "wan")
            ns.ip(gw, "addr", "add", o.wan + "/24", "dev", "wan0")
            ns.ip(gw, "route", "add", "198.51.100.0/24", "via", INET_GW)
            ns.run(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            ns.ip("inet", "route", "add", o.net, "via", o.wan)
        for o in OFFICES:
            probe = L.listening(ns[o.role("gw")], (o.gw, 0))
            try:
                for what in o.hosts:
                    L.wait_for("%s %s to reach its gateway" % (o.name, what),
                               lambda r=o.role(what): L._can_connect(ns[r], probe.getsockname()), timeout=10)
            finally:
                probe.close()

    def _internet(self):
        inet = self.ns["inet"]
        web_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        web_ctx.load_cert_chain(*map(str, self.certs["web"]))
        self.servers = [L.WebServer(L.listening(inet, (L.WEB, 80))),
                        L.WebServer(L.listening(inet, (L.WEB, 443)), web_ctx)]
        for srv in self.servers:
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.closers.append(L.SMTPBanner(L.listening(inet, (L.MAIL, 25)), "mail.example.test"))
        for o in OFFICES:
            self.closers.append(L.SMTPBanner(L.listening(self.ns[o.role("mail")], (o.hosts["mail"], 25)),
                                             "mail.%s.example.test" % o.key))
        cert, key = self.certs["skype"]
        self.closers.append(sn.Supernode(L.SUPERNODE, str(cert), str(key), make_socket=L.socket_factory(inet)))

    def _controller(self):
        host, port = self.rest
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(self.rest)
        except OSError as e:
            raise RuntimeError("%s:%d is not free for the controller's REST API (%s); give another with "
                               "--rest ADDR:PORT or DEMO_REST" % (host, port, e.strerror)) from None
        finally:
            s.close()
        self.ctl = L.ControllerProc(self, self.controller_path, self.tmp / "controller", role=None, rest=self.rest,
                                    hub=HUB, token=self.token)
        self.save_state()
        out = self.ctl.output()
        m = re.search(r"listening on \S+ \(port (\d+)\)", out)
        self.ctl.rest = self.rest = (host, int(m.group(1)))  # port 0 picks one
        m = re.search(r"certificate SHA-256 fingerprint (\S+)", out)
        self.rest_fingerprint = m.group(1) if m else "?"
        m = re.search(r"CA \S+, SHA-256 fingerprint (\S+)", out)
        self.ca_fingerprint = m.group(1) if m else "?"
        say("controller up: REST https://%s:%d/, node hub %s:%d" % (self.rest + HUB))

    def _policy(self):
        c = self.ctl
        regions = {r: c.ok("POST", "/api/v1/regions", {"name": r})["id"] for r in REGIONS}
        for o in OFFICES:
            o.id = c.ok("POST", "/api/v1/offices", {"name": o.name, "region_id": regions[o.region],
                                                    "lan_prefixes": [o.net]})["id"]
        # The two groups are the same in every office (office_id null): one
        # grant of the exception covers every office's board.
        self.group_ids = {}
        for g in ("staff", "board"):
            self.group_ids[g] = c.ok("POST", "/api/v1/groups", {"name": g, "office_id": None,
                                                                "sources": [o.groups[g] for o in OFFICES]})["id"]
        c.ok("POST", "/api/v1/rules", {"scope": "global", "scope_id": None, "kind": "skype", "action": "block",
                                       "comment": "no Skype in the company"})
        self.exception_rule = c.ok("POST", "/api/v1/rules", {
            "scope": "group", "scope_id": self.group_ids["board"], "kind": "skype", "action": "allow",
            "comment": "the board may use Skype (the exception)"})["id"]
        # The white paper's firewall: globally high ports blocked, web through
        # the node's proxy, DNS to no resolver (the lab uses addresses); each
        # office opens port 25 to its own mail server only.
        glob = c.ok("GET", "/api/v1/settings/global")
        glob = {k: v for k, v in glob.items() if k not in ("id", "etag", "scope", "scope_id")}
        glob.update({"block_high_ports": True, "high_port_threshold": 1024, "dns_resolvers": [],
                     "web_mode": "transparent"})
        c.ok("PUT", "/api/v1/settings/global", glob, {"If-Match": "*"})
        for o in OFFICES:
            c.ok("PUT", "/api/v1/settings/office/%d" % o.id,
                 {"open_ports": [{"port": 25, "proto": "tcp", "devices": [o.hosts["mail"] + "/32"]}]},
                 {"If-Match": "*"})
        # The node objects are part of the model too (each one a revision).
        for o in OFFICES:
            o.node_id = c.ok("POST", "/api/v1/nodes", {"name": o.node_name, "office_id": o.id})["id"]
        self.revision = c.ok("GET", "/api/v1/revisions?limit=1")["items"][0]["revision"]
        say("policy set over REST: regions %s, offices %s, groups staff and board, nodes; revision %d"
            % (", ".join(REGIONS), ", ".join(o.name for o in OFFICES), self.revision))

    def _nodes(self):
        c = self.ctl
        for o in OFFICES:
            L.wait_for("%s's gateway to reach the hub" % o.name,
                       lambda o=o: L._can_connect(self.ns[o.role("gw")], HUB), timeout=10)
            token = c.ok("POST", "/api/v1/nodes/%d/enrollment" % o.node_id, {"ttl_seconds": 600})["token"]
            state = self.tmp / o.node_name / "state"
            r = self.ns.run(o.role("gw"), self.node_path, "enroll", "--controller", c.hub_url, "--token", token,
                            "--state", state, check=False, env=L.sanitizer_env())
            if r.returncode != 0:
                raise RuntimeError("enrolling %s failed (exit %d):\n%s%s" % (o.node_name, r.returncode,
                                                                             r.stdout.decode(errors="replace"),
                                                                             r.stderr.decode(errors="replace")))
            # The controller's documents carry no ca_file: the node's TLS probe
            # trusts the lab's CA through OpenSSL's default store.
            o.node = L.NodeProc(self, self.tmp / o.node_name,
                                ["--state", state, "--backoff-min-ms", "100", "--backoff-max", "1",
                                 "--firewall", "--lan-interface", LAN_IF],
                                env_extra={"SSL_CERT_FILE": str(self.certs["ca"])}, role=o.role("gw"), listen=o.gw)
            self.save_state()
        for o in OFFICES:
            o.node.wait_output("controller link up")
        seen = {}

        def enforced():
            for o in OFFICES:
                n = c.ok("GET", "/api/v1/nodes/%d" % o.node_id)
                seen[o.node_name] = {k: n.get(k) for k in ("connected", "enforced_version", "pending_version",
                                                          "last_error")}
            return all(v["enforced_version"] == self.revision for v in seen.values())
        try:
            L.wait_for("every node to enforce revision %d" % self.revision, enforced)
        except AssertionError:
            raise AssertionError("the nodes did not all enforce revision %d within %.0f s: %s"
                                 % (self.revision, L.TIMEOUT, json.dumps(seen))) from None
        say("nodes %s enrolled, linked, enforcing revision %d (firewall loaded)"
            % (", ".join(o.node_name for o in OFFICES), self.revision))

    # the walks

    def walk_all(self):
        """The Skype-behaviour client once from each group of each office, all
        at once (each in its thread; its sockets in its host's namespace)."""
        reports = {}

        def walk(o, g):
            client = skype_client.Client(L.SUPERNODE, proxy=(o.gw, L.PROXY_PORT),
                                         make_socket=L.socket_factory(self.ns[o.role(g)]))
            try:
                reports[(o.key, g)] = client.walk()
            except Exception as e:  # noqa: BLE001 - shown in the summary
                reports[(o.key, g)] = {"error": "%s: %s" % (type(e).__name__, e), "reached": None}

        threads = [threading.Thread(target=walk, args=(o, g)) for o in OFFICES for g in ("staff", "board")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.reports = reports
        say("Skype client walked the fallback chain from %d groups" % len(reports))
        return reports

    def controller_events(self):
        """{(node, group): {type: count}} of every event the controller holds."""
        out = {}
        cursor = None
        while True:
            q = "/api/v1/events?limit=1000" + ("&cursor=" + cursor if cursor else "")
            page = self.ctl.ok("GET", q)
            for e in page.get("events", []):
                d = out.setdefault((e.get("node"), e.get("group")), {})
                d[e.get("type")] = d.get(e.get("type"), 0) + 1
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def wait_events(self):
        def enough():
            ev = self.controller_events()
            for o in OFFICES:
                for g, want in WANT_EVENTS.items():
                    got = ev.get((o.node_name, g), {})
                    if any(got.get(t, 0) < n for t, n in want.items()):
                        return None
            return ev
        try:
            self.events = L.wait_for("the controller to hold every walk's events", enough, timeout=EVENT_WAIT)
        except AssertionError:
            self.events = self.controller_events()
        return self.events

    # what the user sees

    def summary(self):
        """The table, and the problems (empty: the demo showed what it should)."""
        problems = []
        rows = [("office", "region", "group", "client", "steps that reached the supernode", "events at the controller")]
        for o in OFFICES:
            for g in ("staff", "board"):
                rep = self.reports.get((o.key, g), {})
                reached = rep.get("reached")
                if reached is None:
                    shown = "error: " + rep.get("error", "no report")
                else:
                    shown = ", ".join(reached) if reached else "none"
                if reached != WANT_REACHED[g]:
                    problems.append("%s %s reached %s (want %s)" % (o.name, g, shown,
                                                                   ", ".join(WANT_REACHED[g]) or "none"))
                ev = self.events.get((o.node_name, g), {})
                ev_text = ", ".join("%d %s" % (ev[t], t) for t in sorted(ev)) or "none"
                if any(ev.get(t, 0) < n for t, n in WANT_EVENTS[g].items()):
                    problems.append("%s %s: the controller holds %s events from %s (want at least %s)"
                                    % (o.name, g, ev_text, o.node_name,
                                       ", ".join("%d %s" % (n, t) for t, n in WANT_EVENTS[g].items())))
                rows.append((o.name, o.region, g, o.hosts[g], shown, ev_text))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        drops = []
        for o in OFFICES:
            n = self.firewall_counters(o.role("gw")).get("drop_high_ports", 0)
            drops.append("%s %d" % (o.node_name, n))
        lines.append("")
        lines.append("UDP, STUN, TURN and the high TCP port are dropped by each gateway's firewall (counted, "
                     "not events): drop_high_ports packets: " + ", ".join(drops))
        return "\n".join(lines), problems

    def info(self):
        host, port = self.rest
        url = "https://%s:%d" % (host, port)
        cert = "%s.cert.pem" % self.ctl.db
        curl = 'curl --cacert "$PC_CA" -H "Authorization: Bearer $PC_TOKEN"'
        berlin = OFFICES[0]
        return "\n".join([
            "",
            "Portcullis demo: a controller, 2 regions (%s), 3 offices (%s), one node each." % (
                ", ".join(REGIONS), ", ".join(o.name for o in OFFICES)),
            "",
            "  REST API / dashboard  %s/   (the dashboard comes later; the API is under /api/v1/)" % url,
            "  admin token           %s" % self.token,
            "  REST certificate      %s" % cert,
            "                        SHA-256 %s" % self.rest_fingerprint,
            "  node CA fingerprint   %s   (SHA-256; in every enrollment token)" % self.ca_fingerprint,
            "",
            "Try, from another terminal:",
            "  export PC=%s PC_CA=%s PC_TOKEN=%s" % (url, cert, self.token),
            '  %s "$PC/api/v1/events?limit=20"' % curl,
            '  %s "$PC/api/v1/events?type=exception"' % curl,
            '  %s "$PC/api/v1/nodes"' % curl,
            "  %s -H 'Content-Type: application/json' \\" % curl,
            "       -d '{\"office\":%d,\"source\":\"%s\",\"port\":443,\"host\":\"%s\"}' \"$PC/api/v1/explain\""
            % (berlin.id, berlin.hosts["board"], sn.SKYPE_NAME),
            "  ip netns exec %s python3 %s --supernode %s --proxy %s:%d" % (
                self.ns[berlin.role("staff")], HERE / "skype_client.py", L.SUPERNODE, berlin.gw, L.PROXY_PORT),
            "  ip netns exec %s nft list table inet portcullis" % self.ns[berlin.role("gw")],
            "Files (controller database and output, node state, events and output): %s" % self.tmp,
        ])

    # teardown

    def close(self):
        """Stops every process, removes every namespace, the link, the temp dir
        and the state file. Returns the daemons' problems (sanitizer lines, an
        exit status other than 0 on SIGTERM)."""
        if self._closed:
            return []
        self._closed = True
        problems = []
        # Nodes first, so the controller stores what they still send.
        for p in sorted(self.procs, key=lambda p: p.name == "portcullis-controller"):
            try:
                why = p.problems()
            except Exception as e:  # noqa: BLE001 - go on removing the rest
                why = "%s: %s" % (p.name, e)
            if why:
                problems.append(why)
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for c in self.closers:
            c.close()
        if self.ns:
            self.ns.close()
        if self._link:
            L._ip("link", "del", ROOT_IF, check=False)
        if problems or L.KEEP:
            say("kept %s (%s)" % (self.tmp, "PORTCULLIS_KEEP" if L.KEEP else "a daemon did not stop cleanly"))
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        try:
            STATE.unlink()
        except FileNotFoundError:
            pass
        return problems


def parse_addr(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected ADDR:PORT, got %r" % text)
    return host, int(port)


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    ap = argparse.ArgumentParser(description="The Portcullis demo (docs/lab.md#the-demo).")
    ap.add_argument("--node", help="portcullis-node")
    ap.add_argument("--controller", help="portcullis-controller")
    ap.add_argument("--rest", type=parse_addr, default=REST_DEFAULT,
                    help="where the controller's REST API listens (default %s; port 0 picks one)" % REST_DEFAULT)
    ap.add_argument("--once", action="store_true", default=os.environ.get("DEMO_ONCE", "") not in ("", "0"),
                    help="bring it up, print the summary, tear it down (also DEMO_ONCE=1)")
    ap.add_argument("--clean", action="store_true", help="only remove what an earlier run left")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    for tool in ("ip", "nft", "openssl"):
        if not shutil.which(tool):
            print("demo: %s is not installed (scripts/deps.sh)" % tool, file=sys.stderr)
            return 2
    for what, path in (("--node", a.node), ("--controller", a.controller)):
        if not a.clean and (not path or not os.access(path, os.X_OK)):
            print("demo: %s: no executable %r" % (what, path), file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    left = remove_leftovers()
    if left:
        say("removed what an earlier run left: " + ", ".join(left))
    if a.clean:
        if not left:
            say("nothing to remove")
        return 0
    demo = Demo(os.path.abspath(a.node), os.path.abspath(a.controller), a.rest)
    problems = []  # what --once fails on
    failed = False  # the bring-up itself failed
    try:
        demo.up()
        say("bring-up took %.1f s" % (time.monotonic() - T0))
        demo.walk_all()
        demo.wait_events()
        table, problems = demo.summary()
        print("\n" + table, flush=True)
        print(demo.info(), flush=True)
        if problems:
            say("NOT as expected:\n  " + "\n  ".join(problems))
        if not a.once:
            print("\nThe demo is up. Ctrl-C stops it and removes everything it made.", flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        if a.once:
            problems.append("interrupted")
    except Exception as e:  # noqa: BLE001 - say what failed, then tear down
        failed = True
        problems.append("%s: %s" % (type(e).__name__, e))
        say("failed: %s: %s" % (type(e).__name__, e))
    finally:
        # A second Ctrl-C must not leave half of it behind.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        say("stopping: every process, namespace and link it made")
        daemon_problems = demo.close()
        left = leftovers()
        if left:
            daemon_problems.append("still there after the teardown: " + ", ".join(left))
        for p in daemon_problems:
            say(p)
        problems += daemon_problems
        say("stopped; nothing left" if not left else "stopped")
    # Interactive: Ctrl-C is how it ends; only a failed bring-up or an unclean
    # teardown is an error. --once: anything not as expected is.
    if a.once:
        return 1 if problems else 0
    return 1 if failed or daemon_problems else 0


if __name__ == "__main__":
    sys.exit(main())
