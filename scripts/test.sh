#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs the tools it needs (helm, kubectl, promtool,
# kubernetes-validate, the Python MCP SDK) under .tools/, runs every tier that needs no cluster, fuzzes
# the parsers for a bounded time, then runs the e2e tier on a real single-node cluster that
# scripts/e2e.sh brings up and takes down (needs root and Go; TOOLWARDEN_SKIP_CLUSTER=1 leaves it out on
# a laptop, never in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

# Kubernetes for the e2e tier builds (Go, 10-15 minutes cold) while cargo builds and tests: cargo's link
# steps leave a core idle. The e2e step below waits for it.
cluster_build=""
mkdir -p target
if [ -z "${TOOLWARDEN_SKIP_CLUSTER:-}" ]; then
  nice -n 10 scripts/cluster.sh build >target/cluster-build.log 2>&1 &
  cluster_build=$!
fi
# A real Prometheus (Go, a few minutes cold) for the alert and dashboard tests, built the same way.
nice -n 10 scripts/prometheus.sh build >target/prometheus-build.log 2>&1 &
prometheus_build=$!
# A real Jaeger (Go) receiving the gateway's traces (tests/tracing_jaeger.rs), likewise.
nice -n 10 scripts/jaeger.sh build >target/jaeger-build.log 2>&1 &
jaeger_build=$!

echo "== cargo test (unit, integration, drift checks, alerts on a real Prometheus, traces into a real Jaeger)"
cargo test --workspace --all-targets --locked --no-run
if ! wait "$prometheus_build"; then
  echo "test: building Prometheus failed:" >&2
  tail -n 40 target/prometheus-build.log >&2
  exit 1
fi
eval "$(scripts/prometheus.sh env)"   # TOOLWARDEN_PROMETHEUS, for tests/prometheus_alerts.rs and the e2e tier
if ! wait "$jaeger_build"; then
  echo "test: building Jaeger failed:" >&2
  tail -n 40 target/jaeger-build.log >&2
  exit 1
fi
eval "$(scripts/jaeger.sh env)"       # TOOLWARDEN_JAEGER, for tests/tracing_jaeger.rs
cargo test --workspace --all-targets --locked

echo "== toolwarden policy test on examples/"
cargo run --quiet --locked -- policy test --manifests examples examples/cases/policy-cases.yaml

echo "== chart checks"
bash scripts/check-chart.sh

echo "== fuzzing the parsers (scripts/fuzz.sh, ${FUZZ_SECONDS:=20} s per target)"
FUZZ_SECONDS="$FUZZ_SECONDS" bash scripts/fuzz.sh

if [ -n "${TOOLWARDEN_SKIP_CLUSTER:-}" ]; then
  echo "== e2e tier SKIPPED (TOOLWARDEN_SKIP_CLUSTER is set)"
else
  echo "== e2e tier on a real cluster (scripts/e2e.sh)"
  if ! wait "$cluster_build"; then
    echo "test: building the cluster failed:" >&2
    tail -n 40 target/cluster-build.log >&2
    exit 1
  fi
  bash scripts/e2e.sh
fi
