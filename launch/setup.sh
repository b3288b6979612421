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
# jax 0.10 and lln_jax need Python >= 3.11; the TPU images (tpu-ubuntu2204-base,
# v2-alpha-tpuv5*) and ubuntu-2204-lts ship 3.10. Then uv, from PyPI, provides a 3.11.
at_least_311() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
make_venv() {
  if at_least_311 python3; then
    sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv
    python3 -m venv "${VENV}"
    return
  fi
  local uv="${HOME}/.local/bin/uv"
  if [[ ! -x "${uv}" ]]; then
    python3 -m pip --version >/dev/null 2>&1 \
      || { sudo apt-get -qq update && sudo apt-get -qq install -y python3-pip; } || true
    python3 -m pip install --quiet --user uv || true
  fi
  if [[ -x "${uv}" ]] && "${uv}" venv --quiet --seed --python 3.11 "${VENV}"; then
    return
  fi
  echo "setup.sh: lln_jax needs Python >= 3.11 and this machine has" \
    "$(python3 --version 2>&1 || echo 'no python3'); uv could not install one:" \
    "install python3.11 (e.g. from the deadsnakes PPA) and rerun" >&2
  exit 2
}
if [[ ! -x "${VENV}/bin/python" ]] || ! at_least_311 "${VENV}/bin/python"; then
  rm -rf "${VENV}"
  make_venv
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet -U "${JAX}"
"${VENV}/bin/python" -m pip install --quiet -e "${HOME}/lln_jax"
mkdir -p "${HOME}/lln_logs"
"${VENV}/bin/python" -c 'import jax; print("lln_jax set up:", jax.device_count(), "devices")'
