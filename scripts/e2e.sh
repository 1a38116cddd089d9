#!/usr/bin/env bash
# The e2e tier against a real cluster: brings up the single-node cluster of scripts/cluster.sh, builds
# the images Toolwarden ships (deploy/build-images.sh) and loads them into the node, runs every e2e test
# (`cargo test --test 'e2e_*'` in each crate) with KUBECONFIG set, and takes the cluster down again,
# also when a test fails. If the cluster cannot start, this fails: in CI an e2e test never skips.
#
#   scripts/e2e.sh                     everything above
#   scripts/e2e.sh -- TESTNAME         passes the rest to the test binaries (a filter, --nocapture, ...)
#   TOOLWARDEN_E2E_KEEP_CLUSTER=1      leaves the cluster up afterwards (then `scripts/cluster.sh down`)
#
# Needs root (the node uses namespaces, mounts and cgroups) and Go (see tests/cluster/go.mod).
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${1:-}" = "--" ] && shift
bash scripts/install-tools.sh >/dev/null
export PATH="$PWD/.tools/bin:$PATH"

started=$(date +%s)
if [ -z "${TOOLWARDEN_E2E_KEEP_CLUSTER:-}" ]; then
  trap 'scripts/cluster.sh down' EXIT
fi
scripts/cluster.sh up
echo "e2e: cluster up after $(( $(date +%s) - started ))s"

deploy/build-images.sh target/images
scripts/cluster.sh load target/images/toolwarden.oci.tar target/images/worker.oci.tar
echo "e2e: images built and loaded after $(( $(date +%s) - started ))s"

eval "$(scripts/cluster.sh env)"
version="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version/{print $2; exit}' Cargo.toml)"
export TOOLWARDEN_E2E_REQUIRED=1
export TOOLWARDEN_E2E_IMAGE="ghcr.io/toolwarden/toolwarden:$version"
export TOOLWARDEN_E2E_WORKER_IMAGE="ghcr.io/toolwarden/worker:$version"
export TOOLWARDEN_E2E_TOOL_IMAGE="toolwarden.local/lab-tools:1"
scripts/prometheus.sh build >/dev/null   # cached after the first build
eval "$(scripts/prometheus.sh env)"

# One test binary at a time (cargo's order); tests inside a binary share the cluster, each in its own
# namespaces.
cargo test --locked --workspace --no-fail-fast --test 'e2e_*' -- "$@"
echo "e2e: passed after $(( $(date +%s) - started ))s"
