#!/usr/bin/env python3
"""Count test cases across every suite and print the closing line `N passed, N failed`.

Reads meson's testlog.json (each test binary prints TAP: one `ok`/`not ok` line per case) and
any extra summary files given on the command line holding a line `<word>: N passed, N failed`
(the SDK end-to-end runner writes one). A binary that failed without reporting a failing case
(a crash, a timeout) counts as one failure more.
"""
import json
import re
import sys

passed = failed = 0
rows = []
log = sys.argv[1]
try:
    with open(log) as f:
        entries = [json.loads(line) for line in f if line.strip()]
except FileNotFoundError:
    entries = []
for t in entries:
    out = t.get("stdout") or ""
    ok = len(re.findall(r"^ok \d+", out, re.M))
    bad = len(re.findall(r"^not ok \d+", out, re.M))
    if t.get("result") not in ("OK", "EXPECTEDFAIL", "SKIP") and bad == 0:
        bad = 1
    passed += ok
    failed += bad
    rows.append((t.get("name"), ok, bad, t.get("result")))
for extra in sys.argv[2:]:
    try:
        text = open(extra).read()
    except FileNotFoundError:
        print(f"summary: {extra} missing: counted as 1 failure")
        failed += 1
        continue
    m = re.findall(r"^\w+: (\d+) passed, (\d+) failed", text, re.M)
    if not m:
        print(f"summary: {extra} has no result line: counted as 1 failure")
        failed += 1
        continue
    p, f_ = map(int, m[-1])
    passed += p
    failed += f_
    rows.append((extra, p, f_, "OK" if f_ == 0 else "FAIL"))
for name, ok, bad, res in rows:
    print(f"  {name:<40} {ok:5d} passed {bad:4d} failed  {res}")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or passed == 0 else 0)
