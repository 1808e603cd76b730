#!/usr/bin/env python3
"""record.py - records real TLS connections for the classifier vectors.

For each scenario it starts `openssl s_server` on a free 127.0.0.1 port, puts
a recording TCP relay in front of it and runs one real client through the
relay. The relay reads both sockets in one select() loop, so the order in
which it records the chunks is the order they crossed it; consecutive chunks
of one direction are joined. Each connection is written to
<scenario>/NN-c2s.bin and <scenario>/NN-s2c.bin (NN counts up across both
directions), and the lines a .vec file needs to replay it go to
<scenario>/segments.txt.

Usage: ./record.py [scenario...]      (no argument: every scenario)
Run from anywhere; needs openssl, curl, wget and the certificates made by
../certs/gen.sh.
"""
import os
import select
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CERTS = os.path.join(HERE, "..", "certs")
CA = os.path.join(CERTS, "ca.pem")
NAME = "www.portcullis.test"
REQUEST = b"GET / HTTP/1.0\r\nHost: www.portcullis.test\r\n\r\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not come up on %d" % port)


class Relay(threading.Thread):
    """Accepts `count` connections one after another; records the ones whose
    index is in `keep` (the others are relayed only, e.g. the first
    connection of a resumption scenario)."""

    def __init__(self, upstream, count, keep):
        super().__init__(daemon=True)
        self.upstream = upstream
        self.count = count
        self.keep = keep
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.conns = []  # one list of (dir, bytes) per connection

    def run(self):
        for _ in range(self.count):
            c, _ = self.lsock.accept()
            s = socket.create_connection(("127.0.0.1", self.upstream))
            self.conns.append(self.pump(c, s))
            c.close()
            s.close()
        self.lsock.close()

    @staticmethod
    def pump(c, s):
        log = []
        peer = {c: s, s: c}
        name = {c: "c2s", s: "s2c"}
        open_ = {c, s}
        while open_:
            r, _, _ = select.select(list(open_), [], [], 30)
            if not r:
                break
            for sock in r:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    open_.discard(sock)
                    try:
                        peer[sock].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                if log and log[-1][0] == name[sock]:
                    log[-1] = (name[sock], log[-1][1] + data)
                else:
                    log.append((name[sock], data))
                peer[sock].sendall(data)
        return log


def save(scenario, log):
    d = os.path.join(HERE, scenario)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.endswith(".bin"):
            os.unlink(os.path.join(d, f))
    lines = []
    for i, (direction, data) in enumerate(log, 1):
        fn = "%02d-%s.bin" % (i, direction)
        with open(os.path.join(d, fn), "wb") as f:
            f.write(data)
        lines.append("%sfile recorded/%s/%s" % (">" if direction == "c2s" else "<", scenario, fn))
    with open(os.path.join(d, "segments.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("%-22s %d segments, %d bytes" % (scenario, len(log), sum(len(x[1]) for x in log)))


def run(scenario, server_args, clients, keep=None):
    """clients: list of functions port -> None run in order through the
    relay; keep: indexes of the connections to save (default: the last).
    The server answers requests with its status page (-www) unless
    server_args has "-early_data", which s_server cannot combine with -www;
    then it stays silent with its stdin held open and the client ends the
    connection."""
    www = ["-www"] if "-early_data" not in server_args else []
    sport = free_port()
    cert = ["-cert", os.path.join(CERTS, "server.pem"), "-key", os.path.join(CERTS, "server.key"),
            "-cert_chain", os.path.join(CERTS, "int.pem")]
    if "-cert" in server_args:
        cert = []
    srv = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:%d" % sport, "-naccept",
         str(len(clients) + 1)] + www + cert + server_args,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(sport)  # uses up one accept
        relay = Relay(sport, len(clients), keep or [len(clients) - 1])
        relay.start()
        for client in clients:
            client(relay.port)
        relay.join(30)
        for i in relay.keep:
            save(scenario, relay.conns[i])
    finally:
        srv.terminate()
        srv.wait()
        srv.stdin.close()


def sh(argv, stdin=b"", linger=0.0):
    """Runs argv with stdin, held open for linger seconds after it."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    p.stdin.write(stdin)
    p.stdin.flush()
    time.sleep(linger)
    p.stdin.close()
    p.wait(30)


def s_client(*extra, name=NAME, data=REQUEST, silent_server=False):
    """With silent_server the client does not wait for the server to close:
    it sends data, waits a second for the session tickets and hangs up."""
    def go(port):
        sh(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", CA, "-quiet"] +
           ([] if silent_server else ["-ign_eof"]) + (["-servername", name] if name else []) +
           list(extra), data, 1.0 if silent_server else 0.0)
    return go


def curl(*extra, name=NAME):
    def go(port):
        sh(["curl", "-sS", "-o", "/dev/null", "--cacert", CA, "--resolve",
            "%s:%d:127.0.0.1" % (name, port), "https://%s:%d/" % (name, port)] + list(extra))
    return go


def wget(port):
    sh(["wget", "-q", "-O", "/dev/null", "--inet4-only", "--ca-certificate=" + CA,
        "https://localhost:%d/" % port])


def py_urllib(port):
    code = ("import ssl,urllib.request;"
            "ctx=ssl.create_default_context(cafile=%r);"
            "urllib.request.urlopen('https://localhost:%d/',context=ctx).read()" % (CA, port))
    sh([sys.executable, "-c", code])


def py_ssl12(port):
    code = ("import socket,ssl;"
            "ctx=ssl.create_default_context(cafile=%r);"
            "ctx.maximum_version=ssl.TLSVersion.TLSv1_2;"
            "s=ctx.wrap_socket(socket.create_connection(('127.0.0.1',%d)),server_hostname=%r);"
            "s.sendall(%r);"
            "[0 for _ in iter(lambda:s.recv(4096),b'')]" % (CA, port, NAME, REQUEST))
    sh([sys.executable, "-c", code])


SESS = "/tmp/portcullis-record-%d.sess" % os.getpid()
EARLY = "/tmp/portcullis-record-%d.early" % os.getpid()

SCENARIOS = {
    "s_client_tls12": ([], [s_client("-tls1_2")]),
    "s_client_tls13": ([], [s_client("-tls1_3")]),
    "s_client_srv12": (["-tls1_2"], [s_client()]),
    "s_client_hrr": (["-groups", "P-256"], [s_client("-tls1_3", "-groups", "X25519:P-256")]),
    "s_client_resume12": (["-tls1_2"], [s_client("-sess_out", SESS), s_client("-sess_in", SESS)]),
    "s_client_early13": (["-early_data"],
                         [s_client("-tls1_3", "-sess_out", SESS, silent_server=True),
                          s_client("-tls1_3", "-sess_in", SESS, "-early_data", EARLY,
                                   data=b"", silent_server=True)]),
    "curl_tls12": ([], [curl("--tlsv1.2", "--tls-max", "1.2")]),
    "curl_tls13": ([], [curl("--tlsv1.3")]),
    "curl_srv12": (["-tls1_2"], [curl()]),
    "wget_tls13": ([], [wget]),
    "wget_srv12": (["-tls1_2"], [wget]),
    "python_urllib13": ([], [py_urllib]),
    "python_ssl12": ([], [py_ssl12]),
    "selfsigned_tls12": (["-cert", os.path.join(CERTS, "selfsigned.pem"), "-key",
                          os.path.join(CERTS, "selfsigned.key"), "-tls1_2"],
                         [s_client(name="selfsigned.portcullis.test")]),
    "selfsigned_tls13": (["-cert", os.path.join(CERTS, "selfsigned.pem"), "-key",
                          os.path.join(CERTS, "selfsigned.key")],
                         [curl("-k", name="selfsigned.portcullis.test")]),
}


def main():
    with open(EARLY, "wb") as f:
        f.write(REQUEST)
    try:
        for name in sys.argv[1:] or sorted(SCENARIOS):
            server_args, clients = SCENARIOS[name]
            run(name, server_args, clients)
    finally:
        for f in (SESS, EARLY):
            if os.path.exists(f):
                os.unlink(f)


if __name__ == "__main__":
    main()
