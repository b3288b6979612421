"""LinearInit: the head alone on frozen features, then the end-to-end run; resumable."""

import json
import os
import signal

import chex
import jax
import numpy as np
import pytest
from clu import metric_writers
from conftest import load_config

from lln_jax import models
from lln_jax.data import labeled_splits
from lln_jax.run import checkpointing, run_identity, stop_request
from lln_jax.training import evaluation, experiment, initial_state, linear_init, trainer
from lln_jax.training.session import Session


def _config(data_dir, num_epochs=2, scheme="role"):
    return load_config(
        "digits.py", f"scheme={scheme},linear_init,runlocal",
        **{"data.data_dir": data_dir, "linear_init.num_epochs": num_epochs},
    )  # fmt: skip


# One identity for every phase of a test, whose configs differ in the number of epochs.
IDENTITY = run_identity.RunIdentity("linear-init-test", "config")


def _head_phase(config, workdir, stop=None):
    built = experiment.build(config)
    initial = initial_state.fresh_state(built)
    session = Session(
        workdir=str(workdir), lease=None,
        checkpointer=checkpointing.Checkpointer(f"{workdir}/checkpoints"),
        stop=stop or stop_request.StopRequest(), identity=IDENTITY,
        writer=metric_writers.MultiWriter([]),
    )  # fmt: skip
    try:
        state = linear_init.run(built, session, initial)
    finally:
        session.checkpointer.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return jax.device_get(initial), jax.device_get(state)


def _sigterm_at_head_step(monkeypatch, step: int) -> None:
    feature_batch = linear_init.feature_batch

    def batch_then_signal(*args, **kwargs):
        if kwargs["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return feature_batch(*args, **kwargs)

    monkeypatch.setattr(linear_init, "feature_batch", batch_then_signal)


def test_sigterm_stops_the_feature_pass_at_once(data_dir, tmp_path):
    stop = stop_request.StopRequest()
    os.kill(os.getpid(), signal.SIGTERM)  # Before the first batch of features.
    with pytest.raises(
        stop_request.RunInterruptedError,
        match="SIGTERM: stopped at step 0 of 30; nothing of this phase needed saving",
    ):
        _head_phase(_config(data_dir), tmp_path, stop)
    assert not list((tmp_path / "checkpoints" / "linear_init" / "latest").iterdir())


def test_sigterm_in_the_head_loop_saves_that_step_and_stops(data_dir, tmp_path, monkeypatch):
    _sigterm_at_head_step(monkeypatch, 3)
    with pytest.raises(
        stop_request.RunInterruptedError,
        match=r"stopped at step 4 of 30; the checkpoint of step 4 is in .*linear_init/latest",
    ):
        _head_phase(_config(data_dir), tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints/linear_init/latest").iterdir()] == ["4"]


def test_the_head_trains_alone_and_the_run_starts_from_it(data_dir, tmp_path):
    config = _config(data_dir)
    assert (config.linear_init.num_epochs, config.linear_init.learning_rate) == (2, 1e-3)
    initial, state = _head_phase(config, tmp_path)
    head = models.HEAD_NAME
    backbone = {k: v for k, v in state.params.items() if k != head}
    chex.assert_trees_all_equal(backbone, {k: v for k, v in initial.params.items() if k != head})
    chex.assert_trees_all_equal(state.batch_stats, initial.batch_stats)  # Eval-mode features.
    assert not np.allclose(state.params[head]["kernel"], initial.params[head]["kernel"])
    assert not np.allclose(state.scheme_params.logits, initial.scheme_params.logits)  # ROLE's.
    # The end-to-end optimizer starts fresh (Adam: step count and moments all zero).
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(state.opt_state))


@pytest.mark.slow
def test_a_head_phase_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(data_dir, tmp_path):
    _, whole = _head_phase(_config(data_dir), tmp_path / "whole")
    _head_phase(_config(data_dir, num_epochs=1), tmp_path / "stopped")  # Saved after epoch 1.
    _, resumed = _head_phase(_config(data_dir), tmp_path / "stopped")
    chex.assert_trees_all_equal(resumed.params, whole.params)
    chex.assert_trees_all_equal(resumed.scheme_params, whole.scheme_params)


@pytest.mark.slow
def test_a_head_phase_stopped_by_sigterm_resumes_bit_exact(data_dir, tmp_path, monkeypatch):
    _, whole = _head_phase(_config(data_dir), tmp_path / "whole")
    _sigterm_at_head_step(monkeypatch, 20)
    with pytest.raises(stop_request.RunInterruptedError, match="stopped at step 21 of 30"):
        _head_phase(_config(data_dir), tmp_path / "stopped")
    monkeypatch.undo()
    _, resumed = _head_phase(_config(data_dir), tmp_path / "stopped")
    chex.assert_trees_all_equal(resumed.params, whole.params)
    chex.assert_trees_all_equal(resumed.scheme_params, whole.scheme_params)


@pytest.mark.slow
def test_a_run_with_linear_init_trains_end_to_end(data_dir, tmp_path):
    config = _config(data_dir, scheme="ll_cp")
    config.num_epochs = 1
    trainer.train_and_evaluate(config, str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["linear_init"]["num_epochs"] == 2
    assert 0.0 < results["test_map"] <= 100.0
    assert (tmp_path / "checkpoints" / "linear_init").exists()


def test_feature_batches_cover_every_example_once_per_epoch():
    features = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    labels = np.zeros((10, 3), np.int8)
    seen = []
    for step in range(3):  # 10 examples, batch 4: 4 + 4 + 2 real rows.
        batch = linear_init.feature_batch(features, labels, seed=0, step=step, batch_size=4)
        seen.extend(batch["example_id"][batch["mask"] > 0].tolist())
        np.testing.assert_array_equal(batch["features"][:, 0], batch["example_id"])
    assert sorted(seen) == list(range(10))


def test_features_come_back_in_split_order_whatever_the_device_order(monkeypatch):
    """On a pod the gathered batch follows the mesh's devices, not the processes' slices:
    here every gathered batch arrives reversed."""
    from lln_jax.data import input_pipeline
    from lln_jax.run import sharding

    num = 13
    split = labeled_splits.Split(
        source=None, rows=np.arange(num), labels_true=np.zeros((num, 2), np.int8),
        labels_obs=np.zeros((num, 2), np.int8), name="train",
    )  # fmt: skip

    def reversed_features(state, batch):
        del state
        features = batch["example_id"].astype(np.float32)[:, None] * np.ones((1, 3), np.float32)
        outputs = {"features": features, "example_id": batch["example_id"], "mask": batch["mask"]}
        return jax.tree.map(lambda x: x[::-1], outputs)

    def labels_only(index):  # The pipeline's batches, without images (none are needed).
        ids, mask, _ = loader.positions(index)
        return {"example_id": ids.astype(np.int32), "mask": mask}

    loader = input_pipeline._BatchLoader(
        split, batch_size=4, image_size=8, seed=0, train=False, process_index=0, process_count=1
    )
    monkeypatch.setattr(
        input_pipeline,
        "batches",
        lambda split, *, start, stop, **_: map(labels_only, range(start, stop)),
    )
    loading = experiment.Loading(
        batch_size=4, eval_batch_size=4, image_size=8, num_threads=1, num_workers=0
    )
    outputs = evaluation.ordered_pass(
        reversed_features, None, split, batch_size=4, loading=loading,
        data_sharding=sharding.data_sharding(sharding.create_mesh(jax.devices()[:1])),
    )  # fmt: skip
    features = evaluation.in_split_order(list(outputs), "features")
    np.testing.assert_array_equal(features[:, 0], np.arange(num))
