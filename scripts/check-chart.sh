#!/usr/bin/env bash
# Chart checks (run by scripts/test.sh, so by CI). Fails on any problem; prints every check's result and
# a closing "chart-checks: N passed, N failed" line. Uses the tools scripts/install-tools.sh puts under
# .tools/ (it is run first when they are missing). Takes a few seconds.
#
#   crds          charts/toolwarden/crds/ equals crds/
#   rbac          the chart's RBAC files equal deploy/rbac/, and the rendered rules equal them
#   pss-checker   the Pod Security checker reports exactly the broken rule of every fixture pod
#   lint          helm lint --strict: default values and ci/all-on-values.yaml
#   validate      helm template output (both values files) against Kubernetes schemas (strict),
#                 Pod Security "restricted" on every pod template, Service/ServiceMonitor wiring
#   monitoring    ServiceMonitor/PrometheusRule rendered on "auto" only when the API is served,
#                 and never when switched off
#   rules         every alert has severity, summary, description and a runbook section in
#                 docs/alerts.md; promtool check rules (default and all-on thresholds), test rules
#   dashboard     the Grafana dashboard ConfigMap is off by default; rendered, it is valid (ci/checks/
#                 dashboard.py: JSON, a query in every panel, the datasource variable used everywhere,
#                 the release's job names) and every broken copy in ci/bad-dashboards.yaml is refused
#   bad-values    every ci/bad-values/*.yaml fails helm lint and helm template, naming the bad key
set -uo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
HELM="$TOOLS/bin/helm"
PROMTOOL="$TOOLS/bin/promtool"
PY="$TOOLS/venv/bin/python"
if [ ! -x "$HELM" ] || [ ! -x "$PROMTOOL" ] || [ ! -x "$PY" ]; then
  bash scripts/install-tools.sh || { echo "check-chart: installing the tools failed" >&2; exit 1; }
fi

CHART=charts/toolwarden
CHECKS="$CHART/ci/checks"
K8S_VERSION=1.33.0
RELEASE=toolwarden
NAMESPACE=toolwarden
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
# run NAME CMD...: the command's output is shown only when it fails.
run() {
  local name="$1"; shift
  if "$@" >"$TMP/out" 2>&1; then ok "$name"; else bad "$name"; sed 's/^/     /' "$TMP/out"; fi
}
render() { "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@"; }

# --- crds -------------------------------------------------------------------------------------------
run "crds: charts/toolwarden/crds/ equals crds/" diff -r crds "$CHART/crds"

# --- rbac -------------------------------------------------------------------------------------------
for component in gateway operator; do
  source="deploy/rbac/$component.yaml"
  copy="$CHART/files/rbac/$component.yaml"
  if [ -f "$source" ]; then
    run "rbac: $copy equals $source (cp $source $copy to update)" cmp "$source" "$copy"
  else
    # The operator's file may not exist yet; the chart's copy is then the source of its rules.
    echo "note $source does not exist: checking the chart against $copy"
    source="$copy"
  fi
  render --set prometheusRule.enabled=false >"$TMP/rbac.yaml" 2>"$TMP/out" || { bad "rbac: render"; cat "$TMP/out"; }
  run "rbac: rendered $component Role/ClusterRole rules equal $source" \
    "$PY" "$CHECKS/chartcheck.py" rbac "$TMP/rbac.yaml" "$component" "$source"
done

# --- the Pod Security checker itself ------------------------------------------------------------------
run "pss-checker: flags exactly the broken rule of each fixture pod" \
  "$PY" "$CHECKS/pss.py" --self-test "$CHECKS/pss-fixtures.yaml"

# --- lint ---------------------------------------------------------------------------------------------
run "lint: default values" "$HELM" lint --strict "$CHART" --namespace "$NAMESPACE"
run "lint: ci/all-on-values.yaml" "$HELM" lint --strict "$CHART" --namespace "$NAMESPACE" -f "$CHART/ci/all-on-values.yaml"

# --- validate -----------------------------------------------------------------------------------------
for values in default all-on; do
  args=(--include-crds --kube-version "$K8S_VERSION")
  [ "$values" = all-on ] && args+=(-f "$CHART/ci/all-on-values.yaml")
  if render "${args[@]}" >"$TMP/$values.yaml" 2>"$TMP/out"; then
    run "validate: $values values: Kubernetes $K8S_VERSION schemas, Pod Security restricted, wiring" \
      "$PY" "$CHECKS/chartcheck.py" validate "$TMP/$values.yaml" "$K8S_VERSION"
    cat "$TMP/out" 2>/dev/null | grep -v '^$' | sed 's/^/     /' || true
  else
    bad "validate: helm template with $values values"; sed 's/^/     /' "$TMP/out"
  fi
done

# --- monitoring on/off --------------------------------------------------------------------------------
expect_kinds() { # NAME WANT(yes|no) ARGS...
  local name="$1" want="$2"; shift 2
  if ! render "$@" >"$TMP/kinds.yaml" 2>"$TMP/out"; then
    bad "monitoring: $name (helm template failed)"; sed 's/^/     /' "$TMP/out"; return
  fi
  local got; got="$("$PY" "$CHECKS/chartcheck.py" kinds "$TMP/kinds.yaml" | sort | tr '\n' ' ')"
  local has=no
  case "$got" in *ServiceMonitor*PrometheusRule*|*PrometheusRule*ServiceMonitor*) has=yes ;; *ServiceMonitor*|*PrometheusRule*) has=partly ;; esac
  if [ "$has" = "$want" ]; then ok "monitoring: $name"; else bad "monitoring: $name (want $want, rendered: $got)"; fi
}
expect_kinds "auto without the Prometheus Operator API renders neither" no
expect_kinds "auto with monitoring.coreos.com/v1 renders both" yes --api-versions monitoring.coreos.com/v1
expect_kinds "enabled=false wins over a served API" no --api-versions monitoring.coreos.com/v1 \
  --set serviceMonitor.enabled=false --set prometheusRule.enabled=false
expect_kinds "enabled=true renders both without the API" yes --set serviceMonitor.enabled=true --set prometheusRule.enabled=true

# --- dashboard ----------------------------------------------------------------------------------------
if render >"$TMP/dash-off.yaml" 2>"$TMP/out"; then
  if grep -q 'grafana_dashboard' "$TMP/dash-off.yaml"; then bad "dashboard: off by default (a ConfigMap was rendered)"; else ok "dashboard: off by default"; fi
else
  bad "dashboard: render with default values"; sed 's/^/     /' "$TMP/out"
fi
run "dashboard: default jobs: valid JSON, a query in every panel, \${datasource} everywhere" \
  bash -c "'$HELM' template $RELEASE $CHART --namespace $NAMESPACE --set grafanaDashboard.enabled=true >'$TMP/dash.yaml' \
    && '$PY' $CHECKS/dashboard.py check '$TMP/dash.yaml' toolwarden-gateway toolwarden-operator"
run "dashboard: all-on values: valid, with the release's job names" \
  "$PY" "$CHECKS/dashboard.py" check "$TMP/all-on.yaml" tw-gateway tw-operator
run "dashboard: every broken copy in ci/bad-dashboards.yaml is refused, naming the problem" \
  "$PY" "$CHECKS/dashboard.py" self-test "$CHART/dashboards/toolwarden.json" "$CHART/ci/bad-dashboards.yaml"

# --- rules --------------------------------------------------------------------------------------------
mkdir -p "$TMP/rules"
if render --set prometheusRule.enabled=true >"$TMP/rules/rendered.yaml" 2>"$TMP/out" \
  && "$PY" "$CHECKS/chartcheck.py" extract-rules "$TMP/rules/rendered.yaml" "$TMP/rules/rules.yaml" >"$TMP/out" 2>&1; then
  sed 's/^/     /' "$TMP/out"
  run "rules: every alert has severity, summary, description and a runbook section in docs/alerts.md" \
    "$PY" "$CHECKS/chartcheck.py" extract-rules "$TMP/rules/rendered.yaml" "$TMP/rules/checked.yaml" docs/alerts.md
  run "rules: promtool check rules (default thresholds)" "$PROMTOOL" check rules "$TMP/rules/rules.yaml"
  cp "$CHART/ci/prometheus-rules-test.yaml" "$TMP/rules/"
  run "rules: the promtool tests have a firing and a silent case for every alert" \
    "$PY" "$CHECKS/chartcheck.py" coverage "$TMP/rules/rules.yaml" "$TMP/rules/prometheus-rules-test.yaml"
  run "rules: promtool test rules (every alert fires and stays silent as it should)" \
    "$PROMTOOL" test rules "$TMP/rules/prometheus-rules-test.yaml"
else
  bad "rules: render and extract the PrometheusRule"; sed 's/^/     /' "$TMP/out"
fi
if "$PY" "$CHECKS/chartcheck.py" extract-rules "$TMP/all-on.yaml" "$TMP/rules/all-on-rules.yaml" >"$TMP/out" 2>&1; then
  run "rules: promtool check rules (all-on thresholds)" "$PROMTOOL" check rules "$TMP/rules/all-on-rules.yaml"
else
  bad "rules: extract the all-on PrometheusRule"; sed 's/^/     /' "$TMP/out"
fi

# --- bad values ---------------------------------------------------------------------------------------
count=0
for file in "$CHART"/ci/bad-values/*.yaml; do
  count=$((count + 1))
  expect="$(sed -n '1s/^# expect: //p' "$file")"
  name="bad-values: $(basename "$file") is refused naming '$expect'"
  if [ -z "$expect" ]; then bad "$name (first line must be '# expect: <text the error must contain>')"; continue; fi
  problems=""
  for cmd in lint template; do
    if [ "$cmd" = lint ]; then
      "$HELM" lint --strict "$CHART" --namespace "$NAMESPACE" -f "$file" >"$TMP/out" 2>&1 && problems+=" helm lint accepted it;"
    else
      render -f "$file" >"$TMP/out" 2>&1 && problems+=" helm template accepted it;"
    fi
    grep -qF -- "$expect" "$TMP/out" || problems+=" helm $cmd's error does not mention '$expect': $(grep -m2 -E 'ERROR|Error' "$TMP/out" | tr '\n' ' ');"
  done
  if [ -z "$problems" ]; then ok "$name"; else bad "$name:$problems"; fi
done
[ "$count" -gt 0 ] || bad "bad-values: no files in $CHART/ci/bad-values"

echo "chart-checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
