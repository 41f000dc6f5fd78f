#!/usr/bin/env bash
# Installs (if missing) and starts the real database services the JDBC backend's tests use
# (and, through scripts/services/*.sh, the other backends' services: Kafka, Elasticsearch):
# PostgreSQL (Debian's cluster) and MariaDB (a data dir of our own), both bound to 127.0.0.1, with a
# role/user `kestra` (password `kestra`, allowed to create databases: each test run creates its own) and a
# database `kestra`; then scripts/services/storage.sh (MinIO, fake-gcs-server, Azurite for the storage
# tests). Idempotent: a second run finds them running and returns in seconds.
#
# Usage: eval "$(scripts/services.sh)"
# Progress goes to stderr; stdout carries only `export KESTRA_TEST_..._URL=...` lines.
#
# Environment: KESTRA_PG_PORT (default 5432), KESTRA_MYSQL_PORT (default 3306),
# KESTRA_SERVICES_DIR (default /var/tmp/kestra-services: MariaDB data dir, logs),
# KESTRA_SERVICES_TIMEOUT (seconds to wait for readiness, default 60).
set -euo pipefail

PG_PORT="${KESTRA_PG_PORT:-5432}"
MYSQL_PORT="${KESTRA_MYSQL_PORT:-3306}"
SERVICES_DIR="${KESTRA_SERVICES_DIR:-/var/tmp/kestra-services}"
TIMEOUT="${KESTRA_SERVICES_TIMEOUT:-60}"

log() { echo "[services] $*" >&2; }
die() { echo "[services] ERROR: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

# wait_for NAME LOGFILE COMMAND...: probe COMMAND until it succeeds or the deadline passes; on failure
# print the service log and fail.
wait_for() {
  local name="$1" logfile="$2"
  shift 2
  local deadline=$((SECONDS + TIMEOUT)) delay=0.05
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name not ready after ${TIMEOUT}s; its log ($logfile):"
      tail -n 60 "$logfile" >&2 2>/dev/null || true
      die "$name did not start"
    fi
    sleep "$delay"
    delay=$(awk -v d="$delay" 'BEGIN { d = d * 2; if (d > 1) d = 1; print d }')
  done
}

APT_UPDATED=0
apt_install() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} by hand"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  local pkg policy_out
  for pkg in "${missing[@]}"; do
    policy_out=$(apt-cache policy "$pkg" 2>/dev/null || true)
    case "$policy_out" in
    *"Candidate: (none)"* | "") die "no installable candidate for $pkg (apt-cache policy)" ;;
    esac
  done
  log "installing ${missing[*]}"
  # policy-rc.d 101: keep the package scripts from starting services; this script starts them itself.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    created_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
  [ "$created_policy" -eq 1 ] && as_root rm -f "$policy"
  return 0
}

# ---------------------------------------------------------------- PostgreSQL
start_postgres() {
  apt_install postgresql
  local ver
  ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1)
  [ -n "$ver" ] || die "no PostgreSQL installation under /usr/lib/postgresql"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$ver main"; then
    log "creating PostgreSQL $ver cluster 'main' on port $PG_PORT"
    as_root pg_createcluster --port "$PG_PORT" "$ver" main >&2
  fi
  local logfile="/var/log/postgresql/postgresql-$ver-main.log"
  # Our settings live in conf.d (included last by Debian's postgresql.conf), so reruns compare one file.
  local dropin="/etc/postgresql/$ver/main/conf.d/kestra.conf"
  local wanted
  wanted=$(printf "listen_addresses = '127.0.0.1'\nport = %s\nmax_connections = 200\n" "$PG_PORT")
  if [ "$(cat "$dropin" 2>/dev/null || true)" != "$wanted" ]; then
    log "configuring PostgreSQL $ver main: 127.0.0.1:$PG_PORT"
    printf '%s\n' "$wanted" | as_root tee "$dropin" >/dev/null
    if pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
      as_root pg_ctlcluster "$ver" main restart >&2
    fi
  fi
  if pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    log "PostgreSQL $ver already running on 127.0.0.1:$PG_PORT"
  else
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster "$ver" main start >&2 || {
      tail -n 60 "$logfile" >&2 2>/dev/null || true
      die "pg_ctlcluster $ver main start failed"
    }
    wait_for PostgreSQL "$logfile" pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
  fi
  local psql=(as_root runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA)
  if [ "$(id -u)" -ne 0 ]; then psql=(sudo -n -u postgres psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA); fi
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'kestra'")" != "1" ]; then
    log "creating PostgreSQL role kestra"
    "${psql[@]}" -c "CREATE ROLE kestra LOGIN CREATEDB PASSWORD 'kestra'" >&2
  fi
  if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'kestra'")" != "1" ]; then
    log "creating PostgreSQL database kestra"
    "${psql[@]}" -c "CREATE DATABASE kestra OWNER kestra" >&2
  fi
  wait_for "PostgreSQL login as kestra" "$logfile" \
    env PGPASSWORD=kestra psql -h 127.0.0.1 -p "$PG_PORT" -U kestra -d kestra -qtAc "SELECT 1"
  echo "export KESTRA_TEST_POSTGRES_URL=postgres://kestra:kestra@127.0.0.1:$PG_PORT/kestra"
}

# ---------------------------------------------------------------- MariaDB
start_mariadb() {
  apt_install mariadb-server mariadb-client
  local base="$SERVICES_DIR/mariadb"
  local datadir="$base/data" rundir="$base/run" logfile="$base/mariadb.log"
  local sock="$rundir/mysqld.sock"
  as_root mkdir -p "$datadir" "$rundir"
  local runas=mysql
  id mysql >/dev/null 2>&1 || runas=root
  as_root chown -R "$runas" "$base"
  if [ -S "$sock" ] && mariadb-admin --socket="$sock" -u root ping >/dev/null 2>&1; then
    log "MariaDB already running on 127.0.0.1:$MYSQL_PORT"
  else
    if [ ! -d "$datadir/mysql" ]; then
      log "initialising MariaDB data dir $datadir"
      as_root mariadb-install-db --user="$runas" --datadir="$datadir" --skip-test-db \
        --auth-root-authentication-method=socket >"$base/install.log" 2>&1 || {
        cat "$base/install.log" >&2
        die "mariadb-install-db failed"
      }
    fi
    log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
    rm -f "$sock"
    # setsid + nohup: the server outlives this script and the shell that runs it.
    as_root setsid nohup mariadbd --no-defaults --user="$runas" --datadir="$datadir" \
      --socket="$sock" --pid-file="$rundir/mariadbd.pid" --port="$MYSQL_PORT" \
      --bind-address=127.0.0.1 --log-error="$logfile" --max-connections=300 \
      --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 \
      </dev/null >/dev/null 2>&1 &
    wait_for MariaDB "$logfile" mariadb-admin --socket="$sock" -u root ping
  fi
  as_root mariadb --socket="$sock" -u root -e "
    CREATE USER IF NOT EXISTS 'kestra'@'127.0.0.1' IDENTIFIED BY 'kestra';
    CREATE USER IF NOT EXISTS 'kestra'@'localhost' IDENTIFIED BY 'kestra';
    CREATE DATABASE IF NOT EXISTS kestra;
    GRANT ALL PRIVILEGES ON *.* TO 'kestra'@'127.0.0.1';
    GRANT ALL PRIVILEGES ON *.* TO 'kestra'@'localhost';
    FLUSH PRIVILEGES;" >&2
  wait_for "MariaDB login as kestra" "$logfile" \
    mariadb --protocol=tcp -h 127.0.0.1 -P "$MYSQL_PORT" -u kestra -pkestra -e "SELECT 1" kestra
  echo "export KESTRA_TEST_MYSQL_URL=mysql://kestra:kestra@127.0.0.1:$MYSQL_PORT/kestra"
}

start_postgres
start_mariadb
# Services with their own script (downloads cached under $SERVICES_DIR); each prints its exports.
# The headless browser of the Web UI test (installs chromium + chromium-driver).
"$(dirname "$0")/services/browser.sh"
# Apache Kafka (single KRaft broker from Maven Central).
KESTRA_SERVICES_DIR="$SERVICES_DIR" bash "$(dirname "${BASH_SOURCE[0]}")/services/kafka.sh"
# Elasticsearch (single node from Maven Central's integ-test-zip, run as an unprivileged user).
KESTRA_SERVICES_DIR="$SERVICES_DIR" bash "$(dirname "${BASH_SOURCE[0]}")/services/elasticsearch.sh"
# A Python venv with Kestra's own clients (`kestra`, `kestrapy`) for tests/clients_python.rs.
KESTRA_SERVICES_DIR="$SERVICES_DIR" bash "$(dirname "${BASH_SOURCE[0]}")/services/python.sh"
# Object stores for the storage tests (MinIO, fake-gcs-server, Azurite).
"$(dirname "$0")/services/storage.sh"
log "services ready"
