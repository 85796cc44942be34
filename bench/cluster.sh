#!/usr/bin/env bash
# bench/scale.py on a Dask cluster started as separate processes, as on a real cluster:
# one `dask scheduler` and WORKERS `dask worker` processes (one thread each, 4 GiB each,
# ITK single-threaded as the local runner sets it), all on loopback. Arguments after the
# script go to bench/scale.py (for example --cases 20, or --out DIR --keep to reuse data).
#
#     bench/cluster.sh --cases 20                 # WORKERS=2 by default
#     WORKERS=4 PORT=8790 bench/cluster.sh --cases 282 --out /scratch/scale --keep   # default PORT: a free one
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-2}
# a free port unless PORT is given; a port already in use is refused, so the bench never
# joins (and sends its work to) a scheduler that is already running there
PORT=$("$PY" - "${PORT:-0}" <<'EOF'
import socket, sys
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError as err:
        sys.exit(f"bench/cluster.sh: port {sys.argv[1]} on 127.0.0.1 is in use ({err.strerror}); set PORT to a free one")
    print(s.getsockname()[1])
EOF
)
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/bench_cluster_XXXXXX")
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$LOGS"; }
trap stop EXIT

"$PY" -m distributed.cli.dask_scheduler --host 127.0.0.1 --port "$PORT" --dashboard-address 127.0.0.1:0 \
    >"$LOGS/scheduler.log" 2>&1 &
pids+=($!)
for i in $(seq "$WORKERS"); do
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 OMP_NUM_THREADS=1 \
        "$PY" -m distributed.cli.dask_worker "tcp://127.0.0.1:$PORT" --nthreads 1 --nworkers 1 \
        --memory-limit 4GiB --name "worker-$i" --no-dashboard >"$LOGS/worker-$i.log" 2>&1 &
    pids+=($!)
done
"$PY" - "$PORT" "$WORKERS" <<'EOF'
import sys, time
from distributed import Client
port, n = sys.argv[1], int(sys.argv[2])
with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
    client.wait_for_workers(n, timeout=120)
    print(f"cluster up: scheduler tcp://127.0.0.1:{port}, {n} worker processes (1 thread each)", flush=True)
EOF
"$PY" bench/scale.py --scheduler "tcp://127.0.0.1:$PORT" "$@"
