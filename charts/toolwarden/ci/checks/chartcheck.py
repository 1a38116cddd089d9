"""Checks of rendered chart output, used by scripts/check-chart.sh. Each subcommand exits non-zero and
prints every problem it found.

  validate RENDERED K8S_VERSION   Kubernetes schemas (strict), Pod Security restricted, Service and
                                  ServiceMonitor wiring
  rbac RENDERED COMPONENT FILE    the chart's Role/ClusterRole rules of COMPONENT equal those in FILE
  extract-rules RENDERED OUT [RUNBOOK_MD]
                                  writes the PrometheusRule's spec (the rule groups) to OUT; checks
                                  every alert's labels, annotations and runbook section
  coverage RULES TESTS            every alert in RULES fires in one promtool case and stays silent in one
  kinds RENDERED                  prints the kinds rendered, one a line
"""

import json
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pss  # noqa: E402

# Kinds served by CRDs that kubernetes-validate has no schema for: checked by other means
# (PrometheusRule by promtool, ServiceMonitor by its wiring below).
CRD_BACKED = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def load(path):
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def selects(match_labels, labels):
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def check_wiring(docs, problems):
    services = [d for d in docs if d.get("kind") == "Service"]
    workloads = [(d, t) for d in docs for _, t in pss.pod_templates(d)]
    for svc in services:
        selector = svc["spec"].get("selector") or {}
        backing = [(d, t) for d, t in workloads if selects(selector, (t.get("metadata") or {}).get("labels") or {})]
        if not backing:
            problems.append(f"{name_of(svc)}: selector {selector} matches no rendered pod template")
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort")
            for d, t in backing:
                names = {p.get("name") for c in t["spec"].get("containers", []) for p in c.get("ports") or []}
                if isinstance(target, str) and target not in names:
                    problems.append(f"{name_of(svc)}: targetPort {target} is not a container port of {name_of(d)}")
    for sm in (d for d in docs if d.get("kind") == "ServiceMonitor"):
        spec = sm["spec"]
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        targets = [s for s in services if selects(match, s["metadata"].get("labels") or {})]
        if len(targets) != 1:
            problems.append(f"{name_of(sm)}: selects {len(targets)} Services, want exactly 1")
            continue
        svc = targets[0]
        if spec.get("jobLabel") and spec["jobLabel"] not in svc["metadata"].get("labels", {}):
            problems.append(f"{name_of(sm)}: jobLabel {spec['jobLabel']} is not a label of {name_of(svc)}")
        ports = {p.get("name") for p in svc["spec"].get("ports") or []}
        for ep in spec.get("endpoints") or []:
            if ep.get("port") not in ports:
                problems.append(f"{name_of(sm)}: endpoint port {ep.get('port')} is not a port of {name_of(svc)}")


def cmd_validate(path, version):
    import kubernetes_validate  # the venv's; imported here so other subcommands work without it

    docs = load(path)
    problems = []
    validated = skipped = pods = 0
    for obj in docs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in CRD_BACKED:
            skipped += 1
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                validated += 1
            except kubernetes_validate.ValidationError as e:
                path_ = "/".join(str(p) for p in e.path)
                problems.append(f"{name_of(obj)}: schema: {e.message} (at {path_ or '/'})")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{name_of(obj)}: no Kubernetes {version} schema for {key[0]} {key[1]}")
        for where, template in pss.pod_templates(obj):
            pods += 1
            for v in pss.violations(template):
                problems.append(f"{where}: pod security: {v}")
    check_wiring(docs, problems)
    for p in problems:
        print(f"  FAIL {p}")
    print(f"  {os.path.basename(path)}: {validated} objects valid against Kubernetes {version} (strict), "
          f"{skipped} CRD-backed skipped, {pods} pod templates checked against PSS restricted, "
          f"{len(problems)} problems")
    return not problems


def canonical_rules(rules):
    out = []
    for rule in rules or []:
        out.append(json.dumps({k: sorted(v) if isinstance(v, list) else v for k, v in sorted(rule.items())},
                              sort_keys=True))
    return sorted(out)


def cmd_rbac(rendered, component, source):
    want = sorted((d["kind"], canonical_rules(d.get("rules"))) for d in load(source)
                  if d.get("kind") in ("ClusterRole", "Role"))
    got_docs = [d for d in load(rendered) if d.get("kind") in ("ClusterRole", "Role")
                and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component]
    got = sorted((d["kind"], canonical_rules(d.get("rules"))) for d in got_docs)
    if not want:
        print(f"  FAIL {source} holds no ClusterRole or Role")
        return False
    if got != want:
        print(f"  FAIL the chart's {component} RBAC rules differ from {source}")
        print("    chart:  " + json.dumps(got, indent=None))
        print("    source: " + json.dumps(want, indent=None))
        return False
    bindings = {(d["kind"], d["roleRef"]["name"]) for d in load(rendered) if d.get("kind", "").endswith("Binding")}
    for d in got_docs:
        if (d["kind"] + "Binding", d["metadata"]["name"]) not in bindings:
            print(f"  FAIL {name_of(d)} is bound by no {d['kind']}Binding")
            return False
    print(f"  {component}: {len(got)} roles, rules identical to {source}")
    return True


def check_runbooks(rules, runbook_md):
    """Every alert links to `#<alert in lower case>` and docs/alerts.md has that `## <Alert>` section."""
    with open(runbook_md) as fh:
        headings = {line[3:].strip() for line in fh if line.startswith("## ")}
    ok = True
    for r in rules:
        name = r.get("alert")
        url = r.get("annotations", {}).get("runbook_url", "")
        if not url.endswith("#" + name.lower()):
            print(f"  FAIL alert {name}: runbook_url {url} does not end with #{name.lower()}")
            ok = False
        if name not in headings:
            print(f"  FAIL alert {name}: {runbook_md} has no '## {name}' section")
            ok = False
    return ok


def cmd_extract_rules(rendered, out, runbook_md=None):
    rules = [d for d in load(rendered) if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        print(f"  FAIL want exactly one PrometheusRule in {rendered}, found {len(rules)}")
        return False
    with open(out, "w") as fh:
        yaml.safe_dump(rules[0]["spec"], fh, sort_keys=False)
    alerts = [r["alert"] for g in rules[0]["spec"]["groups"] for r in g["rules"] if "alert" in r]
    for r in (r for g in rules[0]["spec"]["groups"] for r in g["rules"]):
        missing = [k for k in ("summary", "description", "runbook_url") if k not in r.get("annotations", {})]
        if missing or "severity" not in r.get("labels", {}):
            print(f"  FAIL alert {r.get('alert')} lacks {missing or ['severity']}")
            return False
    if runbook_md and not check_runbooks([r for g in rules[0]["spec"]["groups"] for r in g["rules"]], runbook_md):
        return False
    print(f"  {len(alerts)} alerts: {' '.join(alerts)}")
    return True


def cmd_coverage(rules_file, test_file):
    """Every alert of RULES has a promtool case where it fires and one where it stays silent."""
    with open(rules_file) as fh:
        alerts = [r["alert"] for g in yaml.safe_load(fh)["groups"] for r in g["rules"] if "alert" in r]
    with open(test_file) as fh:
        tests = yaml.safe_load(fh)["tests"]
    fires, silent = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test") or []:
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    problems = [f"{a}: no case where it fires" for a in alerts if a not in fires]
    problems += [f"{a}: no case where it stays silent" for a in alerts if a not in silent]
    problems += [f"{a}: tested but not in the rules" for a in sorted((fires | silent) - set(alerts))]
    for p in problems:
        print(f"  FAIL {p}")
    return not problems


def main(argv):
    if len(argv) == 3 and argv[0] == "validate":
        return cmd_validate(argv[1], argv[2])
    if len(argv) == 4 and argv[0] == "rbac":
        return cmd_rbac(argv[1], argv[2], argv[3])
    if len(argv) in (3, 4) and argv[0] == "extract-rules":
        return cmd_extract_rules(*argv[1:])
    if len(argv) == 3 and argv[0] == "coverage":
        return cmd_coverage(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "kinds":
        for d in load(argv[1]):
            print(d.get("kind"))
        return True
    print(__doc__, file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]) else 1)
