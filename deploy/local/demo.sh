#!/usr/bin/env bash
# pgsluice in front of a throwaway local Postgres, with the DATABASE_URL to use:
#
#   deploy/local/demo.sh                  install deps, build (release), run until Ctrl-C
#   deploy/local/demo.sh --background     the same, but leave it running; URL also in build/demo/env
#   deploy/local/demo.sh --stop           stop the background demo and remove its Postgres
#   deploy/local/demo.sh --mode transaction --port 7432
#
# Only DATABASE_URL=... goes to stdout; progress and hints go to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

for arg in "$@"; do
  if [[ $arg == --stop ]]; then
    exec /usr/bin/python3 deploy/local/demo.py --stop
  fi
  if [[ $arg == -h || $arg == --help ]]; then
    exec /usr/bin/python3 deploy/local/demo.py --help
  fi
done

{
  bash deploy/local/install-deps.sh
  cmake --preset release
  cmake --build --preset release --target pgsluice
} >&2

exec /usr/bin/python3 deploy/local/demo.py "$@"
