#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs the tools it needs (helm, kubectl, promtool,
# kubernetes-validate, the Python MCP SDK) under .tools/, runs every tier that needs no cluster, then the
# e2e tier on a real single-node cluster that scripts/e2e.sh brings up and takes down (needs root and
# Go; set TOOLWARDEN_SKIP_CLUSTER=1 to leave it out on a laptop, never in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

echo "== cargo test (unit, integration, drift checks)"
cargo test --workspace --all-targets --locked

echo "== toolwarden policy test on examples/"
cargo run --quiet --locked -- policy test --manifests examples examples/cases/policy-cases.yaml

echo "== chart checks"
bash scripts/check-chart.sh

if [ -n "${TOOLWARDEN_SKIP_CLUSTER:-}" ]; then
  echo "== e2e tier SKIPPED (TOOLWARDEN_SKIP_CLUSTER is set)"
else
  echo "== e2e tier on a real cluster (scripts/e2e.sh)"
  bash scripts/e2e.sh
fi
