#!/usr/bin/env bash
# Make sure the local services the test suite needs are running, and tell the
# caller how to reach them.
#
# Usage:
#   exports=$(scripts/ensure-services.sh postgres [redis ...])
#   eval "$exports"
#
# (Use two steps: `eval "$(scripts/ensure-services.sh ...)"` in one line would
# hide a failure of this script from `set -e`.)
#
# stdout carries only `export NAME='value'` lines; progress goes to stderr.
# Idempotent: a service that already answers is used as is.
#
# Services and what they export:
#   postgres  SURGE_TEST_PG_URL     a URL whose role can CREATE DATABASE
#   redis     SURGE_TEST_REDIS_URL
#   kafka     SURGE_TEST_KAFKA_BROKERS (a tansu broker, installed with cargo when missing)
#             and SURGE_TEST_TANSU (its binary, for tests that start brokers of their own);
#             also installs what the rdkafka crate builds with (cmake, libcurl headers)
#   mongo     SURGE_TEST_MONGO_URL (a MongoDB wire-protocol server: PyPI `mongoeco` on
#             Python >= 3.13, in a virtualenv under ~/.cache/surge, in-memory storage)
#
# Environment knobs:
#   SURGE_TEST_PG_URL       kept if it already works (connects + can create DBs)
#   SURGE_FORCE_PG_ROLE=1   skip the existing-URL and trust attempts and always
#                           create/refresh the password role (for testing)
#   SURGE_PG_PORT           default 5432
#   SURGE_PG_READY_TIMEOUT  seconds to wait for the server, default 60
#   SURGE_REDIS_PORT        default 6379
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=${SURGE_PG_PORT:-5432}
PG_READY_TIMEOUT=${SURGE_PG_READY_TIMEOUT:-60}
PG_TEST_ROLE=surge_test

REDIS_HOST=127.0.0.1
REDIS_PORT=${SURGE_REDIS_PORT:-6379}
REDIS_READY_TIMEOUT=30

log() { printf 'ensure-services: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Print `export NAME='value'` on stdout, safely single-quoted.
emit_export() {
  local name=$1 value=$2
  printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}"
}

# Hide the password part of a URL for log lines.
redact_url() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root to run: $*"
  fi
}

# Run a command as the postgres OS user (peer auth over the unix socket).
# cd / so that a cwd the postgres user cannot read does not cause warnings.
as_postgres() {
  (
    cd /
    if [ "$(id -un)" = postgres ]; then
      "$@"
    elif [ "$(id -u)" -eq 0 ]; then
      if command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
      else
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
      fi
    else
      sudo -n -u postgres -- "$@"
    fi
  )
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; please install: $*"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------

# 0 = accepting connections, 1 = rejecting (e.g. starting up), 2 = no answer,
# 3 = pg_isready missing or bad parameters.
pg_ready_status() {
  command -v pg_isready >/dev/null 2>&1 || return 3
  pg_isready -q -t 2 -h "$PG_HOST" -p "$PG_PORT"
}

pg_wait_ready() {
  local deadline=$((SECONDS + PG_READY_TIMEOUT))
  until pg_ready_status; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.5
  done
}

# Start (or create and start) the installed Debian cluster on $PG_PORT.
# Returns 1 if no PostgreSQL server is installed.
pg_start_installed() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  local ver name port status _rest
  while read -r ver name port status _rest; do
    [ "$port" = "$PG_PORT" ] || continue
    if [ "$status" = online ]; then
      log "postgres: cluster $ver/$name is already online, waiting for it"
    else
      log "postgres: starting cluster $ver/$name"
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start >&2 ||
        die "postgres: could not start cluster $ver/$name (see /var/log/postgresql/)"
    fi
    return 0
  done < <(pg_lsclusters -h 2>/dev/null)

  # No cluster on our port: create one if a server is installed.
  local bin
  ver=""
  for bin in /usr/lib/postgresql/*/bin/postgres; do
    [ -x "$bin" ] || continue
    bin=${bin%/bin/postgres}
    ver=${bin##*/}  # glob order is sorted; keep the last (highest) version
  done
  [ -n "$ver" ] || return 1
  if [ -d "/etc/postgresql/$ver/main" ]; then
    die "postgres: cluster $ver/main exists but not on port $PG_PORT (see pg_lsclusters)"
  fi
  log "postgres: creating cluster $ver/main on port $PG_PORT"
  as_root pg_createcluster --port "$PG_PORT" "$ver" main >&2 ||
    die "postgres: could not create cluster $ver/main"
  log "postgres: starting cluster $ver/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 ||
    die "postgres: could not start cluster $ver/main (see /var/log/postgresql/)"
}

# Succeeds if the URL connects and its role can create databases.
# The probe ignores PGPASSWORD and ~/.pgpass so the URL must stand on its own,
# and never prompts for a password.
pg_url_ok() {
  local out
  out=$(env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
    psql -X -w -q -At -v ON_ERROR_STOP=1 -d "$1" \
    -c "select rolsuper or rolcreatedb from pg_roles where rolname = current_user" \
    2>/dev/null) || return 1
  [ "$out" = t ]
}

# Create or refresh the password role via the unix socket as the postgres OS
# user. Prints the resulting URL. The password is new on every run and is
# passed on stdin, not on a command line.
pg_make_role_url() {
  local pw sql
  pw=$(random_hex 16)
  [ "${#pw}" -eq 32 ] || die "postgres: could not generate a password"
  sql="SELECT 'CREATE ROLE $PG_TEST_ROLE' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_TEST_ROLE')
\\gexec
ALTER ROLE $PG_TEST_ROLE WITH LOGIN CREATEDB PASSWORD '$pw';"
  log "postgres: creating/updating role $PG_TEST_ROLE (LOGIN CREATEDB, fresh random password)"
  if ! as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres <<<"$sql" >/dev/null; then
    # A concurrent run may have created the role between check and create.
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres <<<"$sql" >/dev/null ||
      die "postgres: could not create role $PG_TEST_ROLE via the unix socket as OS user postgres"
  fi
  printf 'postgres://%s:%s@%s:%s/postgres?sslmode=disable\n' "$PG_TEST_ROLE" "$pw" "$PG_HOST" "$PG_PORT"
}

# Best effort: drop surge_test_* databases left behind by earlier runs.
# Skips databases that still have sessions (they may belong to a test run
# that is going on right now) and databases this role may not drop.
pg_drop_leftovers() {
  local url=$1 query n
  query="FROM pg_database d
WHERE d.datname LIKE 'surge\\_test\\_%'
  AND pg_has_role(d.datdba, 'MEMBER')
  AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)"
  n=$(env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
    psql -X -w -q -At -d "$url" -c "SELECT count(*) $query" 2>/dev/null) || n=""
  case "$n" in
  "" )
    log "postgres: warning: could not list leftover databases (ignored)"
    return 0
    ;;
  0) return 0 ;;
  esac
  log "postgres: dropping $n leftover surge_test_* database(s)"
  env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
    psql -X -w -q -At -d "$url" >/dev/null 2>&1 <<SQL ||
SELECT format('DROP DATABASE IF EXISTS %I', d.datname)
       || CASE WHEN current_setting('server_version_num')::int >= 130000
               THEN ' WITH (FORCE)' ELSE '' END
$query
\\gexec
SQL
    log "postgres: warning: dropping leftover databases failed (ignored)"
}

ensure_postgres() {
  local rc=0
  pg_ready_status || rc=$?
  if [ "$rc" -eq 0 ]; then
    log "postgres: already accepting connections on $PG_HOST:$PG_PORT"
  else
    if [ "$rc" -eq 1 ]; then
      log "postgres: server on $PG_HOST:$PG_PORT is not accepting connections yet"
    elif pg_start_installed; then
      :
    else
      log "postgres: no server installed"
      apt_install postgresql
      pg_start_installed || die "postgres: installed, but found no cluster to start"
    fi
    log "postgres: waiting up to ${PG_READY_TIMEOUT}s for $PG_HOST:$PG_PORT"
    pg_wait_ready || die "postgres: not ready after ${PG_READY_TIMEOUT}s (see /var/log/postgresql/)"
    log "postgres: ready"
  fi
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client

  local url=""
  if [ "${SURGE_FORCE_PG_ROLE:-}" = 1 ]; then
    log "postgres: SURGE_FORCE_PG_ROLE=1, skipping existing URL and trust attempts"
  elif [ -n "${SURGE_TEST_PG_URL:-}" ] && pg_url_ok "$SURGE_TEST_PG_URL"; then
    url=$SURGE_TEST_PG_URL
    log "postgres: keeping SURGE_TEST_PG_URL from the environment"
  else
    if [ -n "${SURGE_TEST_PG_URL:-}" ]; then
      log "postgres: SURGE_TEST_PG_URL from the environment does not work (or cannot create databases); ignoring it"
    fi
    local trust_url="postgres://postgres@$PG_HOST:$PG_PORT/postgres?sslmode=disable"
    if pg_url_ok "$trust_url"; then
      url=$trust_url
      log "postgres: role postgres connects without a password over TCP"
    fi
  fi

  if [ -z "$url" ]; then
    url=$(pg_make_role_url)
    pg_url_ok "$url" ||
      die "postgres: role $PG_TEST_ROLE cannot log in over TCP at $PG_HOST:$PG_PORT (check pg_hba.conf)"
    log "postgres: role $PG_TEST_ROLE logs in over TCP with its password"
  fi

  pg_drop_leftovers "$url"
  log "postgres: SURGE_TEST_PG_URL=$(redact_url "$url")"
  emit_export SURGE_TEST_PG_URL "$url"
}

# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------

redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
  else
    # No client installed: speak the protocol over bash's /dev/tcp.
    (
      exec 3<>"/dev/tcp/$REDIS_HOST/$REDIS_PORT" || exit 1
      printf 'PING\r\n' >&3
      IFS= read -r -t 2 line <&3 || exit 1
      [ "${line%$'\r'}" = +PONG ]
    ) 2>/dev/null
  fi
}

redis_start() {
  log "redis: starting redis-server on $REDIS_HOST:$REDIS_PORT"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
    --save "" --appendonly no >&2
}

ensure_redis() {
  if redis_ping; then
    log "redis: already answering on $REDIS_HOST:$REDIS_PORT"
  else
    if ! command -v redis-server >/dev/null 2>&1; then
      log "redis: no server installed"
      apt_install redis-server
    fi
    redis_start
    local deadline=$((SECONDS + REDIS_READY_TIMEOUT))
    until redis_ping; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        die "redis: not answering PING after ${REDIS_READY_TIMEOUT}s"
      fi
      sleep 0.2
    done
    log "redis: ready"
  fi
  # Database 9: the tests keep to a database of their own (and a key prefix per test node).
  emit_export SURGE_TEST_REDIS_URL "redis://$REDIS_HOST:$REDIS_PORT/9"
}

# --------------------------------------------------------------------------
# Kafka protocol: tansu (a Kafka-compatible broker written in Rust)
# --------------------------------------------------------------------------

KAFKA_HOST=127.0.0.1
KAFKA_PORT=${SURGE_KAFKA_PORT:-9092}
KAFKA_READY_TIMEOUT=60
# A plain install has no storage engine (writes are dropped); these features give it one.
TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql

kafka_port_open() { (exec 3<>"/dev/tcp/$KAFKA_HOST/$KAFKA_PORT") 2>/dev/null; }

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then
    command -v tansu
  elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
    echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  fi
}

ensure_kafka() {
  # What rdkafka's bundled librdkafka build needs (the curl header even with curl off).
  if ! command -v cmake >/dev/null 2>&1 || [ ! -e /usr/include/x86_64-linux-gnu/curl/curl.h ] &&
    [ ! -e /usr/include/curl/curl.h ]; then
    apt_install cmake libcurl4-openssl-dev
  fi
  local bin
  bin=$(tansu_bin)
  if [ -z "$bin" ]; then
    # A debug build serves tests as fast as a release one and builds in about half the time
    # (~8 min on 2 cores); cargo keeps it in ~/.cargo/bin for the next run.
    log "kafka: installing tansu $TANSU_VERSION with cargo (once, ~8 min)"
    cargo install "tansu@$TANSU_VERSION" --locked --features "$TANSU_FEATURES" --debug >&2
    bin=$(tansu_bin)
    [ -n "$bin" ] || die "kafka: tansu did not install"
  fi
  if kafka_port_open; then
    log "kafka: already listening on $KAFKA_HOST:$KAFKA_PORT"
  else
    log "kafka: starting tansu on $KAFKA_HOST:$KAFKA_PORT (in-memory storage)"
    setsid nohup "$bin" broker \
      --listener-url "tcp://$KAFKA_HOST:$KAFKA_PORT" \
      --advertised-listener-url "tcp://$KAFKA_HOST:$KAFKA_PORT" \
      --storage-engine memory://tansu/ >"${TMPDIR:-/tmp}/surge-tansu.log" 2>&1 </dev/null &
    local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
    until kafka_port_open; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        die "kafka: tansu not listening after ${KAFKA_READY_TIMEOUT}s (see ${TMPDIR:-/tmp}/surge-tansu.log)"
      fi
      sleep 0.2
    done
    log "kafka: ready"
  fi
  emit_export SURGE_TEST_KAFKA_BROKERS "$KAFKA_HOST:$KAFKA_PORT"
  emit_export SURGE_TEST_TANSU "$bin"
}

# --------------------------------------------------------------------------
# MongoDB wire protocol: mongoeco (no MongoDB server is installable from Debian or PyPI)
# --------------------------------------------------------------------------

MONGO_HOST=127.0.0.1
MONGO_PORT=${SURGE_MONGO_PORT:-27117}
MONGO_READY_TIMEOUT=60
MONGOECO_VERSION=4.11.0
PYMONGO_VERSION=4.20.1
MONGO_VENV=${SURGE_CACHE_DIR:-$HOME/.cache/surge}/mongoeco-$MONGOECO_VERSION

mongo_port_open() { (exec 3<>"/dev/tcp/$MONGO_HOST/$MONGO_PORT") 2>/dev/null; }

python313() {
  local candidate
  for candidate in python3.14 python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
}

ensure_mongo() {
  if [ ! -x "$MONGO_VENV/bin/python" ]; then
    local py
    py=$(python313)
    [ -n "$py" ] || die "mongo: mongoeco needs Python >= 3.13 (pyenv install 3.13)"
    log "mongo: installing mongoeco $MONGOECO_VERSION into $MONGO_VENV"
    "$py" -m venv "$MONGO_VENV" >&2
    "$MONGO_VENV/bin/pip" install -q "mongoeco==$MONGOECO_VERSION" "pymongo==$PYMONGO_VERSION" >&2
  fi
  if mongo_port_open; then
    log "mongo: already listening on $MONGO_HOST:$MONGO_PORT"
  else
    log "mongo: starting mongoeco on $MONGO_HOST:$MONGO_PORT (in-memory)"
    setsid nohup "$MONGO_VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/mongo/mongoeco-server.py" \
      "$MONGO_PORT" >"${TMPDIR:-/tmp}/surge-mongoeco.log" 2>&1 </dev/null &
    local deadline=$((SECONDS + MONGO_READY_TIMEOUT))
    until mongo_port_open; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        die "mongo: not listening after ${MONGO_READY_TIMEOUT}s (see ${TMPDIR:-/tmp}/surge-mongoeco.log)"
      fi
      sleep 0.2
    done
    log "mongo: ready"
  fi
  emit_export SURGE_TEST_MONGO_URL "mongodb://$MONGO_HOST:$MONGO_PORT/?directConnection=true"
}

# --------------------------------------------------------------------------

main() {
  if [ "$#" -eq 0 ]; then
    die "usage: $0 SERVICE... (known: postgres redis kafka mongo)"
  fi
  local svc
  for svc in "$@"; do
    case "$svc" in
    postgres | postgresql | pg) ensure_postgres ;;
    redis) ensure_redis ;;
    kafka) ensure_kafka ;;
    mongo) ensure_mongo ;;
    *) die "unknown service '$svc' (known: postgres redis kafka mongo)" ;;
    esac
  done
}

main "$@"
