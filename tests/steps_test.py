"""The train step: sharded over 8 devices equals one device; compiles once across epochs."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from conftest import NUM_DEVICES

from lln_jax import models, schemes
from lln_jax.evaluation import metrics
from lln_jax.run import sharding
from lln_jax.training import optim, steps
from lln_jax.training.train_state import create_train_state

BATCH, CLASSES, SIZE, STEPS_PER_EPOCH = 16, 5, 32, 2


def _build(scheme_name="ll_cp", num_epochs=4):
    context = schemes.SchemeContext(3 * BATCH, CLASSES, BATCH, STEPS_PER_EPOCH, num_epochs)
    hparams = {} if scheme_name == "an" else {"delta_rel": 0.05}
    scheme = schemes.create(scheme_name, context=context, **hparams)
    # Plain SGD: the update is -lr * grad, so updated params expose the gradients.
    tx, _ = optim.create(
        "sgd", learning_rate=0.1, head_lr_multiplier=10.0, scheme_lr_multiplier=10.0,
        head_name=models.HEAD_NAME, momentum=0.0, weight_decay=0.0,
    )  # fmt: skip
    model = models.create("resnet_tiny", num_classes=CLASSES)
    state = create_train_state(
        jax.random.PRNGKey(0), model=model, tx=tx, scheme=scheme, image_shape=(SIZE, SIZE, 3),
        labels_obs=jnp.zeros((3 * BATCH, CLASSES), jnp.int8),
    )  # fmt: skip
    return model, scheme, state


def _batch(seed, num_real=BATCH):
    rng = np.random.default_rng(seed)
    labels_obs = np.zeros((BATCH, CLASSES), np.int8)
    labels_obs[np.arange(BATCH), rng.integers(0, CLASSES, BATCH)] = 1
    return {
        "image": rng.integers(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.uint8),
        "labels_obs": labels_obs,
        "labels_true": labels_obs.clip(0, 1),
        "example_id": rng.permutation(3 * BATCH)[:BATCH].astype(np.int32),
        "mask": (np.arange(BATCH) < num_real).astype(np.float32),
    }


def test_sharded_step_equals_single_device_step():
    assert jax.device_count() == NUM_DEVICES
    model, scheme, state = _build()
    state = state.replace(step=jnp.int32(STEPS_PER_EPOCH))  # Epoch 2: k > 0.
    batch = _batch(0, num_real=13)
    step_fn = functools.partial(steps.train_step, model=model, scheme=scheme)

    one = jax.devices()[0]
    single_state, single_metrics, scheduled = jax.jit(step_fn)(*jax.device_put((state, batch), one))
    np.testing.assert_allclose(scheduled.rate, 0.05)  # The rate of epoch 2, returned as used.

    mesh = sharding.create_mesh()
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    sharded_batch = jax.device_put(batch, data)
    assert len(sharded_batch["image"].sharding.device_set) == NUM_DEVICES
    sharded_state, sharded_metrics, _ = jax.jit(step_fn, out_shardings=(repl, repl, repl))(
        jax.device_put(state, repl), sharded_batch
    )

    tolerance = dict(rtol=2e-5, atol=2e-6)
    chex.assert_trees_all_close(sharded_state.params, single_state.params, **tolerance)
    chex.assert_trees_all_close(sharded_state.batch_stats, single_state.batch_stats, **tolerance)
    chex.assert_trees_all_equal(sharded_state.scheme_state, single_state.scheme_state)
    assert int(sharded_state.scheme_state.corrected.sum()) == int(np.ceil(13 * CLASSES * 0.05))
    single, sharded = single_metrics.compute(), sharded_metrics.compute()
    for name in ("loss", "grad_norm", "k", "modified_fraction"):
        np.testing.assert_allclose(sharded[name], single[name], rtol=2e-5)
    # BatchNorm statistics are global: they equal those of the whole batch on one device.
    assert not jax.tree.all(
        jax.tree.map(lambda a, b: np.allclose(a, b), sharded_state.batch_stats, state.batch_stats)
    )


def test_step_compiles_once_across_epochs_and_a_padded_last_batch():
    model, scheme, state = _build(num_epochs=4)
    mesh = sharding.create_mesh()
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)

    @chex.assert_max_traces(n=1)
    def step_fn(state, batch):
        return steps.train_step(state, batch, model=model, scheme=scheme)

    jit_step = jax.jit(step_fn, donate_argnums=0, out_shardings=(repl, repl, repl))
    state, ks = jax.device_put(state, repl), []
    for step in range(4 * STEPS_PER_EPOCH):
        num_real = BATCH - 5 if step % STEPS_PER_EPOCH == 1 else BATCH  # Padded epoch ends.
        state, step_metrics, _ = jit_step(state, jax.device_put(_batch(step, num_real), data))
        ks.append(int(step_metrics.compute()["k"]))
    assert int(state.step) == 4 * STEPS_PER_EPOCH
    assert ks == [0, 0, 4, 3, 4, 3, 4, 3]  # ceil(B_real * C * 0.05): k varies, no retrace.


def test_eval_step_returns_scores_labels_and_mask():
    model, _, state = _build()
    batch = _batch(3, num_real=10)
    outputs = jax.jit(functools.partial(steps.eval_step, model=model))(state, batch)
    assert outputs["scores"].shape == (BATCH, CLASSES)
    assert np.all((outputs["scores"] > 0) & (outputs["scores"] < 1))
    np.testing.assert_array_equal(outputs["mask"], batch["mask"])
    metric = metrics.MeanAveragePrecision.from_model_output(**metrics.gather_to_host(outputs))
    assert 0.0 <= metric.compute() <= 100.0
