"""Command line: `python -m lln_jax.main --config=configs/coco.py:scheme=ll_cp --workdir=DIR`.

Intentionally kept short: the run itself is `lln_jax.training.trainer.train_and_evaluate`.
Set `LLN_MULTIHOST=1` on every host of a multi-host run (a TPU pod finds its peers; elsewhere
also `LLN_COORDINATOR=host:port`, `LLN_NUM_PROCESSES` and `LLN_PROCESS_ID`: see
`lln_jax/run/distributed.py`).

Exit codes, for launchers:
  0   the run finished (or the workdir already held the finished run);
  1   the run failed (a traceback, or a non-finite loss: see the message);
  2   the config or the workdir refused the run before it started (one line says why);
  75  SIGTERM or SIGINT stopped it after a checkpoint: rerun the same command to resume;
      or another run took the workdir's lease over (this one stalled): nothing was saved.
"""

import logging as python_logging
import shlex
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results.json go.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 1, 2, 75


def _quiet_orbax(record) -> bool:
    """Drops orbax's per-save INFO chatter; its warnings and errors still show."""
    return record.levelno >= python_logging.WARNING or "orbax" not in record.pathname


def _refuse(message: str) -> None:
    sys.stderr.write(f"lln_jax.main: {message}\n")
    sys.exit(EXIT_REFUSED)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad config file, key or value as one line, not a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as error:  # A config file that raised: its first and last lines.
        lines = [line for line in str(error).splitlines() if line.strip()]
        _refuse(lines[0] if len(lines) < 3 else f"{lines[0]} {lines[-1]}")
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # From the config.
        _refuse(str(error).strip("'\"").replace("\\n", " ").replace("\\'", "'"))
    return []


def _check_config() -> None:
    from lln_jax.config import checks as config_checks

    try:
        config_checks.check(FLAGS.config)
    except config_checks.ConfigError as error:
        _refuse(f"bad config: {error}")


def _check_paths() -> None:
    """The workdir and the weights file, before TensorFlow, the data or the model load."""
    from lln_jax.models import pretrained
    from lln_jax.run import workdir

    try:
        workdir.check_usable(FLAGS.workdir)
        workdir.check_config_file(FLAGS.config, FLAGS.workdir)
        if FLAGS.config.init_from:
            pretrained.check_file(FLAGS.config.init_from)
    except ValueError as error:  # WorkdirError, ConfigMismatchError and the weights' own.
        _refuse(str(error))


def _run(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    _check_config()
    _check_paths()
    # TensorFlow (TFDS, the metric writers) must never take the accelerator.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    import jax

    from lln_jax.run import distributed

    try:
        distributed.initialize()
    except distributed.DistributedSetupError as error:
        _refuse(str(error))
    from lln_jax.data import datasets
    from lln_jax.run import checkpointing, stop_request, workdir, workdir_lock
    from lln_jax.training import monitor, trainer

    logging.info(
        "process %d of %d, %d local devices of %d (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(), jax.devices()[0].platform,
    )  # fmt: skip
    try:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (workdir.WorkdirError, workdir_lock.WorkdirLockedError) as error:
        _refuse(str(error))
    except (datasets.DataNotPreparedError, *datasets.NOT_READY_ERRORS) as error:
        _refuse(str(error))
    except (monitor.NonFiniteLossError, checkpointing.SaveError) as error:
        sys.stderr.write(f"lln_jax.main: {error}\n")
        sys.exit(EXIT_FAILED)
    except workdir_lock.LeaseLostError as error:
        sys.stderr.write(f"lln_jax.main: {error}\n")
        sys.exit(EXIT_INTERRUPTED)
    except stop_request.RunInterruptedError as error:
        # The state is saved: a late signal (the other hosts of a pod get theirs seconds
        # apart) is ignored, where Python's shutdown would restore its fatal default.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        command = shlex.join([sys.executable, "-m", "lln_jax.main", *sys.argv[1:]])
        sys.stderr.write(f"lln_jax.main: {error}.\nResume with: {command}\n")
        sys.exit(EXIT_INTERRUPTED)


def main() -> None:
    app.run(_run, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
