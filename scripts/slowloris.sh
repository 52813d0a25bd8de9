#!/usr/bin/env bash
# Slowloris against a real `rides api`: SLOW slow-header connections (a header line every
# second, never the end of the head) and IDLE idle connections (nothing sent), opened from as
# many `rides bench slowloris` processes as the descriptor limit needs, with a normal client
# (a new connection for every GET /healthz, every 100 ms) beside them. Prints each process's
# report and the server's connection-limit warnings.
#
#   scripts/slowloris.sh                      # 3000 slow + 20 000 idle, 20 s, header timeout 10 s
#   SLOW=300 IDLE=2000 RUN_SECONDS=8 TIMEOUT_MS=3000 scripts/slowloris.sh
#
# Knobs (environment): SLOW, IDLE, RUN_SECONDS, TIMEOUT_MS (the server's header and
# keep-alive timeouts), MAX_CONNECTIONS (the server's cap; default: from its descriptor
# limit), PORT, RIDES (the binary; default: a release build in $CARGO_TARGET_DIR or target/).
# The machine needs enough ephemeral ports for SLOW + IDLE connections (and, right after a
# run, the closed ones linger in TIME_WAIT for a minute).
set -euo pipefail
cd "$(dirname "$0")/.."

SLOW=${SLOW:-3000}
IDLE=${IDLE:-20000}
RUN_SECONDS=${RUN_SECONDS:-20}
TIMEOUT_MS=${TIMEOUT_MS:-10000}
PORT=${PORT:-5077}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
RIDES=${RIDES:-$TARGET_DIR/release/rides}

if [[ ! -x $RIDES ]]; then
    cargo build --release -p app
fi
# Every process may use its hard limit of descriptors.
ulimit -n "$(ulimit -Hn)"
# What one attacking process may hold (the rest: its runtime, stdio, the probe).
per_process=$(($(ulimit -n) - 256))

work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

cap_flag=()
if [[ -n ${MAX_CONNECTIONS:-} ]]; then cap_flag=(--max-connections "$MAX_CONNECTIONS"); fi
RUST_LOG=${RUST_LOG:-info} "$RIDES" api --store memory:// --log memory:// \
    --listen "127.0.0.1:$PORT" --header-timeout-ms "$TIMEOUT_MS" \
    --keepalive-timeout-ms "$TIMEOUT_MS" "${cap_flag[@]}" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
grep -m1 "API listening" "$work/server.log" || { cat "$work/server.log"; exit 1; }

# Split the connections over processes of at most $per_process each; the first also probes.
pids=()
i=0
slow_left=$SLOW
idle_left=$IDLE
while ((slow_left + idle_left > 0)); do
    room=$per_process
    slow=$((slow_left < room ? slow_left : room))
    room=$((room - slow))
    idle=$((idle_left < room ? idle_left : room))
    slow_left=$((slow_left - slow))
    idle_left=$((idle_left - idle))
    probe=(--no-probe)
    if ((i == 0)); then probe=(--probe-ms 100); fi
    "$RIDES" bench slowloris --target "127.0.0.1:$PORT" --slow "$slow" --idle "$idle" \
        --seconds "$RUN_SECONDS" --timeout-ms "$TIMEOUT_MS" "${probe[@]}" --json \
        >"$work/attack-$i.json" 2>"$work/attack-$i.txt" &
    pids+=($!)
    i=$((i + 1))
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

for ((j = 0; j < i; j++)); do
    echo "--- process $j"
    grep -v '^bench:' "$work/attack-$j.txt" || true
done
echo "--- server"
grep -c "connection limit reached" "$work/server.log" | sed 's/^/connection-limit warnings logged: /'
grep -m3 "connection limit reached" "$work/server.log" || true
exit $status
