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

# The Go programs the tests run against build in the background while cargo builds and tests (cargo's
# link steps leave a core idle): Kubernetes for the e2e tier (10-15 minutes cold), a real Prometheus for
# the alert and dashboard tests and a real Jaeger for tests/tracing_jaeger.rs (a few minutes each).
# Each is waited for where it is first needed.
mkdir -p target
declare -A builds=()
build_in_background() { # NAME: scripts/NAME.sh build, logged to target/NAME-build.log
  nice -n 10 "scripts/$1.sh" build >"target/$1-build.log" 2>&1 &
  builds[$1]=$!
}
wait_for_build() { # NAME
  if ! wait "${builds[$1]}"; then
    echo "test: building $1 failed (target/$1-build.log):" >&2
    tail -n 40 "target/$1-build.log" >&2
    exit 1
  fi
}
[ -n "${TOOLWARDEN_SKIP_CLUSTER:-}" ] || build_in_background cluster
build_in_background prometheus
build_in_background jaeger

echo "== cargo test (unit, integration, drift checks, alerts on a real Prometheus, traces into a real Jaeger)"
cargo test --workspace --all-targets --locked --no-run
wait_for_build prometheus
eval "$(scripts/prometheus.sh env)"   # TOOLWARDEN_PROMETHEUS, for tests/prometheus_alerts.rs and the e2e tier
wait_for_build jaeger
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
  wait_for_build cluster
  bash scripts/e2e.sh
fi
