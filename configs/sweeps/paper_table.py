"""The paper's comparison table (SPEC.md sections 6 and 9) and GR: 4 data sets x 12 settings
x 3 seeds, ResNet-50 from ImageNet weights, pre-resized `jpeg95` images.

    python -m lln_jax.sweep --sweep=configs/sweeps/paper_table.py --runs=gs://BUCKET/runs

Set `DATA_DIR` and `WEIGHTS` (or edit them here) to the prepared data and converted
weights; every cell's workdir is `RUNS/<data>-<setting>-seed<seed>`.
"""

import os

from lln_jax.run.sweep import Cell

DATA_DIR = os.environ.get("DATA_DIR", "gs://BUCKET/tfds")
WEIGHTS = os.environ.get("WEIGHTS", "gs://BUCKET/weights/resnet50_imagenet1k_v1.npz")
DATA = ("voc", "coco", "nuswide", "cub")
SETTINGS = (
    "scheme=an,labels=full", "scheme=an", "scheme=an_ls", "scheme=wan", "scheme=epr",
    "scheme=role", "scheme=em", "scheme=ll_r", "scheme=ll_ct", "scheme=ll_cp",
    "scheme=ll_r,boostlu", "scheme=gr",
)  # fmt: skip
SEEDS = (0, 1, 2)
FLAGS = (
    f"--config.data.data_dir={DATA_DIR}", f"--config.init_from={WEIGHTS}",
    "--config.data.storage=jpeg95",
)  # fmt: skip

CELLS = [
    Cell(f"{data}-{arg.replace(',', '-')}-seed{seed}", f"configs/{data}.py:{arg}", seed, FLAGS)
    for data in DATA
    for arg in SETTINGS
    for seed in SEEDS
]
