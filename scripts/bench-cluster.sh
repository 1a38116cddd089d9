#!/usr/bin/env bash
# Benchmarks on the real single-node cluster (tests/bench_cluster.rs): cold worker start and warm-pool
# bind p50/p99, gateway API requests per session, the operator reconciling 500 tools and 200 policies,
# and 200 concurrent sessions for five minutes (load_benchmark). `scripts/bench-cluster.sh NAME` runs one.
# Brings the cluster up unless KUBECONFIG already points at the one scripts/cluster.sh started, builds and
# loads the shipped images, prints the figures, and takes the cluster down if it brought it up.
# docs/benchmarks.md records the latest figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-tools.sh >/dev/null
export PATH="$PWD/.tools/bin:$PATH"

if [ -z "${KUBECONFIG:-}" ]; then
  trap 'scripts/cluster.sh down' EXIT
  scripts/cluster.sh up
  eval "$(scripts/cluster.sh env)"
fi
deploy/build-images.sh target/images
scripts/cluster.sh load target/images/toolwarden.oci.tar target/images/worker.oci.tar
export TOOLWARDEN_E2E_TOOL_IMAGE="toolwarden.local/lab-tools:1"
export TOOLWARDEN_E2E_AUDIT_LOG="${TW_CLUSTER_DIR:-/var/tmp/toolwarden-cluster}/logs/audit.log"
# One benchmark at a time; a name (cluster_benchmarks, load_benchmark) runs only that one.
cargo test --locked --test bench_cluster -- --ignored --nocapture --test-threads=1 "$@" 2>&1 | grep --line-buffered -E 'bench:|panicked|test result'
