#!/usr/bin/env bash
# Profile roomcast under one bench scenario with py-spy (installed into .venv if missing).
#   bash bench/profile.sh fanout|rooms|echo [seconds]
# roomcast runs pinned to core 0, the load generator and py-spy to core 1. Writes
# bench/results/profile-<scenario>.svg (flame graph) and .txt (top functions, self and total).
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:-fanout}
SECONDS_=${2:-10}
[ -x .venv/bin/py-spy ] || .venv/bin/python -m pip install -q py-spy
[ -d bench/node/node_modules ] || (cd bench/node && npm ci --no-audit --no-fund --loglevel=error)
mkdir -p bench/results
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
case "$SCENARIO" in
  fanout) CFG="\"mode\":\"pubsub\",\"rooms\":1,\"membersPerRoom\":1000,\"window\":16" ;;
  rooms)  CFG="\"mode\":\"pubsub\",\"rooms\":1000,\"membersPerRoom\":10,\"window\":2" ;;
  echo)   CFG="\"mode\":\"echo\",\"clients\":100,\"window\":4" ;;
  *) echo "scenario: fanout, rooms or echo" >&2; exit 2 ;;
esac
PORT=$PORT taskset -c 0 .venv/bin/python bench/contract_app.py > /dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 1.5
DURATION=$((SECONDS_ + 30))
taskset -c 1 node bench/node/loadgen.mjs \
  "{\"scenario\":\"$SCENARIO\",\"port\":$PORT,\"serverPid\":$SERVER,$CFG,\"warmupS\":1,\"durationS\":$DURATION,\"drainS\":10}" \
  > "bench/results/profile-$SCENARIO.loadgen.json" 2> /dev/null &
LOADGEN=$!
# Wait until the clients are connected and publishing, then sample.
for _ in $(seq 1 120); do grep -q '"connected"' "bench/results/profile-$SCENARIO.loadgen.json" 2>/dev/null && break; sleep 1; done
sleep 3
taskset -c 1 .venv/bin/py-spy record --pid "$SERVER" --duration "$SECONDS_" --rate 100 --native \
  --format raw -o "bench/results/profile-$SCENARIO.raw" > /dev/null
taskset -c 1 .venv/bin/py-spy record --pid "$SERVER" --duration "$SECONDS_" --rate 100 --native \
  -o "bench/results/profile-$SCENARIO.svg" > /dev/null
kill "$LOADGEN" 2>/dev/null || true
wait "$LOADGEN" 2>/dev/null || true
.venv/bin/python - "bench/results/profile-$SCENARIO.raw" <<'PY' | tee "bench/results/profile-$SCENARIO.txt"
import collections, sys
own, total, n = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    if not any("contract_app.py" in f for f in frames):
        continue  # other threads (trio's idle worker threads, waiting on a lock)
    n += int(count)
    own[frames[-1]] += int(count)
    for frame in set(frames):
        total[frame] += int(count)
print(f"{n} samples of the main thread")
print("-- self time")
for frame, c in own.most_common(20):
    print(f"{100 * c / n:5.1f}%  {frame}")
print("-- total time (self + callees)")
for frame, c in total.most_common(40):
    print(f"{100 * c / n:5.1f}%  {frame}")
PY
