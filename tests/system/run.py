"""run.py - runs the whole system suite, or the named files/tests:

  python3 tests/system/run.py --node build/node/portcullis-node
  python3 tests/system/run.py --node ... test_blocked test_cases.Cases.test_cl_te

Each test file also runs alone: python3 tests/system/test_blocked.py --node ...
"""

import argparse
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--node", default=os.environ.get("PORTCULLIS_NODE", ""))
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("names", nargs="*", help="test files or dotted test names (default: all)")
    ns = ap.parse_args()
    sys.argv = [sys.argv[0], "--node", ns.node]
    if ns.names:
        loader = unittest.defaultTestLoader
        suite = unittest.TestSuite(loader.loadTestsFromName(n.removesuffix(".py")) for n in ns.names)
    else:
        suite = unittest.defaultTestLoader.discover(os.path.dirname(os.path.abspath(__file__)), "test_*.py")
    harness.main(suite=suite, verbosity=1 if ns.quiet else 2)


if __name__ == "__main__":
    main()
