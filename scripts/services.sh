#!/usr/bin/env bash
# Makes sure Postgres, Redis and a Kafka-protocol broker (tansu) answer on this machine, starting them if needed, and prints the
# `export` lines for the test suites. Usage: eval "$(scripts/services.sh)"
#
# - Reuses services that already answer (the rust-svc machines start both before every session).
# - Otherwise installs redis-server from Debian's packages and starts a throw-away Postgres
#   cluster with trust auth in $RIDES_SVC_DIR (default /tmp/rides-services).
# - Respects RIDES_TEST_POSTGRES_URL / RIDES_TEST_REDIS_URL / RIDES_TEST_KAFKA_BROKERS when set.
set -euo pipefail

RUN=${RIDES_SVC_DIR:-/tmp/rides-services}
PG_HOST=127.0.0.1 PG_PORT=${RIDES_PG_PORT:-5432} REDIS_PORT=${RIDES_REDIS_PORT:-6379}
log() { echo "services: $*" >&2; }

if [ -z "${RIDES_TEST_REDIS_URL:-}" ]; then
  if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    if ! command -v redis-server >/dev/null; then
      log "installing redis-server (apt)"
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >&2
    fi
    mkdir -p "$RUN"
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --pidfile "$RUN/redis.pid" --dir "$RUN" --logfile "$RUN/redis.log" >&2
    for _ in $(seq 100); do redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  fi
  RIDES_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi

if [ -z "${RIDES_TEST_POSTGRES_URL:-}" ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then
    [ -n "$PGBIN" ] || { log "no Postgres server binaries found (apt-get install postgresql)"; exit 1; }
    install -d -o postgres -g postgres "$RUN/pg"
    if [ ! -f "$RUN/pg/data/PG_VERSION" ]; then
      su postgres -s /bin/sh -c "$PGBIN/initdb -D $RUN/pg/data --auth=trust --username=postgres -E UTF8 --locale=C.UTF-8 --no-sync" >&2
    fi
    log "starting postgres on $PG_HOST:$PG_PORT"
    su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $RUN/pg/data -l $RUN/pg/server.log -w -t 30 -o \"-c listen_addresses=$PG_HOST -p $PG_PORT -k $RUN/pg -c max_connections=300\" start" >&2
  fi
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -Atqc "select 1 from pg_database where datname='test'" | grep -q 1; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc 'create database test' >&2
  fi
  RIDES_TEST_POSTGRES_URL="postgres://postgres@$PG_HOST:$PG_PORT/test"
fi

if [ -z "${RIDES_TEST_KAFKA_BROKERS:-}" ]; then
  # A Kafka-protocol broker: tansu (crates.io), in-memory storage. Built once per machine
  # (about 6.5 minutes) into ~/.cargo/bin; no topic auto-creation, no transactions.
  KAFKA_PORT=${RIDES_KAFKA_PORT:-9092}
  TANSU_ROOT=${TANSU_ROOT:-$HOME/.cargo}
  TANSU="$TANSU_ROOT/bin/tansu"
  if ! "$TANSU" --help 2>/dev/null | grep -q 'dynostore'; then
    log "building the tansu broker once (cargo install tansu@0.6.0, about 6.5 minutes)"
    CARGO_PROFILE_DEV_DEBUG=0 CARGO_TARGET_DIR="$RUN/tansu-target" cargo install tansu@0.6.0 --locked --debug \
      --no-default-features --features dynostore --root "$TANSU_ROOT" -q >&2
    rm -rf "$RUN/tansu-target"
  fi
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
    mkdir -p "$RUN"
    log "starting tansu on 127.0.0.1:$KAFKA_PORT"
    setsid "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
      >"$RUN/tansu.log" 2>&1 </dev/null &
    echo $! >"$RUN/tansu.pid"
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done
  fi
  RIDES_TEST_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
fi

echo "export RIDES_TEST_POSTGRES_URL=$RIDES_TEST_POSTGRES_URL"
echo "export RIDES_TEST_KAFKA_BROKERS=$RIDES_TEST_KAFKA_BROKERS"
echo "export RIDES_TEST_REDIS_URL=$RIDES_TEST_REDIS_URL"
