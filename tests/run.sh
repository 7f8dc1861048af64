#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run`): dependencies, the ASan+UBSan build, the unit
# tests (ctest), the fuzz targets (tests/fuzz/run.sh, 10 s each), then the integration tests (pytest)
# against that build and a throwaway Postgres.
# Run from anywhere: `bash tests/run.sh`. Extra arguments go to pytest (e.g. `-k cancel`).
# Exits non-zero if any step fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

LOG_DIR="$ROOT/build/test-logs"
declare -a STEP_NAMES=() STEP_RESULTS=() STEP_SECONDS=()
failed=0
unit_passed=0 unit_failed=0 integ_passed=0 integ_failed=0 integ_skipped=0

banner() { printf '\n==== %s ====\n' "$*"; }

# run_step NAME COMMAND...: runs COMMAND with its output shown and kept in $LOG_DIR/NAME.log.
run_step() {
  local name=$1
  shift
  banner "$name: $*"
  local started=$SECONDS
  "$@" 2>&1 | tee "$LOG_DIR/$name.log"
  local code=${PIPESTATUS[0]}
  STEP_NAMES+=("$name")
  STEP_SECONDS+=($((SECONDS - started)))
  if ((code == 0)); then
    STEP_RESULTS+=("ok")
  else
    STEP_RESULTS+=("FAILED (exit $code)")
    failed=1
  fi
  return "$code"
}

summary() {
  banner "summary"
  local i
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-12s %-22s %4ss\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}" "${STEP_SECONDS[$i]}"
  done
  printf '  logs: %s\n' "$LOG_DIR"
  if ((failed)); then
    printf '\nRESULT: FAILED\n'
  else
    printf '\nRESULT: all tests passed\n'
  fi
  # One closing line over both runners: unit (ctest) + integration (pytest).
  printf 'tests: %d passed, %d failed, %d skipped\n' \
    $((unit_passed + integ_passed)) $((unit_failed + integ_failed)) "$integ_skipped"
}

# 1. Dependencies (Debian packages; installs only what is missing).
mkdir -p "$LOG_DIR"
if ! run_step deps bash deploy/local/install-deps.sh; then
  summary
  exit 1
fi

# 1b. What the driver tests need beyond Debian's Python drivers: a JDK, pgjdbc, node-postgres, postgres.js.
if ! run_step deps-drivers bash tests/drivers/install.sh; then
  summary
  exit 1
fi

# 2. The ASan+UBSan build (CMakePresets.json: asan).
if ! run_step build bash -c 'cmake --preset asan && cmake --build --preset asan'; then
  summary
  exit 1
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# 3. Unit tests.
run_step unit ctest --test-dir build/asan --output-on-failure
line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$LOG_DIR/unit.log" | tail -1 || true)
if [[ -n $line ]]; then
  total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
  unit_failed=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
  unit_passed=$((total - unit_failed))
fi
if ((unit_passed + unit_failed == 0)); then
  echo "ctest ran no test" >&2
  STEP_RESULTS[-1]="FAILED (no tests)"
  failed=1
fi

# 3b. Fuzzing (issue 17): every decoder's libFuzzer target, built with clang under ASan+UBSan into
#     build/fuzz, 10 s each from its seed corpus; a crash, leak, UBSan report or timeout fails the
#     step and names the reproducer (tests/fuzz/run.sh).
run_step fuzz bash tests/fuzz/run.sh --seconds 10

# integration_pass NAME PYTEST_ARGS...: one pytest run against the ASan build (log and JUnit XML in
# $LOG_DIR), its counts added to the closing line; a run that passes no test fails.
integration_pass() {
  local name=$1
  shift
  run_step "$name" /usr/bin/python3 -m pytest -q -p no:cacheprovider --timeout=300 -o junit_family=xunit2 \
    --junitxml="$LOG_DIR/$name.xml" "$@"
  local last passed
  last=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped)|no tests ran' "$LOG_DIR/$name.log" | tail -1 || true)
  passed=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || echo 0)
  integ_passed=$((integ_passed + passed))
  integ_failed=$((integ_failed + $(grep -oE '[0-9]+ failed' <<<"$last" | grep -oE '[0-9]+' || echo 0) + \
    $(grep -oE '[0-9]+ errors?' <<<"$last" | grep -oE '[0-9]+' || echo 0)))
  integ_skipped=$((integ_skipped + $(grep -oE '[0-9]+ skipped' <<<"$last" | grep -oE '[0-9]+' || echo 0)))
  if ((passed == 0)); then
    echo "pytest passed no test in $name" >&2
    failed=1
  fi
}

# 4. Integration tests against the ASan build, once per pool mode (every driver habit must work in
#    each; tests that only make sense in one mode skip themselves in the other).
export PGSLUICE_BIN="$ROOT/build/asan/pgsluice"
for mode in session transaction; do
  PGSLUICE_TEST_MODE=$mode integration_pass "integration-$mode" tests/integration "$@"
done

# 5. The driver tests again with clients on TLS (issue 17): pgsluice requires it, so a driver that did
#    not encrypt is refused (tests/integration/conftest.py: PGSLUICE_TEST_TLS). Left out of a run with
#    extra pytest arguments, which may select none of its tests.
if (($# == 0)); then
  PGSLUICE_TEST_TLS=1 PGSLUICE_TEST_MODE=transaction integration_pass integration-tls \
    tests/integration/test_drivers.py tests/integration/test_drivers_jvm_node.py
fi

summary
exit "$failed"
