#!/usr/bin/env bash
# Benchmarks pgsluice against direct Postgres and PgBouncer in one run (DESIGN §9).
#
#   bash bench/run.sh                                  # pgbench -S -c 20 -j 2 -T 15, session mode
#   bash bench/run.sh --mode extended --clients 50     # any bench/pgbench_compare.py option
#   bash bench/run.sh --json bench/results/latest.json
#
# Installs what is missing (deploy/local/install-deps.sh), builds the release preset, then runs
# bench/pgbench_compare.py with the release binary. Set PGSLUICE_BENCH_NO_BUILD=1 to skip the
# install and the build (e.g. when comparing a binary you built yourself via --binary).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

if [[ -z ${PGSLUICE_BENCH_NO_BUILD:-} ]]; then
  bash deploy/local/install-deps.sh
  # Benchmarks measure the optimised build, never the sanitizer one the tests use.
  cmake --preset release
  cmake --build --preset release --target pgsluice
fi

# Debian's python3 has psycopg2, which the shared test harness imports.
exec /usr/bin/python3 bench/pgbench_compare.py --binary "$repo_root/build/release/pgsluice" "$@"
