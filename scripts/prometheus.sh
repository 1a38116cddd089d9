#!/usr/bin/env bash
# A real Prometheus server for the tests that scrape a running gateway with the chart's alert rules
# loaded (tests/prometheus_alerts.rs). Built from the github.com/prometheus/prometheus Go module that
# tests/prometheus/go.mod pins, through the Go module proxy; no download site is needed.
#
#   scripts/prometheus.sh build           build (or take from the cache) .tools/prometheus/bin/prometheus
#   scripts/prometheus.sh env             build, then print `export TOOLWARDEN_PROMETHEUS=...` (eval it)
#   scripts/prometheus.sh test [ARGS...]  build, then run the Prometheus tests with the variable set
#                                         (ARGS go to the test binary: a filter, --nocapture, ...)
#
# The build leaves out what the tests do not use: the web UI's assets (no `builtinassets` tag: the API
# under /api/v1 is all they need, and building the assets would need npm) and every service discovery
# but static, file and http (`remove_all_sd`). It is cached, keyed by tests/prometheus/go.mod, go.sum
# and the Go version: a second `build` takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_VERSION="3.16.0"          # must match tests/prometheus/go.mod (module version v0.316.0)
BIN="$PWD/.tools/prometheus/bin"
PROMETHEUS="$BIN/prometheus"

log() { echo "prometheus: $*" >&2; }
die() { echo "prometheus: ERROR: $*" >&2; exit 1; }

build() {
  command -v go >/dev/null || die "Go is needed to build Prometheus $PROMETHEUS_VERSION (tests/prometheus)"
  local key
  key="$(cat tests/prometheus/go.mod tests/prometheus/go.sum | sha256sum | cut -c1-16) $(go version)"
  if [ -x "$PROMETHEUS" ] && [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$key" ]; then return; fi
  log "building Prometheus $PROMETHEUS_VERSION from the Go module proxy (cold: a few minutes on 2 cores)"
  mkdir -p "$BIN"
  rm -f "$BIN/.stamp"
  local v="github.com/prometheus/common/version"
  (cd tests/prometheus && CGO_ENABLED=0 go build -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Branch=HEAD -X $v.Revision=module" \
    -o "$PROMETHEUS" github.com/prometheus/prometheus/cmd/prometheus) || die "go build of Prometheus failed"
  "$PROMETHEUS" --version 2>&1 | grep -q "version $PROMETHEUS_VERSION" \
    || die "the built prometheus does not report version $PROMETHEUS_VERSION"
  echo "$key" >"$BIN/.stamp"
}

case "${1:-}" in
  build) build; log "ready: $PROMETHEUS" ;;
  env) build; echo "export TOOLWARDEN_PROMETHEUS='$PROMETHEUS'" ;;
  test)
    shift
    build
    TOOLWARDEN_PROMETHEUS="$PROMETHEUS" cargo test --locked --test prometheus_alerts -- "$@"
    ;;
  *) echo "usage: scripts/prometheus.sh build | env | test [TEST ARGS...]" >&2; exit 2 ;;
esac
