#!/usr/bin/env bash
# Builds the images Toolwarden ships, FROM scratch, with no container engine and no registry:
#
#   toolwarden   /usr/local/bin/toolwarden (runs `operator` and `gateway`), CA certificates, uid 65532
#   worker       /toolwarden-worker (copied into tool images by the worker pod's init container)
#
# Both binaries are statically linked (glibc, `-C target-feature=+crt-static`), so they run in an image
# with nothing else in it, and the worker runs inside any tool image whatever its libc. The e2e tier
# imports exactly these archives into its cluster's containerd (scripts/cluster.sh load).
#
#   deploy/build-images.sh [OUT_DIR]     (default target/images)
#
# Environment: TOOLWARDEN_IMAGE_TAG (default: the workspace version), TOOLWARDEN_IMAGE_REGISTRY (default
# ghcr.io/toolwarden, the chart's default repositories). Push with, for example,
# `skopeo copy oci-archive:target/images/toolwarden.oci.tar docker://REGISTRY/toolwarden:TAG`.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-target/images}"
registry="${TOOLWARDEN_IMAGE_REGISTRY:-ghcr.io/toolwarden}"
version="$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version/{print $2; exit}' Cargo.toml)"
tag="${TOOLWARDEN_IMAGE_TAG:-$version}"
target="x86_64-unknown-linux-gnu"
ca_bundle="${TOOLWARDEN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

die() { echo "build-images: ERROR: $*" >&2; exit 1; }
[ -f "$ca_bundle" ] || die "no CA bundle at $ca_bundle (Debian: ca-certificates); set TOOLWARDEN_CA_BUNDLE"

echo "build-images: cargo build --release (static, $target)"
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p toolwarden -p toolwarden-worker --bin toolwarden --bin toolwarden-worker
bin="${CARGO_TARGET_DIR:-target}/$target/release"
for b in toolwarden toolwarden-worker; do
  [ -x "$bin/$b" ] || die "cargo built no $bin/$b"
  # A static-pie binary has a dynamic section but needs no shared library and no interpreter.
  if readelf -lW "$bin/$b" | grep -q 'INTERP' || readelf -dW "$bin/$b" | grep -q '(NEEDED)'; then
    die "$bin/$b is dynamically linked"
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/toolwarden/usr/local/bin" "$work/toolwarden/etc/ssl/certs" "$work/toolwarden/tmp" "$work/worker"
# The release profile keeps line tables for backtraces on a developer's machine; the images drop them
# (function names stay), which makes the worker that every pod's init container copies 5x smaller.
install -m 0755 "$bin/toolwarden" "$work/toolwarden/usr/local/bin/toolwarden"
strip --strip-debug "$work/toolwarden/usr/local/bin/toolwarden"
install -m 0644 "$ca_bundle" "$work/toolwarden/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$work/toolwarden/tmp"
install -m 0755 "$bin/toolwarden-worker" "$work/worker/toolwarden-worker"
strip --strip-debug "$work/worker/toolwarden-worker"

deploy/oci-image.sh "$out/toolwarden.oci.tar" "$registry/toolwarden:$tag" "$work/toolwarden" \
  --entrypoint '["/usr/local/bin/toolwarden"]' --user 65532:65532 \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
deploy/oci-image.sh "$out/worker.oci.tar" "$registry/worker:$tag" "$work/worker" \
  --entrypoint '["/toolwarden-worker"]' --user 65532:65532
