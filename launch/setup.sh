#!/usr/bin/env bash
# Installs lln_jax on this machine, idempotently: a Python 3.11 venv in ~/lln_venv holding
# exactly the versions of launch/locks/PLATFORM.txt (the lock of the source's commit, so a
# resumed or re-created worker runs the libraries its run started with), and the package
# from ~/lln_jax. Run again after an update; it changes only what differs from the lock.
#
#   bash ~/lln_jax/launch/setup.sh tpu|gpu|cpu
set -euo pipefail

PLATFORM="${1:?give tpu, gpu or cpu}"
case "${PLATFORM}" in
  tpu|gpu|cpu) ;;
  *) echo "setup.sh: give tpu, gpu or cpu, not ${PLATFORM}" >&2; exit 2 ;;
esac
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="${SOURCE}/launch/locks/${PLATFORM}.txt"
VENV="${HOME}/lln_venv"
UV_VERSION=0.13.9  # uv itself is pinned too: it resolves nothing, it installs the lock.
UV="${HOME}/.local/bin/uv"

# The locks are compiled for CPython 3.11 on x86_64 Linux; the TPU images
# (tpu-ubuntu2204-base, v2-alpha-tpuv5*) and ubuntu-2204-lts ship 3.10, so uv brings a
# 3.11 where the machine has none.
install_uv() {
  [[ "$("${UV}" --version 2>/dev/null)" == "uv ${UV_VERSION}"* ]] && return 0
  python3 -m pip --version >/dev/null 2>&1 \
    || { sudo apt-get -qq update && sudo apt-get -qq install -y python3-pip; } || true
  python3 -m pip install --quiet --user "uv==${UV_VERSION}" 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages "uv==${UV_VERSION}" \
    || true
}
is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }

install_uv
if [[ ! -x "${UV}" ]]; then
  echo "setup.sh: lln_jax installs through uv ${UV_VERSION} (from PyPI), and pip could not" \
    "install it with $(python3 --version 2>&1 || echo 'no python3'): install uv" \
    "(pip install --user uv==${UV_VERSION}) and rerun" >&2
  exit 2
fi
if [[ ! -x "${VENV}/bin/python" ]] || ! is_311 "${VENV}/bin/python"; then
  rm -rf "${VENV}"
  if ! "${UV}" venv --quiet --python 3.11 "${VENV}"; then
    echo "setup.sh: lln_jax needs Python 3.11 and uv could not provide one (this machine" \
      "has $(python3 --version 2>&1 || echo 'no python3')): install python3.11 and rerun" >&2
    exit 2
  fi
fi
# `sync` makes the venv hold exactly the lock: what it lacks is installed, what differs
# or is not in it is removed. The package itself adds nothing (--no-deps).
"${UV}" pip sync --quiet --python "${VENV}/bin/python" "${LOCK}"
"${UV}" pip install --quiet --python "${VENV}/bin/python" --no-deps -e "${SOURCE}"
mkdir -p "${HOME}/lln_logs"
"${VENV}/bin/python" -c 'import jax; print("lln_jax set up:", jax.device_count(), "devices")'
