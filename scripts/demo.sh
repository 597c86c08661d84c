#!/usr/bin/env bash
# README command #1: the whole story on one machine, loopback only.
#
#   controller (SQLite) -> local Ray head -> `ray job submit` examples/train_ddp.py (2 DDP ranks)
#   -> `lrctl override demo 'lr /= 2'` mid-run -> every rank switches at the same step
#   -> history, /metrics, per-rank LRs, and the LR curve as a PNG.
#
# Everything it starts is stopped on exit. Output goes to out/demo/ (LRCTL_DEMO_OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/setup.sh
venv=${LRCTL_VENV:-.venv}
case $venv in /*) ;; *) venv=$root/$venv ;; esac
export PATH="$venv/bin:$PATH"

# Local, loopback-only Ray: auth explicitly off for this dev cluster (Ray 2.60 would turn
# token auth on), and keep Ray from swapping 127.0.0.1 for the machine's address.
export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_DISABLE_USAGE_STATS=1
export RAY_TRAIN_ENABLE_PRINT_PATCH=0

out=${LRCTL_DEMO_OUT:-$root/out/demo}
rm -rf "$out" && mkdir -p "$out"
read -r grpc_port metrics_port gcs_port dash_port client_port < <(python - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
export LRCTL_ADDRESS=127.0.0.1:$grpc_port
ray_tmp=$(mktemp -d /tmp/lrctl-ray.XXXXXX)  # short: Ray's unix sockets live here
controller_pid="" ray_pid=""
# Only what this script started is stopped. The Ray head runs as `ray start --block` in a
# process group of its own: SIGTERM makes it stop the processes it started, and whatever is
# left of its group gets SIGKILL. Never `ray stop`: it stops every Ray process on the machine.
stop_ray() {
  [ -n "$ray_pid" ] || return 0
  kill -TERM "$ray_pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 -- "-$ray_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$ray_pid" 2>/dev/null || true
  wait "$ray_pid" 2>/dev/null || true
}
cleanup() {
  echo "== stopping everything the demo started"
  stop_ray
  if [ -n "$controller_pid" ]; then kill "$controller_pid" 2>/dev/null || true; wait "$controller_pid" 2>/dev/null || true; fi
  rm -rf "$ray_tmp"
}
trap cleanup EXIT

echo "== 1. the controller: lrctl serve (SQLite at $out/lrctl.db)"
lrctl serve --host 127.0.0.1 --port "$grpc_port" --metrics-port "$metrics_port" \
  --db "$out/lrctl.db" >"$out/controller.log" 2>&1 &
controller_pid=$!
for _ in $(seq 100); do lrctl job list >/dev/null 2>&1 && break; sleep 0.1; done
lrctl job list >/dev/null

echo "== 2. a local Ray head on 127.0.0.1"
# No drain on SIGTERM (Ray waits up to 30 s for Serve proxies there; the demo has none).
RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 setsid ray start --head --block \
  --node-ip-address 127.0.0.1 --port "$gcs_port" --dashboard-host 127.0.0.1 \
  --dashboard-port "$dash_port" --ray-client-server-port "$client_port" --num-cpus 2 \
  --disable-usage-stats --temp-dir "$ray_tmp" >"$out/ray-start.log" 2>&1 &
ray_pid=$!
own_group() { [ "$(ps -o pgid= -p "$ray_pid" | tr -d ' ')" = "$ray_pid" ]; }
for _ in $(seq 50); do own_group && break; sleep 0.1; done
own_group || { echo "the Ray head did not get a process group of its own"; exit 1; }
export RAY_ADDRESS=http://127.0.0.1:$dash_port
python - "$ray_pid" <<'EOF'
import os, sys, time, urllib.request
deadline = time.monotonic() + 120
while time.monotonic() < deadline:  # the job API answers once the dashboard is up
    try:
        os.kill(int(sys.argv[1]), 0)
    except ProcessLookupError:
        sys.exit("ray start exited; see ray-start.log")
    try:
        urllib.request.urlopen(os.environ["RAY_ADDRESS"] + "/api/version", timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit("Ray's job API did not answer within 120 s; see ray-start.log")
EOF

echo "== 3. ray job submit examples/train_ddp.py (2 DDP ranks, gloo on CPU)"
runtime_env=$(printf '{"env_vars": {"LRCTL_ADDRESS": "%s", "LRCTL_JOB": "demo"}}' "$LRCTL_ADDRESS")
job_id=$(ray job submit --no-wait --working-dir . --runtime-env-json "$runtime_env" \
  -- python examples/train_ddp.py --steps 300 --step-sleep 0.05 --lr-log "$out/lr" \
     --storage "$out/ray" 2>&1 | sed -n 's/.*Job .\(raysubmit_[A-Za-z0-9]*\). submitted successfully.*/\1/p')
[ -n "$job_id" ] || { echo "job submission failed"; exit 1; }
echo "   submitted $job_id; following its logs"
ray job logs --follow "$job_id" 2>/dev/null | grep --line-buffered -v '^$' &
logs_pid=$!

echo "== 4. waiting for step 100, then: lrctl override demo 'lr /= 2'"
python - <<'EOF'
import sys, time
from lrctl.client import Client, ClientError
with Client() as client:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if client.get_job("demo").step >= 100:
                sys.exit(0)
        except ClientError as exc:
            if exc.code != "NOT_FOUND":
                raise
        time.sleep(0.2)
sys.exit("the training job never reached step 100")
EOF
lrctl override demo 'lr /= 2' --reason "demo: loss spike"

status=$(python - "$job_id" <<'EOF'
import os, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
deadline = time.monotonic() + 300
while (status := client.get_job_status(sys.argv[1])) not in (
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
    time.sleep(0.5)
print(status.value)
EOF
)
wait "$logs_pid" 2>/dev/null || true
[ "$status" = SUCCEEDED ] || { echo "the training job ended $status"; exit 1; }

echo "== 5. what happened"
lrctl history demo
lrctl job get demo
echo "-- Prometheus exposition: http://127.0.0.1:$metrics_port/metrics"
python -c "import urllib.request,sys; sys.stdout.write(''.join(l for l in urllib.request.urlopen('http://127.0.0.1:$metrics_port/metrics').read().decode().splitlines(True) if l.startswith('lrctl_') and 'demo' in l))"
python scripts/demo_report.py --lr-dir "$out/lr" --job demo --out "$out/lr_curve.png"
lrctl job finish demo >/dev/null
echo "== done: LR curve in $out/lr_curve.png, logs in $out/"
