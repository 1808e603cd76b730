#!/usr/bin/env python3
"""record.py - records real HTTP/1.x traffic for the classifier's vectors (see README.md).

A relay on 127.0.0.1 sits between a real client and a real server and writes each
connection's bytes, as they passed, to NAME.c2s.bin and NAME.s2c.bin (a scenario with more
connections gets NAME-2..., empty connections are dropped). Servers: `python3 -m http.server`
(HTTP/1.0 static files) and app_server() below (HTTP/1.1 keep-alive, chunked responses, request
bodies in either framing, absolute-form targets). Clients: curl, wget, python3 urllib and
headless chromium. Run it from this directory: `python3 record.py`. Loopback only.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


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
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


# ---- an HTTP/1.1 server that frames its responses itself -------------------------------


def read_head(sock, buf):
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def read_exact(sock, buf, n):
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data
    return buf[:n], buf[n:]


def read_line(sock, buf):
    while b"\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError
        buf += data
    line, rest = buf.split(b"\r\n", 1)
    return line, rest


def read_body(sock, headers, buf):
    if headers.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
        body = b""
        while True:
            line, buf = read_line(sock, buf)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while True:  # trailer fields, then the empty line
                    line, buf = read_line(sock, buf)
                    if not line:
                        return body, buf
            data, buf = read_exact(sock, buf, size + 2)
            body += data[:-2]
    n = int(headers.get(b"content-length", b"0"))
    if headers.get(b"expect", b"").lower() == b"100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    return read_exact(sock, buf, n)


def chunked(parts):
    out = b""
    for p in parts:
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return out + b"0\r\n\r\n"


def app_response(method, path, body):
    if path.startswith("http://"):
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    path = path.split("?")[0]
    if path == "/chunked":
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        data = chunked([b"first chunk\n", b"second chunk, a bit longer\n", b"x"])
    elif path == "/setup.exe":
        exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-msdownload\r\n"
                b"Content-Disposition: attachment; filename*=UTF-8''skype.exe\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        data = chunked([exe[:1], exe[1:20], exe[20:]])
    elif method == b"POST" or method == b"PUT":
        msg = b"received %d bytes\n" % len(body)
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                % len(msg))
        data = msg
    elif path == "/hello":
        msg = b"hello, world\n"
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                % len(msg))
        data = msg
    else:
        msg = b"not found\n"
        head = (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n" % len(msg))
        data = msg
    if method == b"HEAD":
        data = b""
    return head + data


def app_conn(sock):
    buf = b""
    try:
        while True:
            head, buf = read_head(sock, buf)
            if head is None:
                return
            lines = head.split(b"\r\n")
            method, target, version = lines[0].split(b" ")
            headers = {}
            for ln in lines[1:]:
                k, v = ln.split(b":", 1)
                headers[k.strip().lower()] = v.strip()
            body, buf = read_body(sock, headers, buf)
            sock.sendall(app_response(method, target.decode(), body))
            conn = headers.get(b"connection", b"").lower()
            if conn == b"close" or (version == b"HTTP/1.0" and conn != b"keep-alive"):
                return
    except (EOFError, OSError, ValueError):
        return
    finally:
        sock.close()


def app_server(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=app_conn, args=(s,), daemon=True).start()


# ---- the recording relay ----------------------------------------------------------------


class Relay:
    def __init__(self, backend_port):
        self.port = free_port()
        self.backend = backend_port
        self.conns = []  # [c2s bytearray, s2c bytearray] per connection, in accept order
        self.lock = threading.Lock()
        self.active = 0
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", self.port))
        self.ls.listen(16)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            rec = [bytearray(), bytearray()]
            with self.lock:
                self.conns.append(rec)
                self.active += 1
            u = socket.create_connection(("127.0.0.1", self.backend))
            done = threading.Event()
            threading.Thread(target=self.pipe, args=(c, u, rec[0], None), daemon=True).start()
            threading.Thread(target=self.pipe, args=(u, c, rec[1], done), daemon=True).start()

    def pipe(self, src, dst, rec, done):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                break
            rec += data
            try:
                dst.sendall(data)
            except OSError:
                break
        if done is not None:
            with self.lock:
                self.active -= 1

    def wait_idle(self, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if self.active == 0:
                    return
            time.sleep(0.05)

    def save(self, name):
        self.ls.close()
        saved = []
        with self.lock:
            conns = [c for c in self.conns if c[0] or c[1]]
        for k, (c2s, s2c) in enumerate(conns):
            base = name if k == 0 else "%s-%d" % (name, k + 1)
            for suffix, data in (("c2s", c2s), ("s2c", s2c)):
                with open(os.path.join(HERE, "%s.%s.bin" % (base, suffix)), "wb") as f:
                    f.write(bytes(data))
            saved.append(base)
        print("%-22s %d connection(s): %s" % (name, len(conns), ", ".join(saved)))


def record(name, backend, argv_of):
    r = Relay(backend)
    url = "http://127.0.0.1:%d" % r.port
    argv = argv_of(url, r.port)
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
                   check=False)
    r.wait_idle()
    r.save(name)


def main():
    root = tempfile.mkdtemp()
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<!doctype html><html><head><title>t</title></head>"
                "<body><p>hello</p><img src=\"pic.png\"></body></html>\n")
    with open(os.path.join(root, "a.txt"), "w") as f:
        f.write("file a\n")
    with open(os.path.join(root, "pic.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    upload = os.path.join(root, "upload.bin")
    with open(upload, "wb") as f:
        f.write(bytes(range(256)) * 8)

    static_port = free_port()
    static = subprocess.Popen([sys.executable, "-m", "http.server", str(static_port),
                               "--bind", "127.0.0.1", "--directory", root],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app_port = free_port()
    threading.Thread(target=app_server, args=(app_port,), daemon=True).start()
    try:
        wait_port(static_port)
        wait_port(app_port)
        py = sys.executable
        record("curl-get", static_port, lambda u, p: ["curl", "-s", u + "/a.txt"])
        record("curl-http10", static_port, lambda u, p: ["curl", "-0", "-s", u + "/a.txt"])
        record("curl-head", static_port, lambda u, p: ["curl", "-s", "-I", u + "/a.txt"])
        record("curl-404", static_port, lambda u, p: ["curl", "-s", u + "/missing"])
        record("curl-keepalive", app_port,
               lambda u, p: ["curl", "-s", u + "/chunked", u + "/hello"])
        record("curl-post", app_port,
               lambda u, p: ["curl", "-s", "-d", "name=value&x=1", u + "/upload"])
        record("curl-chunked-upload", app_port,
               lambda u, p: ["curl", "-s", "-H", "Transfer-Encoding: chunked",
                             "--data-binary", "@" + upload, u + "/upload"])
        record("curl-proxy", app_port,
               lambda u, p: ["curl", "-s", "-x", u, "http://www.example.test/hello"])
        record("curl-exe", app_port, lambda u, p: ["curl", "-s", "-o", "/dev/null",
                                                   u + "/setup.exe"])
        record("wget-get", static_port, lambda u, p: ["wget", "-q", "-O", "/dev/null",
                                                      u + "/a.txt"])
        record("wget-chunked", app_port, lambda u, p: ["wget", "-q", "-O", "/dev/null",
                                                       u + "/chunked"])
        record("python-urllib", static_port,
               lambda u, p: [py, "-c", "import urllib.request,sys;"
                             "urllib.request.urlopen(sys.argv[1]).read()", u + "/a.txt"])
        record("python-urllib-post", app_port,
               lambda u, p: [py, "-c", "import urllib.request,sys;"
                             "urllib.request.urlopen(sys.argv[1], data=b'k=v').read()",
                             u + "/upload"])
        if shutil.which("chromium"):
            record("chromium", static_port,
                   lambda u, p: ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                                 "--disable-background-networking", "--no-first-run",
                                 "--user-data-dir=" + tempfile.mkdtemp(), "--dump-dom",
                                 u + "/index.html"])
            record("chromium-app", app_port,
                   lambda u, p: ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                                 "--disable-background-networking", "--no-first-run",
                                 "--user-data-dir=" + tempfile.mkdtemp(), "--dump-dom",
                                 u + "/chunked"])
    finally:
        static.terminate()
        static.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
