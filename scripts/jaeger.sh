#!/usr/bin/env bash
# A real Jaeger (all-in-one: OTLP receiver, in-memory store, query API) for the tracing tests, built from
# the Go module proxy. No container image and no download site: only `go` and the module proxy.
#
#   scripts/jaeger.sh build              build (or take from the cache) .tools/jaeger/bin/jaeger
#   scripts/jaeger.sh env                build if needed, then print `export TOOLWARDEN_JAEGER=...` (eval it)
#   scripts/jaeger.sh run [OTLP QUERY]   run it in the foreground on 127.0.0.1: OTLP/HTTP on port OTLP
#                                        (default 4318), the query API on port QUERY (default 16686)
#
# tests/jaeger/go.mod pins the version (`go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@vX`).
# The build is cached under .tools/jaeger, keyed by tests/jaeger/go.mod, go.sum and `go version`: a cold
# build takes several minutes on 2 cores, a cached one is instant. The tests (tests/tracing_jaeger.rs)
# start their own Jaeger from TOOLWARDEN_JAEGER with tests/jaeger/config.yaml, on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

JAEGER_VERSION="v1.75.0"             # must match tests/jaeger/go.mod
CACHE="$REPO/.tools/jaeger"
BIN="$CACHE/bin"
CONFIG="$REPO/tests/jaeger/config.yaml"

log() { echo "jaeger: $*" >&2; }
die() { echo "jaeger: ERROR: $*" >&2; exit 1; }

key_of() { cat "$@" | sha256sum | cut -c1-16; }

build() {
  command -v go >/dev/null || die "Go is needed to build Jaeger $JAEGER_VERSION (tests/jaeger)"
  grep -q "github.com/jaegertracing/jaeger $JAEGER_VERSION" tests/jaeger/go.mod \
    || die "tests/jaeger/go.mod does not pin github.com/jaegertracing/jaeger $JAEGER_VERSION"
  local key
  key="$(key_of tests/jaeger/go.mod tests/jaeger/go.sum; go version)"
  if [ -x "$BIN/jaeger" ] && [ -f "$BIN/.stamp" ] && [ "$(cat "$BIN/.stamp")" = "$key" ]; then return; fi
  log "building Jaeger $JAEGER_VERSION from the Go module proxy (cold: several minutes on 2 cores)"
  mkdir -p "$BIN"
  rm -f "$BIN/.stamp"
  (cd tests/jaeger && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/jaeger" \
    github.com/jaegertracing/jaeger/cmd/jaeger) || die "go build of Jaeger failed"
  "$BIN/jaeger" --help >/dev/null 2>&1 || die "the Jaeger binary does not run"
  echo "$key" >"$BIN/.stamp"
}

case "${1:-}" in
  build)
    build
    log "built: $BIN/jaeger"
    ;;
  env)
    build
    echo "export TOOLWARDEN_JAEGER=$BIN/jaeger"
    ;;
  run)
    build
    export TW_JAEGER_OTLP_HTTP="127.0.0.1:${2:-4318}" TW_JAEGER_QUERY="127.0.0.1:${3:-16686}"
    log "OTLP/HTTP on http://$TW_JAEGER_OTLP_HTTP, query API on http://$TW_JAEGER_QUERY"
    exec "$BIN/jaeger" --config "file:$CONFIG"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
