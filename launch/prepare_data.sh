#!/usr/bin/env bash
# On a CPU VM with a large disk: downloads a data set's official files, prepares them into
# BUCKET/tfds (optionally also pre-resized to IMAGE_SIZE), and converts the ImageNet weights
# (torchvision's IMAGENET1K_V1, as timm's safetensors; no torch needed) to BUCKET/weights.
#
#   bash ~/lln_jax/launch/prepare_data.sh voc2012|coco2014|cub gs://BUCKET [IMAGE_SIZE]
#
# NUS-WIDE has no public download of its images: upload Cole et al.'s formatted files and
# images to gs://BUCKET/manual/nuswide/ first; this copies them to ~/manual/nuswide.
set -euo pipefail

DATASET="${1:?give voc2012, coco2014, cub or nuswide}"
BUCKET="${2:?give gs://BUCKET}"
IMAGE_SIZE="${3:-}"
PYTHON="${HOME}/lln_venv/bin/python"
MANUAL="${HOME}/manual/${DATASET}"
mkdir -p "${MANUAL}" && cd "${MANUAL}"
case "${DATASET}" in
  voc2012)
    wget -nc -q http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
    tar -xf VOCtrainval_11-May-2012.tar ;;
  coco2014)
    for zip in zips/train2014.zip zips/val2014.zip annotations/annotations_trainval2014.zip; do
      wget -nc -q "http://images.cocodataset.org/${zip}"
      unzip -qn "$(basename "${zip}")"
    done ;;
  cub)
    wget -nc -q -O CUB_200_2011.tgz \
      'https://data.caltech.edu/records/65de6-vzc84/files/CUB_200_2011.tgz?download=1'
    tar -xzf CUB_200_2011.tgz ;;
  nuswide)
    gcloud storage cp -r "${BUCKET}/manual/nuswide/*" "${MANUAL}/" ;;
  *) echo "prepare_data.sh: unknown data set ${DATASET}" >&2; exit 2 ;;
esac
cd "${HOME}/lln_jax"
"${PYTHON}" -m lln_jax.prepare "${DATASET}" --manual_dir="${MANUAL}" --data_dir="${BUCKET}/tfds" \
  ${IMAGE_SIZE:+--image_size="${IMAGE_SIZE}"}
WEIGHTS=/tmp/resnet50_tv_in1k.safetensors
wget -nc -q -O "${WEIGHTS}" \
  https://huggingface.co/timm/resnet50.tv_in1k/resolve/main/model.safetensors
"${PYTHON}" -m lln_jax.models.pretrained --source="${WEIGHTS}" \
  --target="${BUCKET}/weights/resnet50_imagenet1k_v1.npz"
