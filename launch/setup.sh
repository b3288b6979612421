#!/usr/bin/env bash
# Installs lln_jax on this machine, idempotently: a venv in ~/lln_venv, JAX for the
# platform, the package from ~/lln_jax. Run again after an update; it only reinstalls.
#
#   bash ~/lln_jax/launch/setup.sh tpu|gpu|cpu
set -euo pipefail

PLATFORM="${1:?give tpu, gpu or cpu}"
VENV="${HOME}/lln_venv"
case "${PLATFORM}" in
  tpu) JAX='jax[tpu]' ;;
  gpu) JAX='jax[cuda12]' ;;
  cpu) JAX='jax' ;;
  *) echo "setup.sh: give tpu, gpu or cpu, not ${PLATFORM}" >&2; exit 2 ;;
esac
if [[ ! -x "${VENV}/bin/python" ]]; then
  sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv
  python3 -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet -U "${JAX}"
"${VENV}/bin/python" -m pip install --quiet -e "${HOME}/lln_jax"
mkdir -p "${HOME}/lln_logs"
"${VENV}/bin/python" -c 'import jax; print("lln_jax set up:", jax.device_count(), "devices")'
