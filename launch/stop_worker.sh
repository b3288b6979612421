#!/usr/bin/env bash
# Stops this worker's training process the way a preemption notice does: SIGTERM, after
# which the run saves at its next step and exits 75 (resumable). Waits for it to exit. A
# sweep is stopped as a whole: it passes the SIGTERM to each of its runs.
#
#   bash ~/lln_jax/launch/stop_worker.sh [SECONDS to wait, 600]
set -euo pipefail

WAIT_S="${1:-600}"
# Whoever started it: a queued resource's startup script runs it as root (/root/lln_venv),
# which the ssh user signals through sudo (passwordless on TPU VMs).
RUN="/lln_venv/bin/python -m lln_jax[.]"
pid="$(pgrep -f "${RUN}sweep" | head -n 1 || true)"
pid="${pid:-$(pgrep -f "${RUN}main" | head -n 1 || true)}"
if [[ -z "${pid}" ]]; then
  echo "stopped on $(hostname): no lln_jax.main was running"
  exit 0
fi
kill -TERM "${pid}" 2>/dev/null || sudo -n kill -TERM "${pid}"
exited() {  # Gone, or a zombie its parent has not reaped yet.
  local state
  state="$(ps -o stat= -p "${pid}" 2>/dev/null || true)"
  [[ -z "${state}" || "${state}" == Z* ]]
}
for ((waited = 0; waited < WAIT_S; waited++)); do
  if exited; then
    echo "stopped on $(hostname): pid ${pid} saved and exited"
    exit 0
  fi
  sleep 1
done
echo "stop_worker.sh: pid ${pid} on $(hostname) is still running after ${WAIT_S} s" >&2
exit 1
