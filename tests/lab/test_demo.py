"""test_demo.py - the README's main command (tests/lab/demo.py, docs/lab.md#the-demo)
does what it says, and leaves nothing behind:

  test_1_ctrl_c             the demo comes up, prints the URL, the admin token
                            and the fingerprints, and Ctrl-C (SIGINT to its
                            process group, as a terminal sends it) removes
                            every namespace, link, process and file it made
  test_2_killed_then_once   a demo killed with SIGKILL leaves namespaces; the
                            next run (--once) removes them, shows in every
                            office staff reaching nothing and the board only
                            TLS 443, the controller holding events from all
                            three nodes, exits 0 and leaves nothing

Run (root): python3 test_demo.py --node PATH --controller PATH [unittest args]
The demo's REST port is picked free (--rest 127.0.0.1:0), so a controller on
8443 does not get in the way; a demo already running is stopped by it.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import demo as D  # noqa: E402

NODE = CONTROLLER = ""
UP_TIMEOUT = 90  # the bring-up takes a few seconds; the target is under 60
OFFICES = {"Berlin": "EMEA", "Paris": "EMEA", "Boston": "Americas"}
ROW = re.compile(r"^(Berlin|Paris|Boston)\s+(EMEA|Americas)\s+(staff|board)\s+(\d+\.\d+\.\d+\.\d+)\s+"
                 r"(.+?)\s{2,}(.+)$", re.M)


def demo_cmd(*extra):
    return [sys.executable, str(HERE / "demo.py"), "--node", NODE, "--controller", CONTROLLER,
            "--rest", "127.0.0.1:0", *extra]


def env():
    e = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    e.pop("DEMO_ONCE", None)
    e.pop("PORTCULLIS_KEEP", None)
    return e


class Demo(unittest.TestCase):
    def start_interactive(self, tmp_name):
        out = open(Path(self.tmp) / (tmp_name + ".out"), "w+b")
        err = open(Path(self.tmp) / (tmp_name + ".err"), "w+b")
        self.addCleanup(out.close)
        self.addCleanup(err.close)
        p = subprocess.Popen(demo_cmd(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env(),
                             start_new_session=True)
        deadline = time.monotonic() + UP_TIMEOUT
        while b"The demo is up" not in Path(out.name).read_bytes():
            if p.poll() is not None or time.monotonic() > deadline:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGINT)
                    p.wait(60)
                self.fail("the demo did not come up (exit %s):\n%s\n%s" % (
                    p.returncode, Path(out.name).read_text(errors="replace"),
                    Path(err.name).read_text(errors="replace")))
            time.sleep(0.1)
        return p, out, err

    def assertNothingLeft(self, tmp_dir, text):
        self.assertEqual(D.leftovers(), [], text)
        self.assertFalse(Path(tmp_dir).exists(), "%s is still there\n%s" % (tmp_dir, text))
        mine = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if tmp_dir.encode() in cmdline:
                mine.append("%s: %s" % (d.name, cmdline.replace(b"\0", b" ").decode(errors="replace")))
        self.assertEqual(mine, [], "processes of the demo still run\n" + text)

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.tmp = tempfile.mkdtemp(prefix="pc-test-demo-")

    @classmethod
    def tearDownClass(cls):
        import shutil
        D.remove_leftovers()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_1_ctrl_c(self):
        p, out, err = self.start_interactive("ctrl-c")
        text = Path(out.name).read_text()
        # What the user needs to open the REST API and query it.
        m = re.search(r"REST API / dashboard\s+(https://127\.0\.0\.1:(\d+)/)", text)
        self.assertIsNotNone(m, text)
        self.assertNotEqual(m.group(2), "0", text)
        self.assertRegex(text, r"admin token\s+[0-9a-f]{48}\n")
        self.assertRegex(text, r"REST certificate\s+/tmp/pcdemo-\d+/controller/controller\.db\.cert\.pem\n"
                               r"\s+SHA-256 [0-9A-F:]{95}\n")
        self.assertRegex(text, r"node CA fingerprint\s+[0-9a-f]{64}")
        self.assertIn('"$PC/api/v1/events?limit=20"', text)
        tmp_dir = re.search(r"Files \(.*\): (/tmp/pcdemo-\d+)", text).group(1)
        self.assertTrue(Path(tmp_dir).is_dir())
        # The URL printed answers (the REST API's health, no token needed).
        cert = Path(tmp_dir) / "controller" / "controller.db.cert.pem"
        r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(cert), m.group(1) + "api/v1/health"],
                           capture_output=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        rc = p.wait(60)
        all_text = text + Path(err.name).read_text(errors="replace")
        self.assertEqual(rc, 0, all_text)
        self.assertIn("stopped; nothing left", all_text)
        self.assertNothingLeft(tmp_dir, all_text)

    def test_2_killed_then_once(self):
        p, out, err = self.start_interactive("killed")
        first_tmp = re.search(r"Files \(.*\): (/tmp/pcdemo-\d+)", Path(out.name).read_text()).group(1)
        os.kill(p.pid, signal.SIGKILL)  # no teardown at all
        p.wait(10)
        left = D.leftovers()
        self.assertTrue(any(n.startswith("pcdemo-") for n in left), left)  # so the next run has work to do

        t0 = time.monotonic()
        r = subprocess.run(demo_cmd("--once"), stdin=subprocess.DEVNULL, capture_output=True, env=env(),
                           timeout=240)
        took = time.monotonic() - t0
        out_text, err_text = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        all_text = out_text + err_text
        print("\n  demo --once after a killed run: exit %d in %.1f s\n%s" % (r.returncode, took, out_text),
              file=sys.stderr)
        self.assertEqual(r.returncode, 0, all_text)
        self.assertRegex(err_text, r"removed what an earlier run left: .*namespace pcdemo-inet")
        self.assertIn(first_tmp, err_text)
        m = re.search(r"bring-up took ([0-9.]+) s", err_text)
        self.assertIsNotNone(m, err_text)
        self.assertLess(float(m.group(1)), 60, err_text)

        rows = {(o, g): (region, reached, events) for o, region, g, _, reached, events in ROW.findall(out_text)}
        self.assertEqual(len(rows), 6, out_text)
        for office, region in OFFICES.items():
            staff, board = rows[(office, "staff")], rows[(office, "board")]
            self.assertEqual(staff[0], region)
            self.assertEqual(staff[1], "none", "%s staff reached the supernode:\n%s" % (office, out_text))
            self.assertEqual(board[1], "tls443", "%s board:\n%s" % (office, out_text))
            # The controller's events, per node (one node per office).
            self.assertRegex(staff[2], r"^[4-9]\d* block$", out_text)
            self.assertRegex(board[2], r"^[3-9]\d* block, [1-9]\d* exception$", out_text)
        self.assertRegex(out_text, r"drop_high_ports packets: berlin-gw [1-9]\d*, paris-gw [1-9]\d*, "
                                   r"boston-gw [1-9]\d*")
        this_tmp = re.search(r"Files \(.*\): (/tmp/pcdemo-\d+)", out_text).group(1)
        self.assertIn("stopped; nothing left", err_text)
        self.assertNothingLeft(this_tmp, all_text)
        self.assertFalse(Path(first_tmp).exists(), first_tmp)


def main():
    global NODE, CONTROLLER
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--node", default=os.environ.get("PORTCULLIS_NODE", ""))
    ap.add_argument("--controller", default=os.environ.get("PORTCULLIS_CONTROLLER", ""))
    ns, rest = ap.parse_known_args()
    NODE = os.path.abspath(ns.node) if ns.node else ""
    CONTROLLER = os.path.abspath(ns.controller) if ns.controller else ""
    for what, path in (("portcullis-node (--node)", NODE), ("portcullis-controller (--controller)", CONTROLLER)):
        if not path or not os.access(path, os.X_OK):
            print("test_demo: %s not found: %r" % (what, path), file=sys.stderr)
            sys.exit(2)
    if os.geteuid() != 0:
        print("test_demo: needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    unittest.main(module="__main__", argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
