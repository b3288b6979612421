#!/usr/bin/env bash
# Startup script of a queued resource's workers: at every boot (the first one, and after a
# re-creation following a preemption) fetch the source, set up, and start the run, which
# resumes from its gs:// workdir. Reads `lln-bucket` and `lln-name` from the metadata.
set -euo pipefail

metadata() {
  curl -sf -H 'Metadata-Flavor: Google' \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}
BUCKET="$(metadata lln-bucket)"
NAME="$(metadata lln-name)"
export HOME=/root
# The logs go where `tpu.sh status` (a user's ssh, not root) reads them, and to the bucket.
export LLN_LOG_DIR=/var/log/lln_jax
mkdir -p "${LLN_LOG_DIR}" && chmod 755 "${LLN_LOG_DIR}"
exec >> "${LLN_LOG_DIR}/startup-$(hostname).log" 2>&1
# The source recorded for the run at its creation: a re-created VM runs the same commit.
gcloud storage cp "$(gcloud storage cat "${BUCKET}/launch/${NAME}/source")" "${HOME}/lln_jax.tar.gz"
rm -rf "${HOME}/lln_jax" && mkdir "${HOME}/lln_jax"
tar -xzf "${HOME}/lln_jax.tar.gz" -C "${HOME}/lln_jax"
bash "${HOME}/lln_jax/launch/setup.sh" tpu
# A run stopped with `tpu.sh stop` stays stopped across boots until `tpu.sh run`.
if [[ "$(gcloud storage cat "${BUCKET}/launch/${NAME}/state" 2>/dev/null || true)" == stopped ]]; then
  echo "the run was stopped with tpu.sh stop: not restarting it (tpu.sh run resumes it)"
  exit 0
fi
bash "${HOME}/lln_jax/launch/run_worker.sh" "${BUCKET}/launch/${NAME}/run.args"
