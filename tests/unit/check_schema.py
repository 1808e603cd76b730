#!/usr/bin/env python3
"""check_schema.py - keeps schema/policy.schema.json and the node's parser
(shared/pc_policy.c) describing the same document.

Checks, against the JSON Schema (draft 2020-12):
  - the schema itself is a valid draft 2020-12 schema;
  - docs/examples/*.json and tests/vectors/policy/good/*.json are valid;
  - shared/lists/*.json are valid list entries ($defs/list);
  - every tests/vectors/policy/bad/NAME.json is judged as the second line of
    NAME.expect says: "schema: reject" (the schema alone refuses it; a file
    that is not JSON counts as refused) or "schema: accept" (only the parser
    can see the problem, e.g. host bits set or a prefix in two groups).

Usage: check_schema.py [SOURCE_DIR]   (default: the repository of this file)
Exit status: 0 all passed, 1 something failed, 77 skipped (python3-jsonschema
is not installed; CTest maps 77 to "skipped" with SKIP_RETURN_CODE 77).
"""
import glob
import json
import os
import sys

try:
    import jsonschema
except ImportError:
    print("check_schema: python3-jsonschema is not installed; skipped")
    sys.exit(77)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    with open(os.path.join(root, "schema", "policy.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    validator_cls = jsonschema.Draft202012Validator
    validator_cls.check_schema(schema)
    doc = validator_cls(schema)
    list_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/list"}
    lst = validator_cls(list_schema)

    passed = failed = 0

    def report(ok, what):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print("FAIL " + what)

    def errors(validator, path):
        """None when the file is not JSON, else the schema's errors."""
        try:
            with open(path, encoding="utf-8") as f:
                inst = json.load(f)
        except (ValueError, UnicodeDecodeError):
            return None
        return sorted(validator.iter_errors(inst), key=lambda e: list(e.absolute_path))

    # The link's messages: every "ok" wire vector is valid against
    # schema/wire/portcullis.v1.schema.json (the parser's own tests check
    # the refusals, which need more than a schema: ascending seq, UTF-8).
    with open(os.path.join(root, "schema", "wire", "portcullis.v1.schema.json"), encoding="utf-8") as f:
        wire_schema = json.load(f)
    validator_cls.check_schema(wire_schema)
    wire = validator_cls(wire_schema)
    for path in sorted(glob.glob(os.path.join(root, "tests", "vectors", "wire", "ok-*.txt"))):
        with open(path, encoding="utf-8") as f:
            f.readline()
            inst = json.loads(f.read())
        errs = list(wire.iter_errors(inst))
        report(not errs, "%s: %s" % (path, errs[0].message if errs else ""))

    must_pass = sorted(glob.glob(os.path.join(root, "docs", "examples", "*.json")))
    must_pass += sorted(glob.glob(os.path.join(root, "tests", "vectors", "policy", "good", "*.json")))
    for path in must_pass:
        errs = errors(doc, path)
        detail = "not JSON" if errs is None else "; ".join(
            "%s: %s" % ("$" + "".join("[%r]" % p for p in e.absolute_path), e.message) for e in errs[:3])
        report(errs == [], "%s is not valid against the schema: %s" % (os.path.relpath(path, root), detail))

    lists = sorted(glob.glob(os.path.join(root, "shared", "lists", "*.json")))
    for path in lists:
        errs = errors(lst, path)
        report(errs == [], "%s is not a valid list entry" % os.path.relpath(path, root))

    bad = sorted(glob.glob(os.path.join(root, "tests", "vectors", "policy", "bad", "*.json")))
    for path in bad:
        expect = path[:-5] + ".expect"
        try:
            with open(expect, encoding="utf-8") as f:
                lines = f.read().splitlines()
            want = lines[1].strip() if len(lines) > 1 else ""
        except OSError:
            want = ""
        if want not in ("schema: reject", "schema: accept"):
            report(False, "%s: second line must be 'schema: reject' or 'schema: accept'" %
                   os.path.relpath(expect, root))
            continue
        errs = errors(doc, path)
        rejected = errs is None or len(errs) > 0
        report(rejected == (want == "schema: reject"),
               "%s: the schema %s it, but %s says '%s'" %
               (os.path.relpath(path, root), "rejects" if rejected else "accepts",
                os.path.basename(expect), want))

    total_expected = len(must_pass) + len(lists) + len(bad)
    if total_expected == 0 or len(bad) == 0 or len(lists) == 0:
        report(False, "found nothing to check under %s" % root)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
