"""Checks of the chart's Grafana dashboard (charts/toolwarden/dashboards/toolwarden.json), used by
scripts/check-chart.sh. The queries themselves run against a real Prometheus in
tests/prometheus_alerts.rs; this checks the structure Grafana needs.

  dashboard.py check RENDERED GATEWAY_JOB OPERATOR_JOB
      the ConfigMap labelled grafana_dashboard: "1" in RENDERED (helm template output) holds a valid
      dashboard whose job constants are GATEWAY_JOB and OPERATOR_JOB
  dashboard.py self-test DASHBOARD CASES
      every case in CASES (a YAML list of {name, expect, text | edits}) is a broken copy of DASHBOARD
      that `problems` refuses with a message containing `expect`; DASHBOARD itself has no problem

What "valid" means: the text parses as JSON; there is a `datasource` variable of type datasource for
Prometheus; every panel but a row has at least one target; every target has a PromQL `expr`; every
panel and target takes its data source from `${datasource}`; every `$variable` an expression names is
defined (or one of Grafana's own such as `$__rate_interval`), and every defined variable is used;
panel ids and each panel's refIds are unique; every panel has a title and a grid position.
"""

import copy
import json
import re
import sys

import yaml

DATASOURCE = "${datasource}"
BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__all"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def variables_in(text):
    return {a or b for a, b in VARIABLE.findall(text)}


def datasource_uid(ds):
    if isinstance(ds, dict):
        return ds.get("uid")
    return ds


def all_panels(dashboard):
    for panel in dashboard.get("panels") or []:
        yield panel
        for inner in panel.get("panels") or []:
            yield inner


def problems(text):
    """Every problem of the dashboard in `text`, each a sentence naming where it is."""
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"the dashboard is not JSON: {e}"]
    if not isinstance(dashboard, dict):
        return ["the dashboard is not a JSON object"]
    found = []
    for key in ("title", "uid"):
        if not dashboard.get(key):
            found.append(f"the dashboard has no {key}")
    defined = {}
    for var in (dashboard.get("templating") or {}).get("list") or []:
        name = var.get("name")
        if not name:
            found.append(f"a templating variable has no name: {json.dumps(var)[:80]}")
            continue
        if name in defined:
            found.append(f"variable {name} is defined twice")
        defined[name] = var
    ds = defined.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        found.append("there is no `datasource` variable of type datasource with query prometheus")

    used = set()
    for name, var in defined.items():
        if var.get("type") == "query":
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else (query or "")
            if not query:
                found.append(f"variable {name} has no query")
            used |= variables_in(query)
            if datasource_uid(var.get("datasource")) != DATASOURCE:
                found.append(f"variable {name} does not take its data source from {DATASOURCE}")

    ids = set()
    for panel in all_panels(dashboard):
        title = panel.get("title")
        where = f"panel {panel.get('id')} ({title or 'untitled'})"
        if not title:
            found.append(f"{where} has no title")
        if panel.get("id") in ids:
            found.append(f"{where}: id {panel.get('id')} is used twice")
        ids.add(panel.get("id"))
        if not isinstance(panel.get("gridPos"), dict):
            found.append(f"{where} has no gridPos")
        if panel.get("type") == "row":
            continue
        if datasource_uid(panel.get("datasource")) != DATASOURCE:
            found.append(f"{where} does not take its data source from {DATASOURCE}")
        targets = panel.get("targets") or []
        if not targets:
            found.append(f"{where} has no query")
        refs = set()
        for target in targets:
            ref = target.get("refId")
            if ref in refs:
                found.append(f"{where}: refId {ref} is used twice")
            refs.add(ref)
            expr = (target.get("expr") or "").strip()
            if not expr:
                found.append(f"{where}: target {ref} has no expr")
            if datasource_uid(target.get("datasource")) != DATASOURCE:
                found.append(f"{where}: target {ref} does not take its data source from {DATASOURCE}")
            names = variables_in(expr)
            used |= names
            for name in sorted(names - set(defined) - BUILTINS):
                found.append(f"{where}: target {ref} uses ${name}, which is not defined")
    for name, var in defined.items():
        if name not in used and name != "datasource":
            found.append(f"variable {name} is defined but no query uses it")
    return found


def rendered_dashboard(path):
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    maps = [d for d in docs if d.get("kind") == "ConfigMap" and (d["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    if len(maps) != 1:
        return None, [f"want exactly one ConfigMap labelled grafana_dashboard: \"1\" in {path}, found {len(maps)}"]
    data = maps[0].get("data") or {}
    if list(data) != ["toolwarden.json"]:
        return None, [f"ConfigMap {maps[0]['metadata']['name']} holds {sorted(data)}, want toolwarden.json"]
    return data["toolwarden.json"], []


def cmd_check(rendered, gateway_job, operator_job):
    text, found = rendered_dashboard(rendered)
    if text is not None:
        found = problems(text)
        if not found:
            constants = {v["name"]: v.get("query") for v in json.loads(text)["templating"]["list"]}
            for name, want in (("gateway_job", gateway_job), ("operator_job", operator_job)):
                if constants.get(name) != want:
                    found.append(f"variable {name} is {constants.get(name)!r}, want the release's job {want!r}")
    for p in found:
        print(f"  FAIL {p}")
    if not found:
        dashboard = json.loads(text)
        queries = sum(len(p.get("targets") or []) for p in all_panels(dashboard))
        print(f"  {len(list(all_panels(dashboard)))} panels, {queries} queries")
    return not found


def apply_edit(dashboard, edit):
    """`path` is dot-separated keys and list indexes; `set` replaces the value there, `delete` removes it."""
    *parents, last = [int(p) if p.isdigit() else p for p in str(edit["path"]).split(".")]
    node = dashboard
    for key in parents:
        node = node[key]
    if "set" in edit:
        node[last] = edit["set"]
    else:
        del node[last]


def cmd_self_test(dashboard_path, cases_path):
    with open(dashboard_path) as fh:
        good = fh.read()
    failed = [f"{dashboard_path}: {p}" for p in problems(good)]
    with open(cases_path) as fh:
        cases = yaml.safe_load(fh)
    for case in cases:
        if "text" in case:
            text = case["text"]
        else:
            dashboard = copy.deepcopy(json.loads(good))
            for edit in case["edits"]:
                apply_edit(dashboard, edit)
            text = json.dumps(dashboard)
        found = problems(text)
        if not any(case["expect"] in p for p in found):
            failed.append(f"case {case['name']!r}: want a problem containing {case['expect']!r}, got {found}")
    for p in failed:
        print(f"  FAIL {p}")
    if not failed:
        print(f"  {len(cases)} broken dashboards refused")
    return not failed


def main(argv):
    if len(argv) == 4 and argv[0] == "check":
        return cmd_check(*argv[1:])
    if len(argv) == 3 and argv[0] == "self-test":
        return cmd_self_test(*argv[1:])
    print(__doc__, file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]) else 1)
