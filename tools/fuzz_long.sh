#!/usr/bin/env bash
# The long fuzzing run: the property-based tests of tests/test_fuzz.py with many
# examples each (default 20000), with hypothesis's statistics.
#   tools/fuzz_long.sh [EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
FASTCONV_FUZZ_EXAMPLES=${1:-20000} exec "${PYTEST:-.venv/bin/pytest}" tests/test_fuzz.py -q -p no:cacheprovider \
  --hypothesis-show-statistics --hypothesis-seed="${FUZZ_SEED:-0}"
