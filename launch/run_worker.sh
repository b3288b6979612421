#!/usr/bin/env bash
# Starts this worker's process of a multi-host run in the background; its log goes to
# ~/lln_logs/<host>.log. Every worker runs the same command: JAX finds its peers on a TPU
# VM; the run resumes from its workdir if it was started before.
#
#   bash ~/lln_jax/launch/run_worker.sh gs://BUCKET/launch/NAME/run.args
set -euo pipefail

ARGS_FILE="${1:?give the gs:// file that holds the arguments of the run}"
LOG="${HOME}/lln_logs/$(hostname).log"
mkdir -p "${HOME}/lln_logs"
# The file holds shell words (quoted where needed); xargs undoes the quoting.
mapfile -t ARGS < <(gcloud storage cat "${ARGS_FILE}" | xargs printf '%s\n')
cd "${HOME}/lln_jax"
LLN_MULTIHOST=1 nohup "${HOME}/lln_venv/bin/python" -m lln_jax.main "${ARGS[@]}" \
  >> "${LOG}" 2>&1 < /dev/null &
echo "started on $(hostname): log ${LOG}"
