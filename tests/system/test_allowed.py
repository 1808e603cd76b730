"""test_allowed.py - conforming traffic from real clients goes through the
proxy untouched: the client gets the origin's status and body, and the node
writes no block event."""

import hashlib
import ssl
import urllib.request

import harness
from harness import NodeTestCase, run, client_env


class Allowed(NodeTestCase):

    def hello(self, port, host="origin.test", scheme="http"):
        return "%s://%s:%d/hello" % (scheme, host, port)

    def test_curl_http11(self):
        rc, rep = self.curl_reply(self.hello(self.lab.ports["http"]))
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from origin.test:%d\n" % self.lab.ports["http"])
        # The proxy rewrote the absolute-form request line to origin-form.
        self.assertEqual(rep.header("X-Origin-Request"), "GET /hello HTTP/1.1")
        self.assertNoBlocks()

    def test_curl_http10(self):
        rc, rep = self.curl_reply(self.hello(self.lab.ports["http"]), "-0")
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.header("X-Origin-Request"), "GET /hello HTTP/1.0")
        self.assertTrue(rep.body.startswith(b"hello from origin.test"), rep)
        self.assertNoBlocks()

    def test_curl_keepalive_two_urls(self):
        url = self.hello(self.lab.ports["http"])
        rc, out, err = self.curl(url, url + "?second", "-w", "[connects=%{num_connects}]\n")
        self.assertEqual(rc, 0, err)
        text = out.decode()
        self.assertEqual(text.count("hello from origin.test"), 2, text)
        # The second transfer reused the connection to the proxy.
        self.assertIn("[connects=1]", text)
        self.assertIn("[connects=0]", text, "curl opened a new connection for the second URL:\n" + text)
        self.assertNoBlocks()

    def test_curl_post(self):
        rc, rep = self.curl_reply("http://origin.test:%d/upload" % self.lab.ports["http"],
                                  "--data-binary", "x" * 1000)
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"posted 1000 bytes\n")
        self.assertNoBlocks()

    def test_curl_https_tls12(self):
        rc, rep = self.curl_reply(self.hello(self.lab.ports["tls12"], scheme="https"),
                                  "--cacert", self.lab.ca, "--tlsv1.2", "--tls-max", "1.2")
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from origin.test:%d\n" % self.lab.ports["tls12"])
        self.assertNoBlocks()

    def test_curl_https_tls13(self):
        rc, rep = self.curl_reply(self.hello(self.lab.ports["tls13"], scheme="https"),
                                  "--cacert", self.lab.ca, "--tlsv1.3")
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from origin.test:%d\n" % self.lab.ports["tls13"])
        self.assertNoBlocks()

    def test_curl_https_tls13_twice_uses_probe_cache(self):
        # The second connection is answered from the probe cache; both work.
        url = self.hello(self.lab.ports["tls13"], scheme="https")
        for _ in range(2):
            rc, rep = self.curl_reply(url, "--cacert", self.lab.ca, "--no-keepalive")
            self.assertEqual(rc, 0)
            self.assertEqual(rep.status, 200, rep)
        self.assertNoBlocks()

    def test_notskype_http_and_https(self):
        rc, rep = self.curl_reply(self.hello(self.lab.ports["http"], host="notskype.com"))
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertEqual(rep.body, b"hello from notskype.com:%d\n" % self.lab.ports["http"])
        rc, rep = self.curl_reply(self.hello(self.lab.ports["tls12"], host="notskype.com", scheme="https"),
                                  "--cacert", self.lab.ca)
        self.assertEqual(rc, 0)
        self.assertEqual(rep.status, 200, rep)
        self.assertNoBlocks()

    def test_big_download_http(self):
        out = self.tmp / "big"
        rc, _, err = self.curl("-o", str(out), "http://origin.test:%d/big" % self.lab.ports["http"])
        self.assertEqual(rc, 0, err)
        data = out.read_bytes()
        self.assertEqual(len(data), harness.BIG_SIZE)
        self.assertEqual(hashlib.sha256(data).digest(), hashlib.sha256(self.lab.big).digest())
        self.assertNoBlocks()

    def test_big_download_https_tls13(self):
        out = self.tmp / "big"
        rc, _, err = self.curl("-o", str(out), "--cacert", self.lab.ca,
                               "https://origin.test:%d/big" % self.lab.ports["tls13"])
        self.assertEqual(rc, 0, err)
        self.assertEqual(hashlib.sha256(out.read_bytes()).digest(), hashlib.sha256(self.lab.big).digest())
        self.assertNoBlocks()

    def test_wget_http_and_https(self):
        env = client_env(http_proxy=self.node.url + "/", https_proxy=self.node.url + "/")
        r = run(["wget", "-q", "-O", "-", "--tries=1", "--timeout=20",
                 self.hello(self.lab.ports["http"])], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"hello from origin.test:%d\n" % self.lab.ports["http"])
        r = run(["wget", "-q", "-O", "-", "--tries=1", "--timeout=20", "--ca-certificate=" + self.lab.ca,
                 self.hello(self.lab.ports["tls12"], scheme="https")], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"hello from origin.test:%d\n" % self.lab.ports["tls12"])
        self.assertNoBlocks()

    def _s_client(self, port):
        req = b"GET /hello HTTP/1.1\r\nHost: origin.test:%d\r\nConnection: close\r\n\r\n" % port
        r = run(["openssl", "s_client", "-proxy", "127.0.0.1:%d" % self.node.port,
                 "-connect", "origin.test:%d" % port, "-servername", "origin.test", "-CAfile", self.lab.ca,
                 "-verify_return_error", "-quiet"], input_=req)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        self.assertIn(b"HTTP/1.1 200", r.stdout)
        self.assertIn(b"hello from origin.test:%d\n" % port, r.stdout)

    def test_openssl_s_client_tls12(self):
        self._s_client(self.lab.ports["tls12"])
        self.assertNoBlocks()

    def test_openssl_s_client_tls13(self):
        self._s_client(self.lab.ports["tls13"])
        self.assertNoBlocks()

    def test_python_urllib_http_and_https(self):
        ctx = ssl.create_default_context(cafile=self.lab.ca)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": self.node.url, "https": self.node.url}),
            urllib.request.HTTPSHandler(context=ctx))
        with opener.open(self.hello(self.lab.ports["http"]), timeout=20) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.read(), b"hello from origin.test:%d\n" % self.lab.ports["http"])
        for key in ("tls12", "tls13"):
            with opener.open(self.hello(self.lab.ports[key], scheme="https"), timeout=20) as r:
                self.assertEqual(r.status, 200)
                self.assertEqual(r.read(), b"hello from origin.test:%d\n" % self.lab.ports[key])
        self.assertNoBlocks()


if __name__ == "__main__":
    harness.main()
