#!/usr/bin/env bash
# On the prepare VM, detached from the ssh that started it (a dropped connection stops
# nothing): set up, prepare the data set into the bucket, upload the log, then delete this
# VM, whether the preparation succeeded or not, so that it never bills on.
#
#   nohup bash ~/lln_jax/launch/prepare_vm.sh DATASET gs://BUCKET ZONE [IMAGE_SIZE] &
set -uo pipefail

DATASET="${1:?give the data set}"
BUCKET="${2:?give gs://BUCKET}"
ZONE="${3:?give the zone of this VM}"
IMAGE_SIZE="${4:-}"
LOG="${HOME}/prepare-${DATASET}.log"
{
  bash "${HOME}/lln_jax/launch/setup.sh" cpu \
    && bash "${HOME}/lln_jax/launch/prepare_data.sh" "${DATASET}" "${BUCKET}" ${IMAGE_SIZE:+"${IMAGE_SIZE}"}
  echo "prepare_vm.sh: exit $? ($(date -u +%FT%TZ))"
} > "${LOG}" 2>&1
gcloud storage cp "${LOG}" "${BUCKET}/launch/prepare-${DATASET}.log"
gcloud compute instances delete "$(hostname)" --zone="${ZONE}" --quiet
