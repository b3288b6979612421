"""Command line: `python -m lln_jax.plan --config=configs/coco.py:scheme=ll_r --topology=v5e-8`.

Compiles the run's train step for a TPU slice on this machine (no TPU: libtpu's topology
descriptions, `training/tpu_plan.py`) and prints what it needs per chip against the chip's
HBM, its flops per step and the ideal step time at the chip's peak. Exit 2 when the slice
cannot run the config (the batch does not fit or does not divide), before anyone pays for it.
The data set's classes and train rows come from its builder, or `--num_classes` and
`--num_train` (a data set of your own).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_string("topology", None, "A TPU accelerator type: v4-8, v5e-8, v5p-16, v6e-4, ...")
flags.DEFINE_integer("num_classes", None, "The data set's classes (default: its builder's).")
flags.DEFINE_integer("num_train", None, "Train rows after the val cut (default: the builder's).")
flags.mark_flags_as_required(["config", "topology"])

EXIT_REFUSED = 2


def _refuse(message: str) -> None:
    sys.stderr.write(f"lln_jax.plan: {message}\n")
    sys.exit(EXIT_REFUSED)


def _data_size(config) -> tuple[int, int]:
    """(classes, train rows after the val cut) from the flags or the data set's builder."""
    from lln_jax.data import datasets

    stated_classes, stated_train = datasets.stated_size(config.data.name, config.data.val_frac)
    num_classes, num_train = FLAGS.num_classes or stated_classes, FLAGS.num_train or stated_train
    if not (num_classes and num_train):
        _refuse(f"{config.data.name} does not state its size: give --num_classes and --num_train")
    return num_classes, num_train


def _run(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from lln_jax.config import checks
    from lln_jax.training import tpu_plan

    try:
        checks.check(FLAGS.config)
        num_classes, num_train = _data_size(FLAGS.config)
        result = tpu_plan.plan(
            FLAGS.config, FLAGS.topology, num_classes=num_classes, num_train=num_train
        )
    except (checks.ConfigError, tpu_plan.PlanError) as error:
        _refuse(str(error))
    print("\n".join(result.lines()))


def main() -> None:
    app.run(_run)


if __name__ == "__main__":
    main()
