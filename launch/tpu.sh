#!/usr/bin/env bash
# lln_jax on Cloud TPU VMs: create, set up, prepare data, run, watch, recover, delete.
#
#   launch/tpu.sh COMMAND [--dry-run] [options] [-- lln_jax.main flags]
#
# Commands:
#   create   a TPU VM (or, with --queued, a queued resource whose startup script sets up
#            and runs by itself), and upload this checkout to the bucket
#   setup    install the project on every worker (idempotent: venv, jax[tpu], the package)
#   prepare  on a CPU VM with a large disk: download a data set, prepare it into
#            gs://BUCKET/tfds (with --image_size, also pre-resized), convert the ImageNet
#            weights to gs://BUCKET/weights; the VM works detached and deletes itself when
#            done (NUS-WIDE: upload its files to gs://BUCKET/manual/nuswide/ first)
#   run      start --config on every worker (LLN_MULTIHOST=1), logs in ~/lln_logs/ (with
#            --queued: the startup script's install in /root, through sudo; logs in
#            /var/log/lln_jax/)
#   sweep    start --sweep on every worker (`python -m lln_jax.sweep`): each worker runs
#            one cell per chip of its own, the workers sharing the cells through their
#            leases, into --runs; the report is written there at the end
#   status   the TPU's state and the last lines of every worker's log
#   stop     SIGTERM to the run on every worker (it saves and exits 75, as on a preemption),
#            and mark it stopped so that a queued resource's next boot does not restart it;
#            `run` starts it again, resuming
#   recover  after a preemption: delete (unless already gone), re-create, set up and re-run
#            the same command (the one recorded by run, sweep or create --queued; or the
#            --config or --sweep given); the run resumes from its gs:// workdir. A TPU that is READY
#            (ACTIVE) is refused: nothing to recover
#   delete   delete the TPU VM or the queued resource
#
# Options (defaults in brackets):
#   --name NAME [lln]            --zone ZONE [us-central2-b for v4; required otherwise]
#   --accelerator TYPE [v4-8]    (v4-N, v5litepod-N, v5p-N, v6e-N)
#   --version RUNTIME            [by the accelerator: v4 tpu-ubuntu2204-base, v5e
#                                v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e]
#   --pricing spot|on-demand|reserved [on-demand]
#   --queued                     use a queued resource (create, recover, status, delete)
#   --bucket gs://BUCKET         where the source, data, weights and runs go (required)
#   --config ARG                 e.g. configs/coco.py:scheme=ll_r (run, create --queued)
#   --sweep FILE                 e.g. configs/sweeps/paper_table.py (sweep, create --queued)
#   --runs gs://...              the sweep's workdirs [BUCKET/sweeps/NAME]
#   --workdir gs://...           [BUCKET/runs/NAME]
#   --dataset NAME --image_size N   (prepare)
#   --no-plan                    create without compiling the run's step for the slice
#                                first (`python -m lln_jax.plan`, with $LLN_PYTHON [python3])
#   --dry-run                    print the exact commands instead of running them
#   -- FLAGS...                  more flags of lln_jax.main (run, sweep, create --queued, recover),
#                                e.g. -- --config.data.storage=jpeg95
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() { echo "tpu.sh: $*" >&2; exit 2; }

COMMAND="${1:-}"
[[ -z "${COMMAND}" || "${COMMAND}" == -h || "${COMMAND}" == --help ]] && usage 0
shift
NAME=lln ZONE="" ACCELERATOR="" VERSION="" PRICING=""
QUEUED=0 BUCKET="" CONFIG="" SWEEP="" RUNS="" WORKDIR="" DATASET="" IMAGE_SIZE="" DRY_RUN=0 PLAN=1 RECOVERING=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --queued|--dry-run|--no-plan|--) ;;
    --*) [[ $# -ge 2 && "$2" != --* ]] || die "$1 needs a value" ;;
  esac
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --pricing) PRICING="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --bucket) BUCKET="${2%/}"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --sweep) SWEEP="$2"; shift 2 ;;
    --runs) RUNS="${2%/}"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --image_size) IMAGE_SIZE="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-plan) PLAN=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
for word in ${EXTRA[@]+"${EXTRA[@]}"}; do
  [[ "${word}" != --dry-run ]] || die "--dry-run goes before --, not among lln_jax.main's flags"
done
# What was given, apart from the defaults: recover takes the rest from the slice's record.
GIVEN_ACCELERATOR="${ACCELERATOR}" GIVEN_VERSION="${VERSION}" GIVEN_PRICING="${PRICING}"
GIVEN_ZONE="${ZONE}"

# The runtime image and the default zone follow the accelerator's generation.
resolve_slice() {
  ACCELERATOR="${ACCELERATOR:-v4-8}" PRICING="${PRICING:-on-demand}"
  case "${ACCELERATOR}" in
    v4-*) DEFAULT_VERSION=tpu-ubuntu2204-base DEFAULT_ZONE=us-central2-b ;;
    v5litepod-*) DEFAULT_VERSION=v2-alpha-tpuv5-lite DEFAULT_ZONE="" ;;
    v5p-*) DEFAULT_VERSION=v2-alpha-tpuv5 DEFAULT_ZONE="" ;;
    v6e-*) DEFAULT_VERSION=v2-alpha-tpuv6e DEFAULT_ZONE="" ;;
    *) die "--accelerator ${ACCELERATOR}: give v4-N, v5litepod-N, v5p-N or v6e-N" ;;
  esac
  VERSION="${GIVEN_VERSION:-${VERSION:-${DEFAULT_VERSION}}}"
  ZONE="${GIVEN_ZONE:-${DEFAULT_ZONE}}"
  [[ -n "${ZONE}" ]] || die "--accelerator ${ACCELERATOR} needs --zone (a zone that offers it;" \
    "us-central2-b, v4's default, does not)"
  case "${PRICING}" in
    spot|on-demand|reserved) ;;
    *) die "--pricing must be spot, on-demand or reserved, not ${PRICING}" ;;
  esac
}
resolve_slice
WORKDIR="${WORKDIR:-${BUCKET}/runs/${NAME}}"
RUNS="${RUNS:-${BUCKET}/sweeps/${NAME}}"
[[ -z "${CONFIG}" || -z "${SWEEP}" ]] || die "give --config (one run) or --sweep, not both"
SOURCE=""  # gs://BUCKET/launch/source/COMMIT.tar.gz, set when uploaded
SOURCE_RECORD="${BUCKET}/launch/${NAME}/source"  # Names the source this run's workers install
RUN_ARGS="${BUCKET}/launch/${NAME}/run.args"
RUN_STATE="${BUCKET}/launch/${NAME}/state"  # "running" or "stopped", read at each boot
SLICE="${BUCKET}/launch/${NAME}/slice"  # The accelerator, runtime and pricing it was created with

# (tr, not ${var,,}, and ${a[@]+"${a[@]}"} for a possibly empty array: macOS's bash 3.2.)
need() {
  local var
  for var in "$@"; do
    [[ -n "${!var}" ]] || die "${COMMAND} needs --$(printf '%s' "${var}" | tr '[:upper:]' '[:lower:]')"
  done
}

# One shell word, single-quoted where it needs quoting.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command as one copy-pasteable line; runs it unless --dry-run.
step() {
  printf '+'
  for word in "$@"; do printf ' '; quote "${word}"; done
  printf '\n'
  if [[ "${DRY_RUN}" == 0 ]]; then "$@"; fi
}

pricing_flags() {
  case "${PRICING}" in
    spot) echo --spot ;;
    reserved) echo --reserved ;;
  esac
}

# The command line of one worker: the same on every worker (JAX finds its peers; a
# sweep's workers share its cells). A sweep's begins with the module's name.
main_args() {
  local word head=(--config="${CONFIG}" --workdir="${WORKDIR}")
  if [[ -n "${SWEEP}" ]]; then head=(lln_jax.sweep --sweep="${SWEEP}" --runs="${RUNS}" --); fi
  for word in "${head[@]}" --config.data.data_dir="${BUCKET}/tfds" \
      --config.init_from="${BUCKET}/weights/resnet50_imagenet1k_v1.npz" ${EXTRA[@]+"${EXTRA[@]}"}; do
    quote "${word}"; printf ' '
  done
}

# The checkout's commit, uploaded under its own name: a second experiment in the bucket
# cannot replace this one's code, and the commit's launch/locks/ pin what the workers
# install. Edits not committed would be left out silently: they are refused.
upload_source() {
  local root commit
  root="$(cd "$(dirname "$0")/.." && pwd)"
  [[ -z "$(git -C "${root}" status --porcelain --untracked-files=no)" ]] \
    || die "${root} has uncommitted changes, which the workers would not get: commit them first"
  commit="$(git -C "${root}" rev-parse HEAD)"
  SOURCE="${BUCKET}/launch/source/${commit}.tar.gz"
  echo "+ git archive --format=tar.gz ${commit} | gcloud storage cp - ${SOURCE}"
  if [[ "${DRY_RUN}" == 0 ]]; then
    git -C "${root}" archive --format=tar.gz "${commit}" | gcloud storage cp - "${SOURCE}"
  fi
}

# The source the run's workers install, now and at every re-creation (recover keeps it).
record_source() {
  echo "+ echo ${SOURCE} | gcloud storage cp - ${SOURCE_RECORD}"
  if [[ "${DRY_RUN}" == 0 ]]; then echo "${SOURCE}" | gcloud storage cp - "${SOURCE_RECORD}"; fi
}

# A worker's shell words that replace ~/lln_jax with the source recorded for the run. The
# archive goes to the home too: a /tmp file is shared with the machine's other users.
fetch_source() {
  echo "gcloud storage cp \"\$(gcloud storage cat ${SOURCE_RECORD})\" ~/lln_jax.tar.gz \
&& rm -rf ~/lln_jax && mkdir ~/lln_jax && tar -xzf ~/lln_jax.tar.gz -C ~/lln_jax"
}

upload_run_args() {
  echo "+ echo $(main_args)| gcloud storage cp - ${RUN_ARGS}"
  if [[ "${DRY_RUN}" == 0 ]]; then main_args | gcloud storage cp - "${RUN_ARGS}"; fi
}

on_workers() {
  step gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

# Before paying for the slice: the run's train step compiled for its chips, here (exit 2
# when the batch does not fit or divide). Only the config's overrides among the flags apply.
plan_slice() {
  [[ -n "${CONFIG}" && "${PLAN}" == 1 ]] || return 0
  local overrides=()
  for word in ${EXTRA[@]+"${EXTRA[@]}"}; do
    [[ "${word}" != --config.* ]] || overrides+=("${word}")
  done
  step "${LLN_PYTHON:-python3}" -m lln_jax.plan --config="${CONFIG}" \
    --topology="${ACCELERATOR}" ${overrides[@]+"${overrides[@]}"}
}

# What the slice was created with, so that recover re-creates the same one.
record_slice() {
  local words="--accelerator ${ACCELERATOR} --version ${VERSION} --pricing ${PRICING}"
  echo "+ echo ${words} | gcloud storage cp - ${SLICE}"
  if [[ "${DRY_RUN}" == 0 ]]; then echo "${words}" | gcloud storage cp - "${SLICE}"; fi
}

# The options recover was not given, from the slice's record (a dry run cannot read it:
# it shows the defaults).
read_slice() {
  echo "+ gcloud storage cat ${SLICE}"
  [[ "${DRY_RUN}" == 0 ]] || return 0
  local recorded=() option
  read -r -a recorded <<< "$(gcloud storage cat "${SLICE}" 2>/dev/null || true)"
  VERSION="${GIVEN_VERSION}"  # The image follows the accelerator unless given or recorded.
  set -- ${recorded[@]+"${recorded[@]}"}
  while [[ $# -ge 2 ]]; do
    option="$1"; shift
    case "${option}" in
      --accelerator) ACCELERATOR="${GIVEN_ACCELERATOR:-$1}" ;;
      --version) [[ -n "${GIVEN_ACCELERATOR}" ]] || VERSION="${GIVEN_VERSION:-$1}" ;;
      --pricing) PRICING="${GIVEN_PRICING:-$1}" ;;
    esac
    shift
  done
  resolve_slice
}

create() {
  need BUCKET
  plan_slice
  if [[ "${RECOVERING}" == 0 ]]; then  # A recovered run keeps the source it started with.
    upload_source
    record_source
  fi
  record_slice
  local flags
  read -r -a flags <<< "$(pricing_flags)"
  if [[ "${QUEUED}" == 1 ]]; then
    [[ -n "${CONFIG}${SWEEP}" ]] || die "create --queued needs --config (or --sweep)"
    upload_run_args
    mark_run running  # Its startup script starts the run at every boot.
    step gcloud compute tpus queued-resources create "${NAME}" --node-id="${NAME}" \
      --zone="${ZONE}" --accelerator-type="${ACCELERATOR}" --runtime-version="${VERSION}" \
      ${flags[@]+"${flags[@]}"} --metadata-from-file=startup-script="$(dirname "$0")/startup.sh" \
      --metadata=lln-bucket="${BUCKET}",lln-name="${NAME}"
  else
    step gcloud compute tpus tpu-vm create "${NAME}" --zone="${ZONE}" \
      --accelerator-type="${ACCELERATOR}" --version="${VERSION}" ${flags[@]+"${flags[@]}"}
  fi
}

setup() {
  need BUCKET
  on_workers "$(fetch_source) && bash ~/lln_jax/launch/setup.sh tpu"
}

prepare() {
  need BUCKET DATASET
  local vm="${NAME}-prepare"
  upload_source
  step gcloud compute instances create "${vm}" --zone="${ZONE}" --machine-type=n2-standard-16 \
    --boot-disk-size=1000GB --image-family=ubuntu-2204-lts --image-project=ubuntu-os-cloud \
    --scopes=cloud-platform
  # The VM works detached from this ssh and deletes itself when done: hours of download
  # survive a dropped connection, and a failure leaves nothing billing.
  trap 'echo "tpu.sh: the prepare VM ${vm} may still run (and bill): gcloud compute instances delete ${vm} --zone=${ZONE}" >&2' ERR
  step gcloud compute ssh "${vm}" --zone="${ZONE}" --command="gcloud storage cp ${SOURCE} \
/tmp/lln_jax.tar.gz && mkdir -p ~/lln_jax && tar -xzf /tmp/lln_jax.tar.gz -C ~/lln_jax \
&& (nohup bash ~/lln_jax/launch/prepare_vm.sh ${DATASET} ${BUCKET} ${ZONE} ${IMAGE_SIZE} \
> /dev/null 2>&1 &)"
  trap - ERR
  echo "${vm} prepares ${DATASET} into ${BUCKET}/tfds and deletes itself when done; its log:" \
    "${BUCKET}/launch/prepare-${DATASET}.log (watch it: gcloud compute instances list)"
}

mark_run() {
  echo "+ echo $1 | gcloud storage cp - ${RUN_STATE}"
  if [[ "${DRY_RUN}" == 0 ]]; then echo "$1" | gcloud storage cp - "${RUN_STATE}"; fi
}

run() {
  need BUCKET CONFIG
  start_workers
}

sweep() {
  need BUCKET SWEEP
  start_workers
}

# A worker's command line for one of launch/'s worker scripts. On a queued resource the
# startup script installed the source and the venv as root, in /root, and logs where status
# reads: the ssh user runs the script there, through sudo (passwordless on TPU VMs).
worker_script() {
  if [[ "${QUEUED}" == 1 ]]; then
    echo "sudo env HOME=/root LLN_LOG_DIR=/var/log/lln_jax bash /root/lln_jax/launch/$*"
  else
    echo "bash ~/lln_jax/launch/$*"
  fi
}

# The run's command (given now, or as recorded when none is given) on every worker.
start_workers() {
  if [[ -n "${CONFIG}${SWEEP}" ]]; then upload_run_args; fi
  mark_run running
  on_workers "$(worker_script run_worker.sh "${RUN_ARGS}")"
}

stop() {
  need BUCKET
  mark_run stopped
  on_workers "$(worker_script stop_worker.sh)"
}

status() {
  if [[ "${QUEUED}" == 1 ]]; then
    step gcloud compute tpus queued-resources describe "${NAME}" --zone="${ZONE}" \
      --format="value(state.state)"
  fi
  step gcloud compute tpus tpu-vm describe "${NAME}" --zone="${ZONE}" \
    --format="value(state,health)"
  on_workers "tail -n 5 ~/lln_logs/*.log /var/log/lln_jax/*.log 2>/dev/null || true"
}

delete() {
  if [[ "${QUEUED}" == 1 ]]; then
    step gcloud compute tpus queued-resources delete "${NAME}" --zone="${ZONE}" --force --quiet
  else
    step gcloud compute tpus tpu-vm delete "${NAME}" --zone="${ZONE}" --quiet
  fi
}

# The TPU's state (queued resource: ACTIVE, SUSPENDED, ...; VM: READY, PREEMPTED, ...), or
# NOT_FOUND, into STATE. A dry run prints the query and goes on as if the TPU needed
# recovering.
tpu_state() {
  local query=(gcloud compute tpus tpu-vm describe "${NAME}" --zone="${ZONE}"
               --format="value(state)")
  if [[ "${QUEUED}" == 1 ]]; then
    query=(gcloud compute tpus queued-resources describe "${NAME}" --zone="${ZONE}"
           --format="value(state.state)")
  fi
  printf '+'; for word in "${query[@]}"; do printf ' '; quote "${word}"; done; printf '\n'
  STATE=UNKNOWN
  if [[ "${DRY_RUN}" == 0 ]]; then STATE="$("${query[@]}" 2>/dev/null)" || STATE=NOT_FOUND; fi
}

recover() {
  need BUCKET
  tpu_state
  case "${STATE}" in
    READY|ACTIVE)
      die "recover: ${NAME} is ${STATE}, nothing to recover (status shows its run; stop, delete end it)" ;;
    NOT_FOUND) echo "${NAME} is gone: re-creating it" ;;
    *) delete ;;
  esac
  read_slice
  PLAN=0  # The same slice and config as the run it resumes: planned when first created.
  RECOVERING=1
  create
  if [[ "${QUEUED}" == 0 ]]; then
    setup
    start_workers
  fi
}

case "${COMMAND}" in
  create|setup|prepare|run|sweep|status|stop|recover|delete) "${COMMAND}" ;;
  *) echo "tpu.sh: unknown command ${COMMAND}" >&2; usage 2 ;;
esac
