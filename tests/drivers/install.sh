#!/usr/bin/env bash
# Installs what tests/integration/test_drivers_jvm_node.py needs, and only what is missing:
#   - a JDK (Debian's default-jdk-headless) unless `javac` is already on the PATH;
#   - pgjdbc: Debian's libpostgresql-jdbc-java (/usr/share/java/postgresql.jar);
#   - Node.js and npm (Debian's nodejs, npm) unless `node`/`npm` are already on the PATH;
#   - the npm packages pinned in tests/drivers/node/package.json (pg, postgres), with `npm ci`
#     from the committed package-lock.json, skipped when node_modules already matches it.
# Safe to run again and again (CI runs it before every test run). Run as root or with sudo.
#
#   bash tests/drivers/install.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_DIR="$HERE/node"
JDBC_JAR=/usr/share/java/postgresql.jar

log() { printf 'tests/drivers/install.sh: %s\n' "$*"; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    log "need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

packages=()
command -v javac >/dev/null || packages+=(default-jdk-headless)
[[ -f $JDBC_JAR ]] || packages+=(libpostgresql-jdbc-java)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

if ((${#packages[@]})); then
  log "installing Debian packages: ${packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

command -v javac >/dev/null || { log "javac still missing after installing default-jdk-headless" >&2; exit 1; }
[[ -f $JDBC_JAR ]] || { log "$JDBC_JAR still missing after installing libpostgresql-jdbc-java" >&2; exit 1; }

cd "$NODE_DIR"
npm_flags=(--no-audit --no-fund --loglevel=error)
if [[ ! -f package-lock.json ]]; then
  # First run only: resolve the pinned versions and write the lock file (to be committed).
  log "no package-lock.json yet: npm install (commit tests/drivers/node/package-lock.json)"
  npm install "${npm_flags[@]}"
elif [[ -f node_modules/.package-lock.json && node_modules/.package-lock.json -nt package-lock.json ]] &&
  npm ls --all >/dev/null 2>&1; then
  log "npm packages up to date in $NODE_DIR"
else
  log "npm ci in $NODE_DIR"
  npm ci "${npm_flags[@]}"
fi

log "ready: $(javac -version 2>&1), pgjdbc $(dpkg-query -W -f='${Version}' libpostgresql-jdbc-java 2>/dev/null || echo '?'), node $(node --version), $(node -p "'pg ' + require('./node_modules/pg/package.json').version + ', postgres ' + require('./node_modules/postgres/package.json').version")"
