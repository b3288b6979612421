"""The single-positive baselines (AN-LS, WAN, EPR, ROLE, EM): build-time checks, padding,
ROLE's estimator, and sharding over 8 devices. Their values are the spec's vectors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NUM_DEVICES

from lln_jax import schemes
from lln_jax.run import sharding

HPARAMS = {
    "an_ls": {"label_smoothing": 0.1},
    "wan": {},
    "epr": {"expected_num_pos": 1.5},
    "role": {"expected_num_pos": 1.5},
    "em": {"entropy_weight": 0.2},
}
BASELINES = tuple(HPARAMS)


def _context(batch_size, num_classes, num_examples=None, observed_negatives=False):
    return schemes.SchemeContext(
        num_examples=batch_size if num_examples is None else num_examples,
        num_classes=num_classes,
        batch_size=batch_size,
        steps_per_epoch=1,
        num_epochs=10,
        observed_negatives=observed_negatives,
    )


def _problem(rows, classes, seed=0):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(rows, classes)) * 2, jnp.float32)
    labels_obs = np.zeros((rows, classes), np.int8)
    labels_obs[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return logits, labels_obs


def _batch(labels_obs, mask=None, example_id=None):
    rows = labels_obs.shape[0]
    return {
        "labels_obs": jnp.asarray(labels_obs, jnp.int8),
        "mask": jnp.ones(rows) if mask is None else jnp.asarray(mask, jnp.float32),
        "example_id": jnp.arange(rows) if example_id is None else jnp.asarray(example_id),
    }


def _loss_and_grads(scheme, logits, batch, params):
    def loss_fn(x, p):
        return scheme.apply(x, batch, scheme.init(), schemes.Unscheduled(), params=p)[0]

    return jax.value_and_grad(loss_fn, argnums=(0, 1))(logits, params)


def test_every_baseline_is_registered_with_its_hyperparameters():
    for name, hparams in HPARAMS.items():
        assert schemes.hyperparameters(name) == tuple(hparams)


@pytest.mark.parametrize("name", BASELINES)
def test_observed_negatives_are_refused_when_the_scheme_is_built(name):
    with pytest.raises(ValueError, match=rf"'{name}' is defined for single-positive labels"):
        schemes.create(name, context=_context(2, 3, observed_negatives=True), **HPARAMS[name])


@pytest.mark.parametrize(
    ("name", "hparams", "error"),
    [
        ("an_ls", {"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0\.5\)"),
        ("epr", {"expected_num_pos": 0.0}, r"expected_num_pos .* \(0, 3\]"),
        ("role", {"expected_num_pos": 4.0}, r"expected_num_pos .* \(0, 3\]"),
        ("em", {"entropy_weight": -0.1}, r"entropy_weight must be >= 0"),
    ],
)
def test_hyperparameters_out_of_range_are_refused(name, hparams, error):
    with pytest.raises(ValueError, match=error):
        schemes.create(name, context=_context(2, 3), **hparams)


@pytest.mark.parametrize("name", BASELINES)
def test_no_baseline_selects_anything(name):
    logits, labels_obs = _problem(4, 3)
    scheme = schemes.create(name, context=_context(4, 3), **HPARAMS[name])
    params = scheme.init_params(jax.random.PRNGKey(0), jnp.asarray(labels_obs))
    scheduled = scheme.schedule(jnp.int32(100))
    assert scheduled == schemes.Unscheduled()
    _, _, aux = scheme.apply(logits, _batch(labels_obs), scheme.init(), scheduled, params=params)
    assert not aux.modified.any() and int(aux.k) == 0


def test_role_estimator_starts_from_the_observed_positives_and_the_seed():
    _, labels_obs = _problem(50, 6)
    scheme = schemes.create("role", context=_context(50, 6), expected_num_pos=1.5)
    theta = scheme.init_params(jax.random.PRNGKey(3), jnp.asarray(labels_obs)).logits
    positive = labels_obs == 1
    np.testing.assert_allclose(theta[positive], math.log(0.995 / 0.005), rtol=1e-6)
    assert np.abs(theta[~positive]).max() <= math.log(1.5)
    assert np.unique(np.asarray(theta[~positive])).size == (~positive).sum()
    again = scheme.init_params(jax.random.PRNGKey(3), jnp.asarray(labels_obs)).logits
    other = scheme.init_params(jax.random.PRNGKey(4), jnp.asarray(labels_obs)).logits
    np.testing.assert_array_equal(again, theta)
    assert not np.allclose(other, theta)


@pytest.mark.parametrize("name", BASELINES)
def test_padding_rows_change_nothing(name):
    logits, labels_obs = _problem(6, 4, seed=1)
    real = schemes.create(name, context=_context(4, 4), **HPARAMS[name])
    padded = schemes.create(name, context=_context(6, 4, num_examples=4), **HPARAMS[name])
    params = real.init_params(jax.random.PRNGKey(0), jnp.asarray(labels_obs[:4]))
    real_loss, (real_grad, real_grad_params) = _loss_and_grads(
        real, logits[:4], _batch(labels_obs[:4]), params
    )
    # Padding rows reuse example ids 0 and 1: they must not touch those rows' estimates.
    padded_batch = _batch(labels_obs, mask=[1, 1, 1, 1, 0, 0], example_id=[0, 1, 2, 3, 0, 1])
    loss, (grad, grad_params) = _loss_and_grads(padded, logits, padded_batch, params)
    np.testing.assert_allclose(loss, real_loss, rtol=1e-6)
    np.testing.assert_allclose(grad[:4], real_grad, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(grad[4:], 0.0)
    chex.assert_trees_all_close(grad_params, real_grad_params, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", BASELINES)
def test_sharded_loss_and_gradients_equal_the_single_device_ones(name):
    assert jax.device_count() == NUM_DEVICES
    logits, labels_obs = _problem(32, 5, seed=2)
    mask = np.ones(32, np.float32)
    mask[-3:] = 0  # A padded last batch.
    batch = _batch(labels_obs, mask=mask, example_id=np.arange(32, dtype=np.int32))
    scheme = schemes.create(name, context=_context(32, 5), **HPARAMS[name])
    params = scheme.init_params(jax.random.PRNGKey(0), jnp.asarray(labels_obs))
    run = jax.jit(lambda x, b, p: _loss_and_grads(scheme, x, b, p))
    single = run(*jax.device_put((logits, batch, params), jax.devices()[0]))
    mesh = sharding.create_mesh()
    sharded_logits, sharded_batch = jax.device_put((logits, batch), sharding.data_sharding(mesh))
    sharded = run(sharded_logits, sharded_batch, jax.device_put(params, sharding.replicated(mesh)))
    chex.assert_trees_all_close(sharded, single, rtol=1e-5, atol=1e-7)
