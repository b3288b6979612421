#!/usr/bin/env bash
# Starts this worker's process of a multi-host run (or, when the arguments begin with
# `lln_jax.sweep`, its sweep: one run per chip of this worker) in the background; its log goes to
# $LLN_LOG_DIR/<host>.log [~/lln_logs], copied every minute and at the end next to the
# arguments (gs://BUCKET/launch/NAME/logs/<host>.log), so that it outlives the VM. Every
# worker runs the same command: JAX finds its peers on a TPU VM; the run resumes from its
# workdir if it was started before.
#
#   bash ~/lln_jax/launch/run_worker.sh gs://BUCKET/launch/NAME/run.args
set -euo pipefail

ARGS_FILE="${1:?give the gs:// file that holds the arguments of the run}"
LOG_DIR="${LLN_LOG_DIR:-${HOME}/lln_logs}"
LOG="${LOG_DIR}/$(hostname).log"
LOG_COPY="${ARGS_FILE%/*}/logs/$(hostname).log"
mkdir -p "${LOG_DIR}"
# One training process (or sweep) per worker: a second would fight the first for the chips.
# Whoever started it: a queued resource's startup script runs it as root (/root/lln_venv).
PYTHON="${HOME}/lln_venv/bin/python"
if running="$(pgrep -f "/lln_venv/bin/python -m lln_jax[.](main|sweep)" | head -n 1)" \
    && [[ -n "${running}" ]]; then
  echo "run_worker.sh: $(hostname) already runs lln_jax (pid ${running}); stop it first" >&2
  exit 2
fi
# The file holds shell words (quoted where needed); xargs undoes the quoting. Read it first,
# so that a file that cannot be read fails here instead of starting python with no argument.
if ! words="$(gcloud storage cat "${ARGS_FILE}")" || [[ -z "${words}" ]]; then
  echo "run_worker.sh: cannot read the run's arguments from ${ARGS_FILE}" >&2
  exit 2
fi
mapfile -t ARGS < <(xargs printf '%s\n' <<< "${words}")
cd "${HOME}/lln_jax"
if [[ "${ARGS[0]}" == lln_jax.sweep ]]; then  # Each of its runs is one chip's: no peers.
  nohup "${PYTHON}" -m "${ARGS[@]}" >> "${LOG}" 2>&1 < /dev/null &
else
  LLN_MULTIHOST=1 nohup "${PYTHON}" -m lln_jax.main "${ARGS[@]}" >> "${LOG}" 2>&1 < /dev/null &
fi
run=$!
copy_log() { gcloud storage cp --quiet "${LOG}" "${LOG_COPY}" >/dev/null 2>&1 || true; }
# The copier outlives this script (and the ssh that ran it) as the run does.
(
  trap '' HUP
  while kill -0 "${run}" 2>/dev/null; do
    copy_log
    sleep "${LLN_LOG_COPY_S:-60}"
  done
  copy_log
) < /dev/null > /dev/null 2>&1 &
echo "started on $(hostname): log ${LOG}, copied to ${LOG_COPY}"
