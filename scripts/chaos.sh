#!/usr/bin/env bash
# A chaos run anyone can repeat (issue 12 §7): the multi-process fleet under a bounded load,
# with every process kind SIGKILLed at random moments and restarted, and Postgres and Redis
# restarted (hard: `pg_ctl -m immediate`, `kill -9` of a Redis with AOF). At the end the load
# stops, everything is started once more, and the run must converge: `rides verify` agrees (no
# ride lost or counted twice by any consumer) and the client's ledger is checked key by key
# (`rides ledger check`: every 201 exists exactly once, with exactly one charge). One summary
# line per scenario; exit 1 if any scenario fails.
#
# Usage: scripts/chaos.sh [--rides N] [--scenarios embedded,pg-redis,pg-only] [--bin PATH]
#                         [--concurrency C] [--kill-every-ms MS] [--keep]
#
# Scenarios:
#   embedded  SQLite + sled. sled is opened by one process only, so the fleet is `rides serve`
#             (API, streamer, consumers, replica sync, completer, reaper, trimmer) plus a second
#             `rides api` on the same SQLite store; both are killed and restarted.
#   pg-redis  A private Postgres cluster + a private Redis with AOF (appendfsync always). One
#             process per service: api, streamer, consumer distance-a, consumer distance-b,
#             completer, reaper, trimmer. Postgres and Redis are restarted hard too.
#   pg-only   The same Postgres as store and log (no streamer), restarted hard too.
#
# Needs: the `rides` binary built with postgres and redis (default: target/release/rides if
# present, else target/debug/rides), redis-server, and Postgres server binaries
# (/usr/lib/postgresql/*/bin; run as root, the cluster runs as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."

RIDES=20000
SCENARIOS="embedded,pg-redis,pg-only"
CONCURRENCY=16
KILL_EVERY_MS=1500
KEEP=0
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rides) RIDES=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --kill-every-ms) KILL_EVERY_MS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "chaos: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  if [ -x target/release/rides ]; then BIN=target/release/rides; else BIN=target/debug/rides; fi
fi
[ -x "$BIN" ] || { echo "chaos: no rides binary at $BIN (cargo build -p app --features postgres,redis)" >&2; exit 2; }
BIN=$(realpath "$BIN")

log() { echo "chaos: $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
# Reads a verdict (JSON) on stdin: agreed, nothing staged, no unfinished key, no lag.
settled() {
  python3 -c 'import json,sys
v = json.load(sys.stdin)
ok = (v.get("agree") and v.get("staged", 0) == 0 and v["truth"].get("unfinished_keys", 0) == 0
      and all(c.get("lag") == 0 for c in v.get("consumers", [])))
sys.exit(0 if ok else 1)' 2>/dev/null
}

ROOT=$(mktemp -d /tmp/rides-chaos.XXXXXX)
chmod 755 "$ROOT"
FAILED=0
declare -A CMD PID
KILLS=0 RESTARTS=0

start() { # name
  local name=$1
  # shellcheck disable=SC2086
  setsid $BIN ${CMD[$name]} >>"$DIR/$name.log" 2>&1 &
  PID[$name]=$!
}
kill9() { # name
  local name=$1
  kill -9 "${PID[$name]}" 2>/dev/null || true
  wait "${PID[$name]}" 2>/dev/null || true
}
stop_all() {
  for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
  for name in "${!PID[@]}"; do wait "${PID[$name]}" 2>/dev/null || true; done
  PID=()
}
wait_http() { # url
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$1/healthz/live" && return 0
    sleep 0.1
  done
  log "no API at $1 (logs in $DIR)"; KEEP=1; return 1
}

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
pg_start_cluster() { # dir port
  local d=$1 port=$2
  install -d -o postgres -g postgres "$d"
  su postgres -s /bin/sh -c "$PGBIN/initdb -D $d/data --auth=trust --username=postgres -E UTF8 --locale=C.UTF-8 --no-sync" >/dev/null
  pg_ctl_run "$d" "$port" start
  psql -h 127.0.0.1 -p "$port" -U postgres -qc 'create database chaos' >/dev/null
}
pg_ctl_run() { # dir port action [mode]
  local d=$1 port=$2 action=$3 mode=${4:-fast}
  su postgres -s /bin/sh -c "$PGBIN/pg_ctl -D $d/data -l $d/server.log -w -t 60 -m $mode -o \"-c listen_addresses=127.0.0.1 -p $port -k $d -c max_connections=300 -c fsync=on\" $action" >/dev/null
}
redis_start() { # dir port
  redis-server --port "$2" --bind 127.0.0.1 --appendonly yes --appendfsync always --save '' \
    --dir "$1" --daemonize yes --pidfile "$1/redis.pid" --logfile "$1/redis.log" >/dev/null
  for _ in $(seq 100); do redis-cli -p "$2" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.1; done
  log "redis on $2 did not start"; return 1
}

run_scenario() { # name
  local scenario=$1
  DIR="$ROOT/$scenario"; mkdir -p "$DIR"; chmod 755 "$DIR"
  local store logurl api_port api2_port sim_url sim2_url pg_port="" redis_port="" restartable=()
  KILLS=0; RESTARTS=0; PID=(); CMD=()
  # Short leases and lock timeout: a killed holder's work is taken over within seconds.
  local common="--lease-ttl-ms 2000 --lock-timeout-ms 3000 --completer-grace-ms 2000 --completer-last-run-ms 1000 --seed 11"
  case "$scenario" in
    embedded)
      store="sqlite://$DIR/rides.db"; logurl="sled://$DIR/log"
      api_port=$(free_port); api2_port=$(free_port)
      CMD[serve]="serve --store $store --log $logurl --listen 127.0.0.1:$api_port $common"
      # A second API on the same SQLite store (an API needs only its store; sled allows one
      # process, so it names no log).
      CMD[api2]="api --store $store --log memory:// --listen 127.0.0.1:$api2_port $common"
      sim_url="http://127.0.0.1:$api_port"; sim2_url="http://127.0.0.1:$api2_port"
      restartable=(serve api2)
      ;;
    pg-redis|pg-only)
      [ -n "$PGBIN" ] || { log "no Postgres server binaries: skipping $scenario"; return 0; }
      pg_port=$(free_port)
      pg_start_cluster "$DIR/pg" "$pg_port"
      store="postgres://postgres@127.0.0.1:$pg_port/chaos"
      if [ "$scenario" = pg-redis ]; then
        redis_port=$(free_port); mkdir -p "$DIR/redis"; redis_start "$DIR/redis" "$redis_port"
        logurl="redis://127.0.0.1:$redis_port/rides"
      else
        logurl="$store"
      fi
      api_port=$(free_port); api2_port=$(free_port)
      local base="--store $store --log $logurl $common"
      CMD[api]="api $base --listen 127.0.0.1:$api_port"
      CMD[api2]="api $base --listen 127.0.0.1:$api2_port"
      [ "$scenario" = pg-redis ] && CMD[streamer]="streamer $base"
      CMD[consumer-a]="consumer --name distance-a $base"
      CMD[consumer-b]="consumer --name distance-b $base"
      CMD[completer]="completer $base"
      CMD[reaper]="reaper $base"
      CMD[trimmer]="trimmer $base"
      sim_url="http://127.0.0.1:$api_port"; sim2_url="http://127.0.0.1:$api2_port"
      restartable=("${!CMD[@]}")
      $BIN migrate --store "$store" --log "$logurl" >/dev/null
      ;;
    *) log "unknown scenario $scenario"; return 1 ;;
  esac
  for name in "${!CMD[@]}"; do start "$name"; done
  wait_http "$sim_url"; wait_http "$sim2_url"

  log "$scenario: $RIDES rides through two APIs, concurrency $CONCURRENCY, a SIGKILL every ~${KILL_EVERY_MS} ms"
  local half=$((RIDES / 2))
  $BIN simulate --url "$sim_url" --rides "$half" --concurrency "$CONCURRENCY" --seed 11 \
    --ledger "$DIR/ledger-1.jsonl" >"$DIR/simulate-1.json" 2>"$DIR/simulate-1.log" &
  local sim=$!
  $BIN simulate --url "$sim2_url" --rides "$((RIDES - half))" --concurrency "$CONCURRENCY" --seed 12 \
    --ledger "$DIR/ledger-2.jsonl" >"$DIR/simulate-2.json" 2>"$DIR/simulate-2.log" &
  local sim2=$!
  local next_db_restart=$(( $(now_ms) + 20000 ))
  while kill -0 "$sim" 2>/dev/null || kill -0 "$sim2" 2>/dev/null; do
    sleep "$(awk -v m="$KILL_EVERY_MS" -v r="$RANDOM" 'BEGIN{srand(r); printf "%.3f", m*(0.5+rand())/1000}')"
    kill -0 "$sim" 2>/dev/null || kill -0 "$sim2" 2>/dev/null || break
    local victim=${restartable[$((RANDOM % ${#restartable[@]}))]}
    kill9 "$victim"; KILLS=$((KILLS + 1))
    sleep "0.$((RANDOM % 8))"
    start "$victim"
    if [ "$(now_ms)" -gt "$next_db_restart" ]; then
      next_db_restart=$(( $(now_ms) + 20000 ))
      if [ -n "$pg_port" ]; then
        pg_ctl_run "$DIR/pg" "$pg_port" restart immediate && RESTARTS=$((RESTARTS + 1))
      fi
      if [ -n "$redis_port" ]; then
        kill -9 "$(cat "$DIR/redis/redis.pid")" 2>/dev/null || true
        sleep 0.5
        redis_start "$DIR/redis" "$redis_port" && RESTARTS=$((RESTARTS + 1))
      fi
    fi
  done
  wait "$sim" || true
  wait "$sim2" || true
  cat "$DIR/ledger-1.jsonl" "$DIR/ledger-2.jsonl" >"$DIR/ledger.jsonl"
  # Everything up once more (a victim may have been killed last), then let it converge.
  for name in "${!CMD[@]}"; do kill -0 "${PID[$name]}" 2>/dev/null || start "$name"; done
  local verdict="" agreed=0 deadline=$(( $(now_ms) + 600000 ))
  while [ "$(now_ms)" -lt "$deadline" ]; do
    if [ "$scenario" = embedded ]; then
      # sled is held by `rides serve`: ask its /stats (the same verdict) while it runs.
      verdict=$(curl -sf "$sim_url/stats" || true)
    else
      verdict=$($BIN verify --store "$store" --log "$logurl" --json 2>/dev/null | tail -n 1 || true)
    fi
    if echo "$verdict" | settled; then agreed=1; break; fi
    sleep 1
  done
  stop_all
  if [ "$scenario" = embedded ]; then
    # The fleet is stopped: the verdict of record is `rides verify`'s.
    verdict=$($BIN verify --store "$store" --log "$logurl" --json 2>/dev/null | tail -n 1 || true)
    if echo "$verdict" | settled; then agreed=1; else agreed=0; fi
  fi
  local ledger
  ledger=$($BIN ledger check --store "$store" --ledger "$DIR/ledger.jsonl" --json 2>"$DIR/ledger.log" | tail -n 1 || true)
  local summary
  summary=$(python3 - "$scenario" "$agreed" "$KILLS" "$RESTARTS" "$verdict" "$ledger" "$DIR/simulate-1.json" "$DIR/simulate-2.json" <<'PY'
import json, sys
scenario, agreed, kills, restarts, verdict, ledger = sys.argv[1:7]
def load(s):
    try: return json.loads(s)
    except Exception: return {}
v, l = load(verdict), load(ledger)
s = {"rides": 0, "outcomes": {}}
for path in sys.argv[7:9]:
    try: r = json.load(open(path))
    except Exception: continue
    s["rides"] += r.get("rides", 0)
    for k, n in r.get("outcomes", {}).items(): s["outcomes"][k] = s["outcomes"].get(k, 0) + n
truth = v.get("truth", {}).get("rides", 0)
cons = v.get("consumers", [])
lost = max([truth - c.get("rides", 0) for c in cons] + [0]) + l.get("missing", 0)
twice = max([c.get("rides", 0) - truth for c in cons] + [0]) + l.get("shared_charges", 0)
ok = agreed == "1" and l.get("ok") is True
print(f"chaos {scenario}: {'PASS' if ok else 'FAIL'} rides={s.get('rides', 0)} "
      f"created={l.get('created', 0)} stored={truth} kills={kills} restarts={restarts} "
      f"lost={lost} counted_twice={twice} uncharged={l.get('uncharged', 0)} "
      f"outcomes={json.dumps(s.get('outcomes', {}), separators=(',', ':'))}")
sys.exit(0 if ok else 1)
PY
) && echo "$summary" || { echo "$summary"; FAILED=1; log "$scenario failed; logs in $DIR"; KEEP=1; }
  if [ -n "$pg_port" ]; then pg_ctl_run "$DIR/pg" "$pg_port" stop fast || true; fi
  if [ -n "$redis_port" ]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
}

IFS=, read -r -a list <<<"$SCENARIOS"
for s in "${list[@]}"; do run_scenario "$s"; done
if [ "$KEEP" = 0 ]; then rm -rf "$ROOT"; else log "data and logs kept in $ROOT"; fi
exit "$FAILED"
