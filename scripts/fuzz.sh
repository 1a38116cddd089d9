#!/usr/bin/env bash
# Fuzzes the parsers in core with cargo-fuzz (libFuzzer + AddressSanitizer): manifests and the compiler,
# path and URL argument rules, CEL expressions, confirm tokens. Each target runs for a bounded time,
# starting from the seed corpus kept in fuzz/seeds/<target>; what it learns goes to fuzz/corpus/<target>
# and any crash to fuzz/artifacts/<target>/ (both git-ignored). Exits non-zero when a target crashes:
# fix it, copy the artifact into fuzz/seeds/<target>/ (core/tests/fuzz_corpus.rs replays every seed on
# the stable toolchain, so it stays fixed) and add a named test where the fix lives. The properties each
# target checks are in core/tests/support/fuzz_checks.rs.
#
#   scripts/fuzz.sh                    every target, FUZZ_SECONDS (default 45) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh url_rules
#
# cargo-fuzz is installed under .tools/cargo-fuzz (idempotent). It passes nightly-only flags
# (-Zsanitizer=address) to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION="0.13.2"
FUZZ_SECONDS="${FUZZ_SECONDS:-45}"
ALL_TARGETS=(manifest_compile path_rules url_rules cel_expression confirm_token)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

die() { echo "fuzz: ERROR: $*" >&2; exit 1; }
[[ "$FUZZ_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive number of seconds, not '$FUZZ_SECONDS'"
for t in "${TARGETS[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t' (targets: ${ALL_TARGETS[*]})"
done

CARGO_FUZZ="$PWD/.tools/cargo-fuzz/bin/cargo-fuzz"
if ! "$CARGO_FUZZ" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$PWD/.tools/cargo-fuzz" \
    || die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
fi
command -v c++ >/dev/null || die "libFuzzer is compiled from C++: install a C++ compiler (g++ or clang++)"

export RUSTC_BOOTSTRAP=1
# --debug-assertions: overflow checks and debug_assert! stay on while fuzzing.
FUZZ_FLAGS=(--fuzz-dir fuzz --debug-assertions)

echo "fuzz: building ${#TARGETS[@]} target(s)"
"$CARGO_FUZZ" build "${FUZZ_FLAGS[@]}" || die "the fuzz targets do not build"

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  echo "fuzz: $t for ${FUZZ_SECONDS}s"
  log="fuzz/artifacts/$t/last-run.log"
  if "$CARGO_FUZZ" run "${FUZZ_FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | sed "s/^/fuzz: $t: /" || true
  else
    echo "fuzz: $t FAILED; the last lines of $log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/<target>/)" >&2
  exit 1
fi
echo "fuzz: ${#TARGETS[@]} target(s) ran ${FUZZ_SECONDS}s each without a crash"
