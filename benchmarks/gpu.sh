#!/usr/bin/env bash
# Every benchmark on one GPU machine, in one go: ResNet-50 at 448, batch 16, JAX float32 and
# bfloat16 against PyTorch fp32 and AMP, and the input pipelines. Results land in $OUT (or
# benchmarks/results/gpu) as JSON, tables in the log. MFU is against 989 TFLOP/s, the H100
# SXM's dense bf16 peak; pass another --peak_tflops for another card.
#   bash benchmarks/gpu.sh    (after: pip install -e '.[bench]' "jax[cuda12]")
set -euo pipefail
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python benchmarks/train_step.py --size=448 --batch=16 --warmup=5 --repeats=20 \
  --dtypes=float32,bfloat16 --torch=fp32,amp --peak_tflops=989 --out="$out/train_step.json" | tee "$out/train_step.log"
python benchmarks/input_pipeline.py --images=512 --out="$out/input_pipeline.json" \
  | tee "$out/input_pipeline.log"
