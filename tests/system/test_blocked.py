"""test_blocked.py - what real clients see when the policy blocks them, and
the event each block writes. (Raw-byte blocks are data: cases/ and
test_cases.py.)"""

import json
import ssl

import harness
from harness import NodeTestCase, recv_until_closed


class Blocked(NodeTestCase):

    def assertEventFor(self, reason, destination=None, **fields):
        ev = self.node.wait_event(reason, "block", **fields)
        self.assertEqual(ev["verdict"], "blocked")
        self.assertEqual(ev["group"], "defaults", json.dumps(ev))
        self.assertEqual(ev["source"], "127.0.0.1")
        if destination:
            self.assertEqual(ev["destination"], destination, json.dumps(ev))
        self.assertEqual(ev["policy_version"], 1)
        return ev

    # downloads

    def test_skype_exe_url_suffix(self):
        url = "http://origin.test:%d/SkypeSetup/skype.exe" % self.lab.ports["http"]
        rc, rep = self.curl_reply(url)
        self.assertBlockPage(rep, "blocked-url-suffix")
        ev = self.assertEventFor("blocked-url-suffix", "origin.test", port=self.lab.ports["http"])
        self.assertIn("skype.exe", ev["detail"])
        self.assertEqual(ev["bytes_down"], 0, "the origin's bytes must not have been read: " + json.dumps(ev))

    def test_skype_exe_url_suffix_case_and_encoding(self):
        # Case-insensitive, after percent-decoding: %65 is 'e'.
        url = "http://origin.test:%d/SkypeSetup/SKYPE.%%65xe" % self.lab.ports["http"]
        rc, rep = self.curl_reply(url)
        self.assertBlockPage(rep, "blocked-url-suffix")
        self.assertEventFor("blocked-url-suffix", "origin.test")

    def test_wget_skype_exe(self):
        env = harness.client_env(http_proxy=self.node.url + "/")
        out = self.tmp / "skype.exe"
        r = harness.run(["wget", "-q", "--tries=1", "--timeout=20", "-O", str(out),
                         "http://origin.test:%d/SkypeSetup/skype.exe" % self.lab.ports["http"]], env=env)
        self.assertEqual(r.returncode, 8, "wget must report a server error (403): %r" % r)
        self.assertFalse(out.exists() and out.read_bytes().startswith(b"MZ"), "the executable arrived")
        self.assertEventFor("blocked-url-suffix")

    def test_executable_by_content_disposition(self):
        rc, rep = self.curl_reply("http://origin.test:%d/setup" % self.lab.ports["http"])
        self.assertBlockPage(rep, "executable-download")
        ev = self.assertEventFor("executable-download", "origin.test")
        self.assertIn("setup.exe", ev["detail"])

    def test_executable_by_mz(self):
        rc, rep = self.curl_reply("http://origin.test:%d/mz" % self.lab.ports["http"])
        self.assertBlockPage(rep, "executable-download")
        self.assertNotIn(b"This program cannot be run", rep.raw)
        ev = self.assertEventFor("executable-download", "origin.test")
        self.assertIn("MZ", ev["detail"])

    def test_executable_over_tls_is_not_visible(self):
        # Inside TLS the proxy sees no HTTP: the download is not its to block.
        # (Documents the limit; the domain and certificate checks still ran.)
        out = self.tmp / "mz"
        rc, _, err = self.curl("-o", str(out), "--cacert", self.lab.ca,
                               "https://origin.test:%d/mz" % self.lab.ports["tls12"])
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.read_bytes().startswith(b"MZ"))
        self.assertNoBlocks()

    # domains

    def test_skype_domains_http(self):
        for host in ("skype.com", "www.skype.com", "a.b.skype.com"):
            self.node.mark()
            rc, rep = self.curl_reply("http://%s:%d/hello" % (host, self.lab.ports["http"]))
            self.assertBlockPage(rep, "blocked-domain")
            ev = self.assertEventFor("blocked-domain", host)
            self.assertIn("skype.com", ev["detail"])
            self.assertEqual(ev["protocol"], "http")

    def test_skype_domains_connect(self):
        for host in ("skype.com", "www.skype.com"):
            for key in ("tls12", "tls13"):
                self.node.mark()
                rc, out, err = self.curl("-w", "%{http_connect}", "--cacert", self.lab.ca,
                                         "https://%s:%d/hello" % (host, self.lab.ports[key]))
                self.assertNotEqual(rc, 0)
                self.assertEqual(out.strip(), b"403", "curl saw CONNECT reply %r (%s)" % (out, err))
                self.assertEventFor("blocked-domain", host, port=self.lab.ports[key])

    def test_skype_domain_connect_page(self):
        s, rep = harness.open_tunnel(self.node.port, "www.skype.com:%d" % self.lab.ports["tls12"], expect=403)
        s.close()
        self.assertBlockPage(rep, "blocked-domain")
        self.assertEventFor("blocked-domain", "www.skype.com")

    def test_skype_sni_inside_allowed_connect(self):
        # CONNECT names an allowed host, the ClientHello's SNI names Skype.
        s = harness.open_tunnel(self.node.port, "origin.test:%d" % self.lab.ports["tls12"])
        s.sendall(harness.client_hello("www.skype.com"))
        data, how = recv_until_closed(s)
        s.close()
        self.assertEqual(data, b"", "nothing from the server may reach the client")
        ev = self.assertEventFor("blocked-domain")
        self.assertEqual(ev["protocol"], "tls")
        self.assertIn("www.skype.com", ev["detail"])

    # ports

    def test_connect_port_not_allowed(self):
        rc, out, err = self.curl("-w", "%{http_connect}", "-k",
                                 "https://origin.test:%d/" % self.lab.ports["unlisted"])
        self.assertNotEqual(rc, 0)
        self.assertEqual(out.strip(), b"403", err)
        self.assertEventFor("port-not-allowed", "origin.test", port=self.lab.ports["unlisted"])

    # certificates

    def _self_signed(self, key, version_args):
        rc, out, err = self.curl("-k", "-w", "%{http_code}", *version_args,
                                 "https://selfsigned.test:%d/hello" % self.lab.ports[key])
        self.assertNotEqual(rc, 0, "curl got through: %r" % out)
        self.assertNotIn(b"hello from", out)
        ev = self.assertEventFor("tls-certificate", "selfsigned.test", port=self.lab.ports[key])
        self.assertEqual(ev["protocol"], "tls")
        self.assertTrue(ev["detail"].startswith("certificate-untrusted"), json.dumps(ev))

    def test_self_signed_tls12(self):
        self._self_signed("self12", ["--tls-max", "1.2"])

    def test_self_signed_tls13(self):
        # The certificate is encrypted: the verdict comes from the probe.
        self._self_signed("self13", ["--tlsv1.3"])

    def test_self_signed_tls13_nothing_reaches_client(self):
        s = harness.open_tunnel(self.node.port, "selfsigned.test:%d" % self.lab.ports["self13"])
        s.sendall(harness.client_hello("selfsigned.test"))
        data, how = recv_until_closed(s)
        s.close()
        self.assertEqual(data, b"", "the ServerHello of a failing server reached the client")
        self.assertEventFor("tls-certificate", "selfsigned.test")

    def test_wrong_name_tls12(self):
        # A CA-signed certificate, but not for the name the client asked for
        # (the origin falls back to its origin.test certificate).
        s = harness.open_tunnel(self.node.port, "origin.test:%d" % self.lab.ports["tls12"])
        s.sendall(harness.client_hello("unknown.test", max_version=ssl.TLSVersion.TLSv1_2))
        data, how = recv_until_closed(s)
        s.close()
        ev = self.assertEventFor("tls-certificate")
        self.assertTrue(ev["detail"].startswith("certificate-name-mismatch"), json.dumps(ev))


class ServerSide(NodeTestCase):
    """The server's bytes are classified too: a relay that answers on 80 or
    443 with its own protocol is cut off."""

    def test_http_server_answers_junk(self):
        rc, rep = self.curl_reply("http://origin.test:%d/hello" % self.lab.ports["junk_http"])
        self.assertBlockPage(rep, "http-ctl")
        self.assertNotIn(b"SKYPE-RELAY", rep.raw)
        ev = self.node.wait_event("http-ctl", "block")
        self.assertEqual(ev["destination"], "origin.test")

    def test_tls_server_answers_junk(self):
        s = harness.open_tunnel(self.node.port, "origin.test:%d" % self.lab.ports["junk_tls"])
        s.sendall(harness.client_hello("origin.test"))
        data, how = recv_until_closed(s)
        s.close()
        self.assertEqual(data, b"", "the server's junk reached the client")
        ev = self.node.wait_event("tls-record-type", "block")
        self.assertEqual(ev["protocol"], "tls")

    def test_truncated_response_is_closed_not_paged(self):
        # The head and 10 body bytes went to the client; then the server
        # closes 990 bytes short. A 403 page now would be read as body bytes,
        # so the proxy must close (docs/proxy.md, "How a block looks").
        h = self.lab.ports["http"]
        s = harness.connect(self.node.port)
        s.sendall(b"GET http://origin.test:%d/truncated HTTP/1.1\r\nHost: origin.test:%d\r\n\r\n" % (h, h))
        data, how = recv_until_closed(s)
        s.close()
        head = harness.parse_head(data)
        self.assertIsNotNone(head, data)
        self.assertEqual(head[0], 200, data)
        self.assertNotIn(b"Portcullis", head[3], "a block page was appended to a response body: %r" % data)
        self.assertEqual(head[3], b"0123456789")
        ev = self.node.wait_event("http-truncated", "block")
        self.assertEqual(ev["destination"], "origin.test")


if __name__ == "__main__":
    harness.main()
