#!/usr/bin/env bash
# Installs the test tools from package registries into .tools/ (idempotent). Filled in by the chart work.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools/bin
