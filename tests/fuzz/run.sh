#!/usr/bin/env bash
# Builds the libFuzzer targets (one per decoder, tests/fuzz/fuzz_*.cpp) with clang under ASan+UBSan
# into build/fuzz, then runs each for a while from its seed corpus (tests/fuzz/corpus/<target>).
#   bash tests/fuzz/run.sh                  10 s per target (what CI runs)
#   bash tests/fuzz/run.sh --seconds 120    any other time per target
#   bash tests/fuzz/run.sh --long           10 million executions per target, however long that takes
#                                           (from seconds to about an hour per target on one core)
#   bash tests/fuzz/run.sh --runs N         N executions per target
#   bash tests/fuzz/run.sh --build-only     build, run nothing
#   bash tests/fuzz/run.sh fuzz_sql ...     only these targets
# The corpus a run grows is kept in build/fuzz/corpus/<target> and the next run starts from it. A
# crash, leak, UBSan report, timeout, out-of-memory or failed FUZZ_CHECK fails the run (exit 1): the
# summary names the target and its reproducer in build/fuzz/findings/<target>/; replay one with
#   build/fuzz/<target> build/fuzz/findings/<target>/crash-...
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/build/fuzz"
seconds=10
runs=0
unit_timeout=10  # seconds one input may take; long runs share the machine, so they allow more
build_only=0
declare -a selected=()

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --long) runs=10000000 unit_timeout=120 ;;
    --runs)
      [[ ${2:-} =~ ^[0-9]+$ ]] || { usage >&2; exit 2; }
      runs=$2
      shift
      ;;
    --seconds)
      [[ ${2:-} =~ ^[0-9]+$ ]] || { usage >&2; exit 2; }
      seconds=$2
      shift
      ;;
    --seconds=*) seconds=${1#--seconds=} ;;
    --build-only) build_only=1 ;;
    -h | --help) usage; exit 0 ;;
    fuzz_*) selected+=("$1") ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  usage >&2
  exit 2
fi

# Each target: the src/ component it fuzzes, what that links, and the largest input worth trying
# (a startup packet is at most 10 000 bytes; SQL and SCRAM inputs stay short to keep runs fast).
declare -A component=(
  [fuzz_startup]=protocol [fuzz_frontend_messages]=protocol [fuzz_backend_messages]=protocol
  [fuzz_scram]=protocol [fuzz_config]=config [fuzz_sql]=sql)
declare -A libraries=([protocol]="-lcrypto" [config]="-lyaml-cpp" [sql]="-lpg_query")
declare -A max_len=(
  [fuzz_startup]=2048 [fuzz_frontend_messages]=4096 [fuzz_backend_messages]=4096
  [fuzz_scram]=1024 [fuzz_config]=4096 [fuzz_sql]=2048)
all_targets=(fuzz_startup fuzz_frontend_messages fuzz_backend_messages fuzz_scram fuzz_config fuzz_sql)
if ((${#selected[@]} == 0)); then
  selected=("${all_targets[@]}")
fi
for target in "${selected[@]}"; do
  [[ -n ${component[$target]:-} ]] || { echo "run.sh: no target $target" >&2; exit 2; }
done

CXX=${CXX:-clang++}
# src/ gets the fuzzer's coverage instrumentation but not its main(); -fno-sanitize-recover makes a
# UBSan report abort, so libFuzzer keeps the input. Warnings are left to the GCC build (-Werror
# there); the targets themselves are held to -Werror here.
# shellcheck disable=SC2054  # the commas are clang's, inside one flag
common_flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
  -fno-sanitize-recover=undefined -I"$root/include")
src_flags=("${common_flags[@]}" -fsanitize=fuzzer-no-link)
target_flags=("${common_flags[@]}" -fsanitize=fuzzer -Wall -Wextra -Werror)

mkdir -p "$out/obj" "$out/logs"
# A change of compiler or flags rebuilds everything.
stamp="$($CXX --version | head -1) ${src_flags[*]} ${target_flags[*]}"
if [[ ! -f $out/obj/flags || $(cat "$out/obj/flags") != "$stamp" ]]; then
  rm -rf "$out/obj"
  mkdir -p "$out/obj"
  printf '%s' "$stamp" >"$out/obj/flags"
fi

# up_to_date OBJECT: it exists and no file its depfile (-MMD) names is newer.
up_to_date() {
  local object=$1 dep
  [[ -f $object && -f $object.d ]] || return 1
  # shellcheck disable=SC2013  # a depfile's paths are words (clang escapes spaces in them)
  for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$object.d"); do
    [[ $dep -nt $object ]] && return 1
  done
  return 0
}

# compile SOURCE OBJECT FLAGS...
compile() {
  local source=$1 object=$2
  shift 2
  up_to_date "$object" && return 0
  echo "  compile ${source#"$root"/}"
  mkdir -p "$(dirname "$object")"
  "$CXX" "$@" -MMD -MF "$object.d" -c "$source" -o "$object"
}

build_started=$SECONDS
echo "fuzz: building ${selected[*]} with $CXX into ${out#"$root"/}"
declare -A built_component=()
for target in "${selected[@]}"; do
  comp=${component[$target]}
  if [[ -z ${built_component[$comp]:-} ]]; then
    for source in "$root"/src/"$comp"/*.cpp; do
      compile "$source" "$out/obj/$comp/$(basename "$source" .cpp).o" "${src_flags[@]}" || exit 1
    done
    built_component[$comp]=1
  fi
  compile "$root/tests/fuzz/$target.cpp" "$out/obj/$target.o" "${target_flags[@]}" || exit 1
  objects=("$out/obj/$target.o" "$out"/obj/"$comp"/*.o)
  relink=0
  [[ -f $out/$target ]] || relink=1
  for object in "${objects[@]}"; do
    [[ $object -nt $out/$target ]] && relink=1
  done
  if ((relink)); then
    echo "  link $target"
    # shellcheck disable=SC2086  # the library list is words
    "$CXX" "${target_flags[@]}" "${objects[@]}" ${libraries[$comp]} -o "$out/$target" || exit 1
  fi
done
echo "fuzz: built in $((SECONDS - build_started)) s"
((build_only)) && exit 0

# Sanitizer settings unless the caller (tests/run.sh) chose its own.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# What a failed run found, from its log.
finding_of() {
  local log=$1
  if grep -q 'FUZZ_CHECK failed' "$log"; then echo "failed FUZZ_CHECK"
  elif grep -q 'ERROR: LeakSanitizer' "$log"; then echo "memory leak"
  elif grep -q 'ERROR: AddressSanitizer' "$log"; then echo "AddressSanitizer: $(grep -m1 -o 'AddressSanitizer: [a-z-]*' "$log" | cut -d' ' -f2)"
  elif grep -q 'runtime error:' "$log"; then echo "UBSan: $(grep -m1 'runtime error:' "$log" | sed 's/.*runtime error: //')"
  elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then echo "timeout"
  elif grep -q -e 'out-of-memory' -e 'malloc(.*) exceeds' "$log"; then echo "out of memory / oversized allocation"
  elif grep -q 'ERROR: libFuzzer: deadly signal' "$log"; then echo "crash (deadly signal)"
  else echo "libFuzzer failed (see its log)"
  fi
}

declare -a lines=()
findings=0
for target in "${selected[@]}"; do
  corpus="$out/corpus/$target"
  findings_dir="$out/findings/$target"
  log="$out/logs/$target.log"
  mkdir -p "$corpus" "$findings_dir"
  cp "$root/tests/fuzz/corpus/$target"/* "$corpus"/ 2>/dev/null || true
  if ((runs > 0)); then
    limit=(-runs="$runs")
    echo "fuzz: $target for $runs executions (log: ${log#"$root"/})"
  else
    limit=(-max_total_time="$seconds")
    echo "fuzz: $target for $seconds s (log: ${log#"$root"/})"
  fi
  started=$SECONDS
  "$out/$target" "${limit[@]}" -max_len="${max_len[$target]}" -rss_limit_mb=2048 \
    -malloc_limit_mb=512 -timeout="$unit_timeout" -print_final_stats=1 -artifact_prefix="$findings_dir/" "$corpus" \
    >"$log" 2>&1 </dev/null
  code=$?
  executions=$(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || true)
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  if ((code == 0)); then
    lines+=("$(printf '  %-24s ok      %10s executions  cov %-5s %6s s' "$target" "${executions:-?}" "${coverage:-?}" \
      "$((SECONDS - started))")")
  else
    findings=1
    reproducer=$(grep -o "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //')
    echo "---- $target: last lines of $log ----"
    tail -n 60 "$log"
    lines+=("$(printf '  %-24s FAILED  %s; reproducer: %s' "$target" "$(finding_of "$log")" \
      "${reproducer:-none written (see $log)}")")
  fi
done

echo
if ((runs > 0)); then echo "fuzz summary ($runs executions per target):"; else echo "fuzz summary ($seconds s per target):"; fi
printf '%s\n' "${lines[@]}"
if ((findings)); then
  echo "fuzz: FINDINGS (replay: build/fuzz/<target> <reproducer>)"
  exit 1
fi
echo "fuzz: no findings"
