#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs the tools it needs (helm, kubectl, promtool,
# kubernetes-validate, the Python MCP SDK) under .tools/, then runs every tier that needs no cluster.
# tests/e2e runs too when KUBECONFIG is set.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

echo "== cargo test (unit, integration, drift checks)"
cargo test --workspace --all-targets --locked

echo "== toolwarden policy test on examples/"
cargo run --quiet --locked -- policy test --manifests examples examples/cases/policy-cases.yaml

if [ -x scripts/check-chart.sh ]; then
  echo "== chart checks"
  bash scripts/check-chart.sh
fi
