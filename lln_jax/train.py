"""Orchestration: build everything from the config, train, evaluate, checkpoint, report.

No math here: the step is in `steps.py`, the loss in `schemes.py`, mAP in `metrics.py`.
Only this module and `main.py` see the whole config; every builder gets its own sub-config.
"""

import functools
import hashlib
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from lln_jax import (
    checkpointing,
    config_checks,
    datasets,
    image_storage,
    input_pipeline,
    linear_init,
    metrics,
    models,
    optim,
    run_identity,
    schemes,
    sharding,
    steps,
    train_monitor,
    workdir_lock,
)
from lln_jax import stop_request as stop_request_lib
from lln_jax import workdir as workdir_lib
from lln_jax.models import pretrained, resnet
from lln_jax.train_state import TrainState, create_train_state


def create_splits(data_config: ml_collections.ConfigDict) -> dict[str, input_pipeline.Split]:
    """Opens the data set (preparing it where possible); train/val/test splits.

    With several processes, process 0 prepares (or upgrades) the data while the others wait,
    so that they never write the same files at once.
    """
    open_splits = functools.partial(
        datasets.open_splits,
        data_config.name,
        data_config.data_dir,
        allow_unchecked_counts=data_config.allow_unchecked_counts,
        storage=image_storage.parse(data_config.storage, data_config.image_size),
    )
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            open_splits()
        multihost_utils.sync_global_devices("lln_jax: the data is prepared")
    train, test = open_splits()
    return input_pipeline.create_splits(
        train,
        test,
        label_setting=data_config.label_setting,
        observed_seed=data_config.observed_seed,
        split_seed=data_config.split_seed,
        val_frac=data_config.val_frac,
    )


def _check_batch_sizes(data_config, num_devices: int) -> None:
    for key in ("batch_size", "eval_batch_size"):
        if data_config[key] % num_devices:
            raise ValueError(
                f"data.{key}={data_config[key]} must divide over {num_devices} devices"
            )


def _predict(
    jit_eval_step, state, split, data_config, data_sharding
) -> metrics.MeanAveragePrecision:
    """Scores, true labels and mask of a whole split, in row order, collected on the host."""
    batch_size = data_config.eval_batch_size
    num_batches = input_pipeline.steps_per_epoch(split.num_examples, batch_size)
    collected = metrics.MeanAveragePrecision.empty()
    for batch in input_pipeline.batches(
        split,
        batch_size=batch_size,
        image_size=data_config.image_size,
        seed=0,
        train=False,
        start=0,
        stop=num_batches,
        num_threads=data_config.num_threads,
        num_workers=data_config.num_workers,
    ):
        outputs = jit_eval_step(state, input_pipeline.to_global(batch, data_sharding))
        update = metrics.MeanAveragePrecision.from_model_output(**metrics.gather_to_host(outputs))
        collected = collected.merge(update)
    return collected


def _labels_digest(labels_obs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels_obs).tobytes()).hexdigest()


def _fresh_record(splits, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The loop's bookkeeping, saved with every checkpoint (the config and, once known, the
    run's identity included)."""
    return {
        "config": workdir_lib.config_json(config),
        "val_map": [],
        "best_val_map": -math.inf,
        "best_epoch": 0,
        "stopped_early": False,
        "observed_labels_sha256": _labels_digest(splits["train"].labels_obs),
    }


def _log_build_facts(config, splits, info, state) -> None:
    parameter_overview.log_parameter_overview(state.params)
    logging.info(
        "\n  devices: %d (%d per process, %d processes)"
        "\n  global batch: %d, per device: %d"
        "\n  train / val / test examples: %d / %d / %d, classes: %d"
        "\n  steps per epoch: %d, epochs: %d, total steps: %d"
        "\n  scheme: %s, model: %s, observed labels sha256: %s",
        jax.device_count(), jax.local_device_count(), jax.process_count(),
        config.data.batch_size, config.data.batch_size // jax.device_count(),
        splits["train"].num_examples, splits["val"].num_examples, splits["test"].num_examples,
        info.num_classes, info.steps_per_epoch, config.num_epochs, info.total_steps,
        dict(config.scheme), config.model.name, _labels_digest(splits["train"].labels_obs)[:16],
    )  # fmt: skip


class _Run:
    """The built pieces of one run, so that the loop's helpers take one argument."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        lease: workdir_lock.WorkdirLock | None = None,
    ):
        self.config, self.workdir, self.lease = config, workdir, lease
        self.identity: run_identity.RunIdentity | None = None  # Known once restored.
        self.mesh = sharding.create_mesh()
        self.data_sharding = sharding.data_sharding(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        _check_batch_sizes(config.data, jax.device_count())
        self.splits = create_splits(config.data)
        train = self.splits["train"]
        self.num_classes = train.labels_true.shape[1]
        self.steps_per_epoch = input_pipeline.steps_per_epoch(
            train.num_examples, config.data.batch_size
        )
        self.total_steps = self.steps_per_epoch * config.num_epochs
        self.model = models.create(**config.model, num_classes=self.num_classes)
        self.head = resnet.BoostedHead(self.num_classes)  # LinearInit's plain head.
        context = schemes.SchemeContext(
            num_examples=train.num_examples,
            num_classes=self.num_classes,
            batch_size=config.data.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            num_epochs=config.num_epochs,
            observed_negatives=bool((train.labels_obs == -1).any()),
        )
        self.scheme = schemes.create(**config.scheme, context=context)
        self.tx, self.lr_fn = optim.create(**config.optim, head_name=models.HEAD_NAME)
        self.checkpointer = checkpointing.Checkpointer(
            f"{workdir}/checkpoints", max_to_keep=config.checkpoint.max_to_keep
        )
        self.jit_train_step = jax.jit(
            functools.partial(steps.train_step, model=self.model, scheme=self.scheme),
            donate_argnums=0,
            out_shardings=(self.replicated, self.replicated, self.replicated),
        )
        self.jit_eval_step = jax.jit(
            functools.partial(steps.eval_step, model=self.model), out_shardings=self.replicated
        )

    def init_state(self) -> TrainState:
        image_shape = (self.config.data.image_size, self.config.data.image_size, 3)
        create = functools.partial(
            create_train_state,
            model=self.model,
            tx=self.tx,
            scheme=self.scheme,
            image_shape=image_shape,
        )
        seed = jax.device_put(np.int32(self.config.seed), self.replicated)
        labels_obs = jax.device_put(self.splits["train"].labels_obs, self.replicated)
        init = jax.jit(
            lambda s, labels: create(jax.random.PRNGKey(s), labels_obs=labels),
            out_shardings=self.replicated,
        )
        state = init(seed, labels_obs)
        if self.config.init_from:
            state = self._load_pretrained(state, self.config.init_from)
        elif self.config.model.name == "resnet50":
            logging.warning(
                "ResNet-50 from scratch: the paper starts from ImageNet weights "
                "(set --config.init_from; see lln_jax/models/pretrained.py)."
            )
        return state

    def _load_pretrained(self, state: TrainState, path: str) -> TrainState:
        """The backbone from converted ImageNet weights; the head as initialised."""
        initial = {"params": state.params, "batch_stats": state.batch_stats}
        merged = pretrained.merge(
            jax.device_get(initial), pretrained.load(path), exclude=(models.HEAD_NAME,)
        )
        merged = jax.device_put(merged, self.replicated)
        logging.info("Backbone initialised from %s", path)
        trainable = optim.trainable(merged["params"], state.scheme_params)
        opt_state = jax.jit(self.tx.init, out_shardings=self.replicated)(trainable)
        return state.replace(
            params=merged["params"], batch_stats=merged["batch_stats"], opt_state=opt_state
        )

    def fence(self) -> None:
        """Before any save, deletion or results write: the lease must still be this run's.

        Raises:
          workdir_lock.LeaseLostError: on every process, when another run took it over.
        """
        lost = None
        if self.lease is not None and jax.process_index() == 0:
            try:
                self.lease.verify()
            except workdir_lock.LeaseLostError as error:
                lost = error
        process_0_lost = jax.process_count() > 1 and bool(
            multihost_utils.broadcast_one_to_all(np.int32(lost is not None))
        )
        if process_0_lost and lost is None:
            lost = workdir_lock.LeaseLostError(workdir_lock.LOST_BY_PROCESS_0)
        if lost is not None:
            raise lost

    def identity_record(self) -> dict[str, Any]:
        return {"identity": self.identity.to_json()}

    def check_identity(self, record: dict[str, Any] | None, source: str) -> None:
        run_identity.check_record(self.identity, record, source)

    def predict(self, state: TrainState, split_name: str) -> metrics.MeanAveragePrecision:
        split = self.splits[split_name]
        return _predict(self.jit_eval_step, state, split, self.config.data, self.data_sharding)

    def evaluate(self, state: TrainState, split_name: str, labels: str = "true") -> float:
        """mAP (percent) on a whole split against its true or its observed labels.

        Against observed labels, the observed positives are the positives (SPEC.md 9).
        """
        collected = self.predict(state, split_name)
        if labels == "true":
            return collected.compute()
        observed_positive = (self.splits[split_name].labels_obs == 1).astype(np.int8)
        return metrics.mean_average_precision(collected.arrays()["scores"], observed_positive)

    def unobserved_train_losses(self, state: TrainState) -> dict[str, float]:
        """The losses of the train split's false and true negatives (a diagnosis)."""
        scores = self.predict(state, "train").arrays()["scores"]
        train = self.splits["train"]
        return metrics.unobserved_losses(scores, train.labels_true, train.labels_obs)

    def train_batches(self, start: int):
        data = self.config.data
        return input_pipeline.batches(
            self.splits["train"],
            batch_size=data.batch_size,
            image_size=data.image_size,
            seed=self.config.seed,
            train=True,
            start=start,
            stop=self.total_steps,
            num_threads=data.num_threads,
            num_workers=data.num_workers,
        )


def _end_of_epoch(run: _Run, state: TrainState, step: int, record: dict) -> bool:
    """Val mAP, best-model bookkeeping and the early stop. Returns True to stop."""
    epoch = step // run.steps_per_epoch
    _close_selection_epoch(record)
    val_map = run.evaluate(state, "val", run.config.data.val_labels)
    record["val_map"].append(val_map)
    if val_map > record["best_val_map"]:  # Strictly greater, as the reference.
        record.update(best_val_map=val_map, best_epoch=epoch)
        run.fence()
        run.checkpointer.save_best(step, state, run.identity_record())
    if run.config.diagnose_false_negatives:
        for name, value in run.unobserved_train_losses(state).items():
            record.setdefault(f"train_{name}_loss", []).append(value)
    stop = val_map < record["best_val_map"] - run.config.early_stop_drop
    record["stopped_early"] = bool(stop)
    logging.info(
        "epoch %d: val mAP %.2f (best %.2f, epoch %d)%s",
        epoch, val_map, record["best_val_map"], record["best_epoch"],
        "; stopping early" if stop else "",
    )  # fmt: skip
    return stop


def _add_selection_totals(record: dict, totals: dict[str, float]) -> None:
    """Adds a log interval's selection counts to the epoch's (kept in the record, so that a
    resumed epoch counts the steps before its checkpoint too)."""
    epoch = record.setdefault("selection_this_epoch", dict.fromkeys(totals, 0.0))
    for name, value in totals.items():
        epoch[name] += value


def _close_selection_epoch(record: dict) -> None:
    totals = record.pop("selection_this_epoch", None)
    quality = metrics.selection_quality(totals) if totals else {"precision": None, "recall": None}
    for name, value in quality.items():
        record.setdefault(f"train_selection_{name}", []).append(value)


def _epoch_scalars(record: dict) -> dict[str, float]:
    scalars = {"val/map": record["val_map"][-1]}
    for name in ("precision", "recall"):
        value = record.get(f"train_selection_{name}", [None])[-1]
        if value is not None:
            scalars[f"train/selection_{name}"] = value
    for name in ("false_negative", "true_negative"):
        if f"train_{name}_loss" in record:
            scalars[f"train/{name}_loss"] = record[f"train_{name}_loss"][-1]
    return scalars


def _train(run: _Run, state: TrainState, record: dict, writer, stop_request) -> TrainState:
    """The loop from the restored step to the end, an early stop or a stop request."""
    config, step = run.config, int(jax.device_get(state.step))
    report = periodic_actions.ReportProgress(num_train_steps=run.total_steps, writer=writer)
    train_metrics, first_loss = None, []
    batches = input_pipeline.TimedBatches(run.train_batches(start=step))
    for batch in batches:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, update, scheduled = run.jit_train_step(
                state, input_pipeline.to_global(batch, run.data_sharding)
            )
        train_metrics = update if train_metrics is None else train_metrics.merge(update)
        step += 1
        report(step)
        epoch_ends = step % run.steps_per_epoch == 0
        stop_now = stop_request.agreed(step, every=config.log_every_steps)
        save = epoch_ends or step % config.checkpoint.every_steps == 0 or stop_now
        if step % config.log_every_steps == 0 or save:
            _add_selection_totals(record, metrics.selection_totals(train_metrics))
            train_monitor.log_train_metrics(writer, step, train_metrics, run, first_loss)
            writer.write_scalars(step, train_monitor.schedule_scalars(scheduled))
            writer.write_scalars(step, batches.take_scalars())
            train_metrics = None
        stop = epoch_ends and _end_of_epoch(run, state, step, record)
        if epoch_ends:
            writer.write_scalars(step, _epoch_scalars(record))
        if save:
            run.fence()  # Orbax also deletes the steps past `max_to_keep` here.
            run.checkpointer.save(step, state, record)
        # A signal during the epoch's evaluation stops at this epoch end, saved just above.
        if stop or stop_now or (epoch_ends and stop_request.agreed(step, every=1)):
            break
    return state


def _finish(run: _Run, state: TrainState, record: dict, writer, elapsed: float) -> dict:
    """Test mAP of the best-val checkpoint; `results.json` and a summary."""
    abstract = checkpointing.abstract_like(state, run.replicated)
    best = run.checkpointer.restore_best(abstract, run.check_identity)
    if best is None:
        raise FileNotFoundError(
            f"the best-val state (epoch {record['best_epoch']}) is missing or does not restore "
            f"from {run.workdir}/checkpoints/best (a failed one is in checkpoints/quarantine); "
            "the test of the best model cannot run: train again in a new --workdir"
        )
    test_map = run.evaluate(best, "test")
    writer.write_scalars(int(jax.device_get(state.step)), {"test/map": test_map})
    results = {
        "val_map": record["val_map"],
        "best_epoch": record["best_epoch"],
        "best_val_map": record["best_val_map"],
        "test_map": test_map,
        "val_labels": run.config.data.val_labels,
        "stopped_early": record["stopped_early"],
        **{key: value for key, value in record.items() if key.endswith("negative_loss")},
        "train_selection_precision": record.get("train_selection_precision", []),
        "train_selection_recall": record.get("train_selection_recall", []),
        "observed_labels_sha256": record["observed_labels_sha256"],
        "run_id": run.identity.run_id,
        "final_step": int(jax.device_get(state.step)),
        "train_seconds_this_session": elapsed,
        "config": workdir_lib.config_json(run.config),
    }
    run.fence()
    workdir_lib.write_results(results, run.workdir)
    logging.info(
        "\n  scheme %s on %s: test mAP %.2f (best val mAP %.2f at epoch %d of %d)"
        "\n  val mAP per epoch: %s\n  results: %s/results.json",
        run.config.scheme.name, run.config.data.name, test_map, record["best_val_map"],
        record["best_epoch"], len(record["val_map"]),
        " ".join(f"{v:.2f}" for v in record["val_map"]), run.workdir,
    )  # fmt: skip
    return results


def _linear_init(run: _Run, state: TrainState, writer, stop_request) -> TrainState:
    """LinearInit (`config.linear_init`): the head alone on frozen features, resumable.

    A stop request is honoured at every batch of the feature pass (nothing to save) and at
    every step of the head's loop (saved there first).
    """
    config = run.config.linear_init
    optim_config = dict(run.config.optim, learning_rate=config.learning_rate)
    tx, _ = optim.create(**optim_config, head_name=models.HEAD_NAME)
    create = jax.jit(
        functools.partial(linear_init.create_head_state, tx=tx), out_shardings=run.replicated
    )
    head_state = create(state.params[models.HEAD_NAME], state.scheme_state, state.scheme_params)
    checkpoint_dir = f"{run.workdir}/checkpoints/linear_init"
    checkpointer = checkpointing.Checkpointer(checkpoint_dir, max_to_keep=1)
    try:
        if checkpointer.latest_step() is not None:
            abstract = checkpointing.abstract_like(head_state, run.replicated)
            head_state, _ = checkpointer.restore_latest(abstract, run.check_identity)
        head_state = _train_head(run, state, head_state, checkpointer, writer, stop_request)
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
    params = {**state.params, models.HEAD_NAME: head_state.head}
    trainable = optim.trainable(params, head_state.scheme_params)
    return state.replace(
        params=params,
        scheme_state=head_state.scheme_state,
        scheme_params=head_state.scheme_params,
        opt_state=jax.jit(run.tx.init, out_shardings=run.replicated)(trainable),
    )


def _train_head(run: _Run, state: TrainState, head_state, checkpointer, writer, stop_request):
    """LinearInit's loop from the restored step: `state`'s features once, then the head."""
    config, train, every = run.config.linear_init, run.splits["train"], run.config.log_every_steps
    steps_per_epoch = input_pipeline.steps_per_epoch(train.num_examples, config.batch_size)
    start, total = int(jax.device_get(head_state.step)), config.num_epochs * steps_per_epoch
    logging.info("LinearInit: the head alone, steps %d to %d", start, total)
    if start >= total:
        return head_state

    def check_stop(index: int) -> None:
        if stop_request.agreed(index, every=every):
            raise stop_request_lib.RunInterruptedError(stop_request.signal_name, start, total, None)

    features = linear_init.extract_features(
        jax.jit(functools.partial(steps.features_step, model=run.model)),
        state, train, data_sharding=run.data_sharding,
        check_stop=check_stop, batch_size=config.batch_size,
        image_size=run.config.data.image_size, num_threads=run.config.data.num_threads,
    )  # fmt: skip
    jit_step = jax.jit(
        functools.partial(linear_init.head_step, head=run.head, scheme=run.scheme),
        donate_argnums=0,
        out_shardings=(run.replicated, run.replicated),
    )
    local = input_pipeline.local_slice(config.batch_size, jax.process_index(), jax.process_count())
    for step in range(start, total):
        batch = linear_init.feature_batch(
            features, train.labels_obs, seed=run.config.seed, step=step,
            batch_size=config.batch_size,
        )  # fmt: skip
        local_batch = {key: value[local] for key, value in batch.items()}
        head_state, loss = jit_step(
            head_state, input_pipeline.to_global(local_batch, run.data_sharding)
        )
        epoch_ends = (step + 1) % steps_per_epoch == 0
        stop_now = stop_request.agreed(step + 1, every=every)
        if epoch_ends:
            writer.write_scalars(step + 1, {"linear_init/loss": float(jax.device_get(loss))})
        if epoch_ends or stop_now:
            run.fence()
            checkpointer.save(step + 1, head_state, run.identity_record())
        if stop_now:
            checkpointer.wait_until_finished()
            raise stop_request_lib.RunInterruptedError(
                stop_request.signal_name, step + 1, total,
                f"{run.workdir}/checkpoints/linear_init/latest",
            )  # fmt: skip
    return head_state


def _restore(run: _Run, state: TrainState, record: dict) -> tuple[TrainState, dict, bool]:
    """The newest checkpoint that restores, checked against the config and the run's
    identity before its arrays are read; or the fresh state. Sets `run.identity`.

    Raises:
      workdir.ConfigMismatchError: a checkpoint or `run.json` of another config.
      run_identity.ForeignStateError: checkpoints of another run in the workdir.
    """
    stored = run_identity.read(run.workdir)

    def check(saved: dict[str, Any], source: str) -> None:
        if "config" in saved:  # Checkpoints written before the record held it have none.
            workdir_lib.check_same_config(saved["config"], run.config, source)
        if stored is not None:
            run_identity.check_record(stored, saved, source)

    abstract = checkpointing.abstract_like(state, run.replicated)
    restored = run.checkpointer.restore_latest(abstract, check)
    resumed = restored is not None
    if resumed:
        state, record = restored
    if stored is not None and stored.config_sha256 != workdir_lib.config_digest(run.config):
        raise workdir_lib.ConfigMismatchError(
            f"{run.workdir}/{run_identity.RUN_FILE} holds a run of a different config "
            f"(run {stored.run_id}); use another --workdir or the same config"
        )
    run.identity = stored or run_identity.of_record(record) or run_identity.new(run.config)
    record["identity"] = run.identity.to_json()
    _check_best_states(run, abstract, record)
    if stored is None:
        run.fence()
        run_identity.write(run.identity, run.workdir)
    if resumed:
        logging.info("Resumed from %s/checkpoints/latest/%d", run.workdir, _step(state))
    return state, record, resumed


def _check_best_states(run: _Run, abstract, record: dict) -> None:
    """Every best state must be this run's; the one the record names must restore."""
    for step in run.checkpointer.steps("best"):
        source = f"{run.workdir}/checkpoints/best/{step}"
        try:
            saved = run.checkpointer.read_record("best", step)
        except Exception:  # Corrupt: quarantined when the final test restores it.
            continue
        run.check_identity(saved, source)
    if record["best_epoch"] and run.checkpointer.restore_best(abstract, run.check_identity) is None:
        logging.error(
            "the best-val state (epoch %d) does not restore; unless a later epoch beats it, "
            "the final test cannot run", record["best_epoch"],
        )  # fmt: skip


def _step(state: TrainState) -> int:
    return int(jax.device_get(state.step))


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState | None:
    """Trains (or resumes) per `config` in `workdir`; tests the best-val model at the end.

    Holds the workdir's lease throughout, so a second run there refuses.

    Returns:
      The final train state (the best-val state is in `workdir/checkpoints/best`), or None
      when the workdir already holds the finished run (its stored results are reported).

    Raises:
      config_checks.ConfigError: a config value that cannot run.
      workdir.ConfigMismatchError: the workdir holds a run of another config.
      workdir_lock.WorkdirLockedError: another live run holds the workdir.
      stop_request.RunInterruptedError: SIGTERM or SIGINT stopped the run after a checkpoint.
    """
    workdir = str(workdir)
    config_checks.check(config)
    stored = workdir_lib.finished_results(config, workdir)
    if stored is not None:
        _report_stored(stored, workdir)
        return None
    lock = workdir_lock.WorkdirLock(workdir, **_lease_timings())
    _take_lease(lock)
    try:
        return _train_and_evaluate(config, workdir, lock)
    finally:
        lock.release()


def _lease_timings() -> dict[str, float]:
    """`LLN_LEASE_S` and `LLN_LEASE_RENEW_S` override the lease's 120 s and 20 s."""
    timings = {"lease_s": "LLN_LEASE_S", "renew_s": "LLN_LEASE_RENEW_S"}
    return {key: float(os.environ[name]) for key, name in timings.items() if name in os.environ}


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, lock: workdir_lock.WorkdirLock
) -> TrainState:
    workdir_lib.check_config_file(config, workdir)  # Before the data is opened.
    run = _Run(config, workdir, lock)
    state, record, resumed = _restore(run, run.init_state(), _fresh_record(run.splits, config))
    if record["observed_labels_sha256"] != _labels_digest(run.splits["train"].labels_obs):
        raise ValueError("the observed labels differ from those the checkpoint was trained on")
    run.fence()
    workdir_lib.write_config(config, workdir)
    _log_build_facts(config, run.splits, run, state)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    stop_request, start = stop_request_lib.StopRequest(lock), time.time()
    try:
        if not resumed:
            writer.write_hparams(workdir_lib.flat(config))
            if config.linear_init.num_epochs > 0:
                state = _linear_init(run, state, writer, stop_request)
        if not (record["stopped_early"] or _step(state) >= run.total_steps):
            state = _train(run, state, record, writer, stop_request)
        run.checkpointer.wait_until_finished()
        step = _step(state)
        if stop_request.agreed(step, every=config.log_every_steps, final=True):
            # Even after the last step: the test then runs on the rerun.
            raise stop_request_lib.RunInterruptedError(
                stop_request.signal_name, step, run.total_steps,
                f"{workdir}/checkpoints/latest",
            )  # fmt: skip
        _finish(run, state, record, writer, time.time() - start)
    finally:  # Even on an error, the saves already started complete.
        stop_request.restore_defaults()
        run.checkpointer.wait_until_finished()
        run.checkpointer.close()
        writer.flush()
    return state
