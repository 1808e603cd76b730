"""test_config.py - `portcullis-node --policy FILE -n`: a policy that does not
validate makes it exit non-zero naming the JSON path of the problem; a good
one prints "configuration OK". Each bad policy is the suite's base policy
with one change (the table below)."""

import copy
import json
import subprocess

import harness
from harness import NodeTestCase, sanitizer_env, sanitizer_lines


def _set(path, value):
    """A change: the value at path (keys and indexes) becomes value; the
    sentinel DELETE removes it."""
    def change(doc):
        node = doc
        for k in path[:-1]:
            node = node[k]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = copy.deepcopy(value)
        return doc
    return change


DELETE = object()

# (name, change to the base policy, JSON path the message must name)
BAD = [
    ("version_wrong_type", _set(["version"], "one"), "$.version"),
    ("schema_unknown", _set(["schema"], "portcullis.policy/9"), "$.schema"),
    ("defaults_missing", _set(["defaults"], DELETE), "$.defaults"),
    ("unknown_top_level_key", _set(["colour"], "red"), "$.colour"),
    ("unknown_proxy_key", _set(["proxy", "header_timeout"], 1000), "$.proxy.header_timeout"),
    ("unknown_group_key", _set(["groups", 0, "skype_exceptions"], True), "$.groups[0].skype_exceptions"),
    ("bad_cidr", _set(["groups", 0, "sources", 0], "127.0.0.300/32"), "$.groups[0].sources[0]"),
    ("bad_cidr_length", _set(["groups", 0, "sources", 0], "127.0.0.2/33"), "$.groups[0].sources[0]"),
    ("bad_blocked_prefix", _set(["defaults", "blocked_prefixes"], ["10.0.0.0/8", "nonsense"]),
     "$.defaults.blocked_prefixes[1]"),
    ("boolean_wrong_type", _set(["defaults", "block_executables"], "yes"), "$.defaults.block_executables"),
    ("timeout_out_of_range", _set(["proxy", "header_timeout_ms"], 1), "$.proxy.header_timeout_ms"),
    ("port_protocol_unknown", _set(["proxy", "ports", "8080"], "gopher"), "$.proxy.ports['8080']"),
    ("port_protocol_wrong_type", _set(["proxy", "ports", "8080"], 80), "$.proxy.ports['8080']"),
    ("use_lists_unknown_list", _set(["defaults", "use_lists"], ["nope"]), "$.defaults.use_lists[0]"),
    ("bad_domain", _set(["defaults", "blocked_domains"], ["exa mple.com"]), "$.defaults.blocked_domains[0]"),
]


class Check(NodeTestCase):
    start_node = False

    def check(self, text):
        f = self.tmp / "policy.json"
        f.write_text(text)
        r = subprocess.run([harness.node_path(), "--policy", str(f), "-n"], capture_output=True,
                           timeout=harness.CLIENT_TIMEOUT, env=sanitizer_env())
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        self.assertEqual(sanitizer_lines(err), [], err)
        return r.returncode, out, err, str(f)

    def test_good_policy(self):
        rc, out, err, f = self.check(json.dumps(self.policy()))
        self.assertEqual(rc, 0, err)
        self.assertIn("configuration OK", out)

    def test_not_json(self):
        rc, out, err, f = self.check('{"schema": "portcullis.policy/1", "version": 1,')
        self.assertNotEqual(rc, 0)
        self.assertNotIn("configuration OK", out)
        self.assertIn(f, err, "the message must name the file")

    def test_missing_file(self):
        r = subprocess.run([harness.node_path(), "--policy", str(self.tmp / "nope.json"), "-n"],
                           capture_output=True, timeout=harness.CLIENT_TIMEOUT, env=sanitizer_env())
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"nope.json", r.stderr)


def _add_bad_tests():
    for name, change, path in BAD:
        def t(self, change=change, path=path):
            doc = change(self.policy())
            rc, out, err, f = self.check(json.dumps(doc))
            self.assertEqual(rc, 1, "exit status for an invalid policy (stderr: %s)" % err)
            self.assertNotIn("configuration OK", out)
            self.assertIn(path + ":", err, "the message must name the JSON path %s" % path)
        t.__name__ = "test_bad_" + name
        setattr(Check, t.__name__, t)


_add_bad_tests()

if __name__ == "__main__":
    harness.main()
