#!/usr/bin/env bash
# The differential test (see the docstring of tests/differential/differential.py):
#   tests/differential/run.sh [--long] [--seed N] [--clients N] [--pool N] [--mode transaction|session|both]
#                             [--messages N] [--features LIST] [--rounds N] [--replay FILE] [--known-issues [KEY...]]
#                             [--list-features] [--help]
#   tests/differential/run.sh --coalesce [--long] [--seed N] [--clients N] [--pool N] [--mode transaction|statement|both]
#                             [--coalesce-rounds N] [--max-batch N] [--window D] [--only-rounds LIST] [--self-check]
#                             [--list-corpus]
# Starts its own Postgres and pgsluice ($PGSLUICE_BIN, else build/asan/pgsluice). Prints the number of client
# messages compared and the differences found; exits non-zero on any difference.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PGSLUICE_BIN="${PGSLUICE_BIN:-$ROOT/build/asan/pgsluice}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
exec /usr/bin/python3 "$ROOT/tests/differential/differential.py" "$@"
