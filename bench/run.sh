#!/usr/bin/env bash
# roomcast's benchmark, one command: sets up what it needs, then runs every scenario for
# roomcast, Node socket.io 4.8 and python-socketio, prints the table and draws its charts
# (see docs/benchmarks.md).
#   bash bench/run.sh            # full: medians of 3 runs per scenario per server (~20 min)
#   bash bench/run.sh --quick    # short runs, one each (~4 min)
# Other options: --servers roomcast,node,psio --scenarios fanout,rooms,echo,idle,idle-max,heartbeat
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# roomcast as a deployment would run it: with the speedups extra (msgspec).
if ! .venv/bin/python -c "import roomcast.engine, msgspec" 2>/dev/null; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install -q -e '.[speedups]' --config-settings editable_mode=strict
fi
exec .venv/bin/python bench/run.py "$@"
