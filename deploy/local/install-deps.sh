#!/usr/bin/env bash
# Installs what pgsluice needs to build, test, benchmark and run its demo on Debian 12 (bookworm).
# Idempotent: packages already installed are left alone, and `apt-get update` runs only when
# something is missing. Run as root (or via sudo) on a fresh machine: `bash deploy/local/install-deps.sh`.
#
# Postgres is installed without a default cluster (create_main_cluster = false): the tests, the
# benchmarks and the demo start their own throwaway clusters and never use the machine's.
# Debian starts pgbouncer when it is installed; we stop any instance that install left running.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Build: compiler, CMake + Ninja, and the libraries CMakeLists.txt finds; clang and its sanitizer and
# libFuzzer runtimes for the fuzz targets (tests/fuzz/run.sh).
BUILD_PACKAGES=(
  g++ cmake ninja-build pkg-config clang libclang-rt-14-dev
  libboost1.81-dev libboost-program-options1.81-dev
  libssl-dev libyaml-cpp-dev prometheus-cpp-dev libspdlog-dev libfmt-dev catch2 libpg-query-dev
)
# Tests, benchmarks and demo: a real Postgres, PgBouncer to compare with, libpq clients (psql,
# pgbench, psycopg2/psycopg), pytest, the tools the harness calls (runuser, ps, ss), and promtool
# (package prometheus) that checks the /metrics output and the alert rules.
RUNTIME_PACKAGES=(
  libpq-dev postgresql-15 postgresql-client-15 pgbouncer
  python3 python3-pytest python3-pytest-timeout python3-psycopg2 python3-psycopg python3-yaml
  procps iproute2 util-linux ca-certificates
  prometheus
)
CREATECLUSTER_CONF=/etc/postgresql-common/createcluster.conf

log() { printf 'install-deps: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -E bash "$0" "$@"
  fi
  log "must run as root (or with sudo available)" >&2
  exit 1
fi

is_installed() {
  # "install ok installed" is the only status that means the package is fully there.
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing_of() {
  local p
  for p in "$@"; do
    is_installed "$p" || printf '%s\n' "$p"
  done
}

updated=0
apt_install() {
  (($# > 0)) || return 0
  if ((updated == 0)); then
    log "apt-get update"
    apt-get update -q
    updated=1
  fi
  log "installing: $*"
  # confold: keep a createcluster.conf we wrote before postgresql-common was installed.
  apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# Ensure createcluster.conf says `create_main_cluster = false`, keeping the rest of the file.
disable_main_cluster() {
  mkdir -p "$(dirname "$CREATECLUSTER_CONF")"
  if [[ ! -f $CREATECLUSTER_CONF ]]; then
    printf '# Written by pgsluice deploy/local/install-deps.sh: no default cluster.\ncreate_main_cluster = false\n' \
      >"$CREATECLUSTER_CONF"
  elif grep -Eq '^[[:space:]]*#?[[:space:]]*create_main_cluster' "$CREATECLUSTER_CONF"; then
    sed -ri 's/^[[:space:]]*#?[[:space:]]*create_main_cluster.*$/create_main_cluster = false/' "$CREATECLUSTER_CONF"
  else
    printf 'create_main_cluster = false\n' >>"$CREATECLUSTER_CONF"
  fi
}

# Postgres first, so that its main cluster is never created on a fresh machine.
if ! is_installed postgresql-15; then
  if [[ ! -f $CREATECLUSTER_CONF ]] || ! grep -Eq '^[[:space:]]*create_main_cluster[[:space:]]*=[[:space:]]*false' "$CREATECLUSTER_CONF"; then
    log "disabling the default Postgres cluster in $CREATECLUSTER_CONF"
    disable_main_cluster
  fi
fi

pgbouncer_was_installed=0
is_installed pgbouncer && pgbouncer_was_installed=1
prometheus_was_installed=0
is_installed prometheus && prometheus_was_installed=1

mapfile -t missing < <(missing_of "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}")
if ((${#missing[@]} == 0)); then
  log "all packages already installed"
else
  apt_install "${missing[@]}"
fi

# A fresh pgbouncer install starts the packaged service on 6432 where an init system lets it.
# It is not ours to keep: stop it so that port and pgbouncer's own state stay free.
if ((pgbouncer_was_installed == 0)); then
  if pgrep -x pgbouncer >/dev/null 2>&1 || [[ -f /run/postgresql/pgbouncer.pid ]]; then
    log "stopping the pgbouncer service the package started"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
      systemctl stop pgbouncer.service || true
      systemctl disable pgbouncer.service >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/pgbouncer ]]; then
      /etc/init.d/pgbouncer stop || true
    fi
    if [[ -f /run/postgresql/pgbouncer.pid ]]; then
      pid=$(cat /run/postgresql/pgbouncer.pid 2>/dev/null || true)
      if [[ -n ${pid:-} ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == pgbouncer ]]; then
        kill "$pid" 2>/dev/null || true
      fi
    fi
  fi
fi

# The same for the prometheus server the package may start (we only need its promtool).
if ((prometheus_was_installed == 0)) && pgrep -x prometheus >/dev/null 2>&1; then
  log "stopping the prometheus service the package started"
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl stop prometheus.service || true
    systemctl disable prometheus.service >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/prometheus ]]; then
    /etc/init.d/prometheus stop || true
  fi
  pkill -x prometheus 2>/dev/null || true
fi

# Sanity: the binaries the scripts call are where the harness expects them.
for bin in /usr/lib/postgresql/15/bin/initdb /usr/lib/postgresql/15/bin/pg_ctl /usr/bin/pgbench \
  /usr/bin/psql /usr/sbin/pgbouncer /usr/bin/python3 /usr/bin/promtool; do
  [[ -x $bin ]] || { log "missing after install: $bin" >&2; exit 1; }
done
/usr/bin/python3 -c 'import psycopg2, psycopg, pytest, pytest_timeout, yaml' || { log "python modules missing" >&2; exit 1; }
log "ok"
