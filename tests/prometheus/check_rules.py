#!/usr/bin/env python3
"""Checks deploy/prometheus/alerts.yml with the real promtool: `promtool check rules`, then the
unit tests of deploy/prometheus/tests/alerts.test.yml against a copy of the rules without
annotations (when an alert fires is under test; its text is checked by `check rules`).
Also fails when an alert of alerts.yml has no test that fires it and none that keeps it silent.
With CI set, a missing promtool is a failure; elsewhere it is a loud SKIPPED."""
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
TESTS = os.path.join(ROOT, "deploy/prometheus/tests/alerts.test.yml")


def main() -> int:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            print("promtool is missing (apt-get install prometheus)", file=sys.stderr)
            return 1
        print("SKIPPED prometheus rules check: promtool is not installed (apt-get install prometheus)")
        return 0
    subprocess.run([promtool, "check", "rules", RULES], check=True)

    with open(RULES) as f:
        rules = yaml.safe_load(f)
    with open(TESTS) as f:
        tests = yaml.safe_load(f)
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    fires, silent = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    missing = [f"{a} ({', '.join(k for k, s in (('firing', fires), ('silent', silent)) if a not in s)})"
               for a in alerts if a not in fires or a not in silent]
    if missing:
        print("alerts without a test case:", *missing, sep="\n  ", file=sys.stderr)
        return 1
    unknown = (fires | silent) - set(alerts)
    if unknown:
        print(f"tests name alerts that do not exist: {sorted(unknown)}", file=sys.stderr)
        return 1

    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    with tempfile.TemporaryDirectory(prefix="enigma-promtool-") as tmp:
        with open(os.path.join(tmp, "alerts.yml"), "w") as f:
            yaml.safe_dump(rules, f)
        shutil.copy(TESTS, os.path.join(tmp, "alerts.test.yml"))
        subprocess.run([promtool, "test", "rules", os.path.join(tmp, "alerts.test.yml")], check=True)
    print(f"prometheus rules: {len(alerts)} alerts, each fires on its condition and stays silent otherwise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
