"""The end-to-end training loop: steps, log points, epoch ends, saves and the stop request.

From the restored step to the last one, an early stop or an agreed stop request. Every log
point writes the merged metrics (and checks them: `monitor.py`); every epoch end evaluates
val, keeps the best state and may stop early; every save is fenced by the lease.
"""

import jax
from absl import logging
from clu import periodic_actions

from lln_jax.data import input_pipeline
from lln_jax.evaluation import metrics
from lln_jax.training import evaluation
from lln_jax.training.experiment import Experiment
from lln_jax.training.monitor import TrainMonitor
from lln_jax.training.record import RunRecord
from lln_jax.training.session import Session
from lln_jax.training.train_state import TrainState


def current_step(state: TrainState) -> int:
    """The state's step on the host (a transfer: outside the step loop only)."""
    return int(jax.device_get(state.step))


def end_of_epoch(
    experiment: Experiment, session: Session, state: TrainState, step: int, record: RunRecord
) -> bool:
    """Val mAP, best-model bookkeeping, the diagnosis and the early stop. True to stop."""
    loop, epoch = experiment.loop, step // experiment.steps_per_epoch
    val_map = evaluation.evaluate(experiment, state, "val", loop.val_labels)
    if record.close_epoch(val_map, epoch):
        session.fence()
        session.checkpointer.save_best(step, state, session.identity_record())
    if loop.diagnose_false_negatives:
        record.add_diagnosis(evaluation.unobserved_train_losses(experiment, state))
    stop = val_map < record.best_val_map - loop.early_stop_drop
    record.stopped_early = bool(stop)
    logging.info(
        "epoch %d: val mAP %.2f (best %.2f, epoch %d)%s",
        epoch, val_map, record.best_val_map, record.best_epoch, "; stopping early" if stop else "",
    )  # fmt: skip
    return stop


def train_batches(experiment: Experiment, start: int):
    """This process's slices of the train batches from global step `start` to the end."""
    loading = experiment.loading
    return input_pipeline.batches(
        experiment.splits["train"],
        batch_size=loading.batch_size,
        image_size=loading.image_size,
        seed=experiment.seed,
        train=True,
        start=start,
        stop=experiment.total_steps,
        num_threads=loading.num_threads,
        num_workers=loading.num_workers,
    )


def train(
    experiment: Experiment, session: Session, state: TrainState, record: RunRecord
) -> TrainState:
    """The loop from the state's step to the end, an early stop or a stop request."""
    start = current_step(state)
    batches = train_batches(experiment, start)
    with input_pipeline.DevicePrefetch(batches, experiment.data_sharding) as prefetch:
        return _steps(experiment, session, state, record, start, prefetch)


def _steps(
    experiment: Experiment,
    session: Session,
    state: TrainState,
    record: RunRecord,
    step: int,
    global_batches,
) -> TrainState:
    """The steps from `step` on, one per global batch (those of that step on)."""
    loop, writer = experiment.loop, session.writer
    report = periodic_actions.ReportProgress(num_train_steps=experiment.total_steps, writer=writer)
    monitor = TrainMonitor(
        writer, session.checkpointer, session.workdir, experiment.learning_rate,
        experiment.lr_fn,
    )  # fmt: skip
    merged = None
    # One dispatch a step: clu's `merge` is a dozen host-side jnp operations otherwise.
    merge = jax.jit(lambda merged, update: merged.merge(update), donate_argnums=0)
    batches = input_pipeline.TimedBatches(global_batches)
    for batch in batches:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, update, scheduled = experiment.train_step(state, batch)
        merged = update if merged is None else merge(merged, update)
        step += 1
        report(step)
        epoch_ends = step % experiment.steps_per_epoch == 0
        stop_now = session.stop.agreed(step, every=loop.log_every_steps)
        save = epoch_ends or step % loop.checkpoint_every_steps == 0 or stop_now
        if step % loop.log_every_steps == 0 or save:
            record.add_selection(metrics.selection_totals(merged))
            monitor.log(step, merged, scheduled)
            writer.write_scalars(step, batches.take_scalars())
            merged = None
        stop = epoch_ends and end_of_epoch(experiment, session, state, step, record)
        if epoch_ends:
            writer.write_scalars(step, record.epoch_scalars())
        if save:
            session.fence()  # Orbax also deletes the steps past `max_to_keep` here.
            session.checkpointer.save(step, state, record.to_json())
        # A signal during the epoch's evaluation stops at this epoch end, saved just above.
        if stop or stop_now or (epoch_ends and session.stop.agreed(step, every=1)):
            break
    return state
