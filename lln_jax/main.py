"""Command line: `python -m lln_jax.main --config=configs/coco.py:scheme=ll_cp --workdir=DIR`.

Intentionally kept short: everything else is importable from `lln_jax.train`.
Set `LLN_MULTIHOST=1` on every host of a multi-host (TPU pod) run.
"""

import logging as python_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results.json go.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record) -> bool:
    """Drops orbax's per-save INFO chatter; its warnings and errors still show."""
    return record.levelno >= python_logging.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    # TensorFlow (TFDS, the metric writers) must never take the accelerator.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    import jax

    if os.environ.get("LLN_MULTIHOST") == "1":
        jax.distributed.initialize()
    from lln_jax import train

    logging.info(
        "process %d of %d, %d local devices of %d (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].platform,
    )  # fmt: skip
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
