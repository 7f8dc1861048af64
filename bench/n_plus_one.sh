#!/usr/bin/env bash
# The N+1 scenario of issue 15: one-row primary-key lookups (pgbench -S on pgbench_accounts, scale
# 10) from 100 clients, with -M extended and with -M prepared, then from 1 client (what coalescing
# costs when there is nothing to combine), each against direct Postgres, pgsluice with coalescing
# off and on, and PgBouncer, in transaction mode with a pool of 20 (bench/README.md, "N+1 /
# coalescing").
#
#   bash bench/n_plus_one.sh                           # 5 rounds of 10 s per target and run
#   bash bench/n_plus_one.sh --rounds 3 --workers 1,2  # any bench/pgbench_compare.py option
#
# Options given here come after the defaults below, so they override them. Every run writes its
# JSON to $PGSLUICE_BENCH_OUT (default bench/results/n_plus_one-<time>). Installs and builds once
# as bench/run.sh does; PGSLUICE_BENCH_NO_BUILD=1 skips that.
set -uo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root" || exit

if [[ -z ${PGSLUICE_BENCH_NO_BUILD:-} ]]; then
  bash deploy/local/install-deps.sh || exit
  cmake --preset release || exit
  cmake --build --preset release --target pgsluice || exit
fi

out=${PGSLUICE_BENCH_OUT:-bench/results/n_plus_one-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
targets=direct,pgsluice,pgsluice-coalesce,pgbouncer
common=(--binary "$repo_root/build/release/pgsluice" --pool-mode transaction --pool-size 20 --workers 2
        --scale 10 --targets "$targets" --coalesce-max-batch 256 --p99 --executions --rounds 5 --duration 10)
status=0
run() {  # name, then options
  local name=$1
  shift
  printf '\n== %s ==\n' "$name"
  # One run failing (PgBouncer 1.18 cannot do -M prepared in transaction mode) must not stop the rest.
  /usr/bin/python3 bench/pgbench_compare.py "${common[@]}" "$@" --json "$out/$name.json" || status=1
}

run c100-extended --clients 100 --threads 2 --mode extended "$@"
run c100-prepared --clients 100 --threads 2 --mode prepared "$@"
run c1-extended --clients 1 --threads 1 --mode extended "$@"
run c1-prepared --clients 1 --threads 1 --mode prepared "$@"

printf '\nJSON of every run in %s\n' "$out"
exit $status
