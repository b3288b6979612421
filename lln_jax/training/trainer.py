"""`train_and_evaluate`: a run from its config to `results.json`, read top to bottom.

Take the workdir's lease, build the experiment, restore or initialise the state, LinearInit
on a fresh run, the loop, then the test of the best-val state. The pieces are in the sibling
modules; this one only orders them and owns the restore and the finish.
"""

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview
from jax.experimental import multihost_utils

from lln_jax.run import checkpointing, run_identity, stop_request, workdir_lock
from lln_jax.run import workdir as workdir_lib
from lln_jax.training import evaluation, experiment, initial_state, linear_init, loop
from lln_jax.training.experiment import Experiment
from lln_jax.training.record import RunRecord
from lln_jax.training.session import Session
from lln_jax.training.train_state import TrainState


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState | None:
    """Trains (or resumes) per `config` in `workdir`; tests the best-val model at the end.

    Holds the workdir's lease throughout, so a second run there refuses. `config` has
    passed `config.checks.check`: `lln_jax.main` checks it once, before TensorFlow loads.

    Returns:
      The final train state (the best-val state is in `workdir/checkpoints/best`), or None
      when the workdir already holds the finished run (its stored results are reported).

    Raises:
      workdir.ConfigMismatchError: the workdir holds a run of another config.
      workdir_lock.WorkdirLockedError: another live run holds the workdir.
      stop_request.RunInterruptedError: SIGTERM or SIGINT stopped the run after a checkpoint.
    """
    workdir = str(workdir)
    stored = workdir_lib.finished_results(config, workdir)
    if stored is not None:
        _report_stored(stored, workdir)
        return None
    lock = workdir_lock.WorkdirLock(workdir, **_lease_timings())
    _take_lease(lock)
    try:
        # Again under the lease: the run that held it may have finished in between.
        stored = workdir_lib.finished_results(config, workdir)
        if stored is not None:
            _report_stored(stored, workdir)
            return None
        workdir_lib.check_config_file(config, workdir)  # Before the data is opened.
        return _run(config, experiment.build(config), workdir, lock)
    finally:
        lock.release()


def _run(config, built: Experiment, workdir: str, lock) -> TrainState:
    session = Session(
        workdir=workdir,
        lease=lock,
        checkpointer=checkpointing.Checkpointer(
            f"{workdir}/checkpoints", max_to_keep=built.loop.max_to_keep
        ),
        stop=stop_request.StopRequest(lock),
    )
    started = time.time()
    try:
        state, record, resumed = _restore(built, session, config)
        session.fence()
        workdir_lib.write_config(config, workdir)
        # Only once the workdir is known to hold this run: a refusal leaves no events file.
        session.writer = metric_writers.create_default_writer(
            workdir, just_logging=jax.process_index() > 0, asynchronous=True
        )
        _log_build_facts(built, config, state)
        if not resumed:
            session.writer.write_hparams(workdir_lib.flat(config))
            if built.linear_init.num_epochs > 0:
                state = linear_init.run(built, session, state)
        if not (record.stopped_early or loop.current_step(state) >= built.total_steps):
            state = loop.train(built, session, state, record)
        session.checkpointer.wait_until_finished()
        _stop_if_requested(built, session, state)
        _finish(built, session, state, record, config, time.time() - started)
    finally:  # Even on an error, the saves already started complete.
        session.stop.restore_defaults()
        session.checkpointer.wait_until_finished()
        session.checkpointer.close()
        if session.writer is not None:
            session.writer.flush()
    return state


def _stop_if_requested(built: Experiment, session: Session, state: TrainState) -> None:
    """Even after the last step: the test then runs on the rerun."""
    step = loop.current_step(state)
    if session.stop.agreed(step, every=built.loop.log_every_steps, final=True):
        raise session.interrupted(step, built.total_steps, f"{session.workdir}/checkpoints/latest")


def _restore(built: Experiment, session: Session, config) -> tuple[TrainState, RunRecord, bool]:
    """The newest checkpoint that restores, checked against the config and the run's
    identity before its arrays are read; or a fresh state. Sets `session.identity`.

    The restore needs only the state's structure (`jax.eval_shape`): a resumed run never
    initialises, nor loads the pretrained backbone.

    Raises:
      workdir.ConfigMismatchError: a checkpoint or `run.json` of another config.
      run_identity.ForeignStateError: checkpoints of another run in the workdir.
      ValueError: the observed labels differ from those the checkpoint was trained on.
    """
    workdir, stored = session.workdir, run_identity.read(session.workdir)

    def check(saved: dict[str, Any], source: str) -> None:
        if "config" in saved:  # Checkpoints written before the record held it have none.
            workdir_lib.check_same_config(saved["config"], config, source)
        if stored is not None:
            run_identity.check_record(stored, saved, source)

    abstract = initial_state.abstract_state(built)
    restored = session.checkpointer.restore_latest(abstract, check)
    if restored is not None:
        state, record = restored[0], RunRecord.from_json(restored[1])
    else:
        state = initial_state.fresh_state(built)
        record = RunRecord(workdir_lib.config_json(config), built.labels_digest)
    if stored is not None and stored.config_sha256 != workdir_lib.config_digest(config):
        raise workdir_lib.ConfigMismatchError(
            f"{workdir}/{run_identity.RUN_FILE} holds a run of a different config "
            f"(run {stored.run_id}); use another --workdir or the same config"
        )
    if record.observed_labels_sha256 != built.labels_digest:
        raise ValueError("the observed labels differ from those the checkpoint was trained on")
    session.identity = (
        stored or run_identity.of_record(record.to_json()) or run_identity.new(config)
    )
    record.identity = session.identity.to_json()
    _check_best_states(session, abstract, record)
    if stored is None:
        session.fence()
        run_identity.write(session.identity, workdir)
    if restored is not None:
        logging.info("Resumed from %s/checkpoints/latest/%d", workdir, loop.current_step(state))
    return state, record, restored is not None


def _check_best_states(session: Session, abstract, record: RunRecord) -> None:
    """Every best state must be this run's; the one the record names must restore."""
    for step in session.checkpointer.steps("best"):
        source = f"{session.workdir}/checkpoints/best/{step}"
        try:
            saved = session.checkpointer.read_record("best", step)
        except Exception:  # Corrupt: quarantined when the final test restores it.
            continue
        session.check_identity(saved, source)
    restores = session.checkpointer.restore_best(abstract, session.check_identity) is not None
    if record.best_epoch and not restores:
        logging.error(
            "the best-val state (epoch %d) does not restore; unless a later epoch beats it, "
            "the final test cannot run", record.best_epoch,
        )  # fmt: skip


def _finish(built, session: Session, state, record: RunRecord, config, elapsed: float) -> None:
    """Test mAP of the best-val checkpoint; `results.json` and a summary."""
    abstract = checkpointing.abstract_like(state, built.replicated)
    best = session.checkpointer.restore_best(abstract, session.check_identity)
    if best is None:
        raise FileNotFoundError(
            f"the best-val state (epoch {record.best_epoch}) is missing or does not restore "
            f"from {session.workdir}/checkpoints/best (a failed one is in "
            "checkpoints/quarantine); the test of the best model cannot run: train again in "
            "a new --workdir"
        )
    test_map = evaluation.evaluate(built, best, "test")
    final_step = loop.current_step(state)
    session.writer.write_scalars(final_step, {"test/map": test_map})
    results = {
        **record.results(),
        "test_map": test_map,
        "val_labels": built.loop.val_labels,
        "run_id": session.identity.run_id,
        "final_step": final_step,
        "train_seconds_this_session": elapsed,
        "config": workdir_lib.config_json(config),
    }
    session.fence()
    workdir_lib.write_results(results, session.workdir)
    logging.info(
        "\n  scheme %s on %s: test mAP %.2f (best val mAP %.2f at epoch %d of %d)"
        "\n  val mAP per epoch: %s\n  results: %s/results.json",
        config.scheme.name, config.data.name, test_map, record.best_val_map,
        record.best_epoch, len(record.val_map),
        " ".join(f"{v:.2f}" for v in record.val_map), session.workdir,
    )  # fmt: skip


def _log_build_facts(built: Experiment, config, state: TrainState) -> None:
    parameter_overview.log_parameter_overview(state.params)
    splits, batch_size = built.splits, built.loading.batch_size
    logging.info(
        "\n  devices: %d (%d per process, %d processes)"
        "\n  global batch: %d, per device: %d"
        "\n  train / val / test examples: %d / %d / %d, classes: %d"
        "\n  steps per epoch: %d, epochs: %d, total steps: %d"
        "\n  scheme: %s, model: %s, observed labels sha256: %s",
        jax.device_count(), jax.local_device_count(), jax.process_count(),
        batch_size, batch_size // jax.device_count(),
        splits["train"].num_examples, splits["val"].num_examples, splits["test"].num_examples,
        built.num_classes, built.steps_per_epoch, built.num_epochs, built.total_steps,
        dict(config.scheme), built.model_name, built.labels_digest[:16],
    )  # fmt: skip


def _report_stored(results: dict[str, Any], workdir: str) -> None:
    logging.info(
        "\n  %s holds a finished run: test mAP %.2f (best val mAP %.2f at epoch %d); "
        "nothing to do.\n  results: %s/results.json",
        workdir, results["test_map"], results["best_val_map"], results["best_epoch"], workdir,
    )  # fmt: skip


def _take_lease(lock: workdir_lock.WorkdirLock) -> None:
    """Process 0 takes the workdir's lease; every process learns whether it was refused.

    Without the agreement a refused process 0 exits while the others go on into the first
    collective and wait there for the heartbeat timeout.
    """
    refusal = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except workdir_lock.WorkdirLockedError as error:
            refusal = error
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
        if refused and refusal is None:
            refusal = workdir_lock.WorkdirLockedError(
                f"{lock.path.parent} is in use by another run (process 0 says who)"
            )
    if refusal is not None:
        raise refusal


def _lease_timings() -> dict[str, float]:
    """`LLN_LEASE_S` and `LLN_LEASE_RENEW_S` override the lease's 120 s and 20 s."""
    timings = {"lease_s": "LLN_LEASE_S", "renew_s": "LLN_LEASE_RENEW_S"}
    return {key: float(os.environ[name]) for key, name in timings.items() if name in os.environ}
