"""GR Loss beyond its conformance vectors: its schedule over a run, exact forms where the
public code's give NaN, and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lln_jax import schemes

DEFAULTS = dict(beta=(0.0, 2.0, -2.0, -2.0), alpha=(0.5, 2.0, 0.8, 0.5), q2=0.01, q3=1.0)


def _context(steps_per_epoch=3, num_epochs=8, observed_negatives=False):
    return schemes.SchemeContext(
        num_examples=12, num_classes=3, batch_size=4, steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs, observed_negatives=observed_negatives,
    )  # fmt: skip


def _batch(labels_obs):
    labels_obs = jnp.asarray(labels_obs, jnp.int8)
    rows = labels_obs.shape[0]
    return {"labels_obs": labels_obs, "mask": jnp.ones(rows), "example_id": jnp.arange(rows)}


def test_the_schedule_moves_once_an_epoch_and_w_b_lag_one_epoch():
    scheme = schemes.create("gr", context=_context(steps_per_epoch=3, num_epochs=8), **DEFAULTS)
    weights = jax.vmap(scheme.schedule)(jnp.arange(24, dtype=jnp.int32))
    np.testing.assert_array_equal(weights.epoch, np.repeat(np.arange(1, 9), 3))
    np.testing.assert_allclose(weights.w[-1], 2.0 * 7 / 8)  # Never reaches wT = 2.
    np.testing.assert_allclose(weights.mu[-1], 0.8)  # mu and sigma reach theirs at e = T.
    np.testing.assert_allclose(weights.sigma[-1], 0.5)
    assert np.all(np.diff(weights.mu[::3]) > 0)
    np.testing.assert_allclose(weights.b, -2.0)  # b0 = bT.


def test_linear_init_trains_at_the_first_epoch_weights():
    scheme = schemes.create("gr", context=_context(), **DEFAULTS)
    first = schemes.first_epoch_values(scheme)
    assert float(first.epoch) == 1.0 and float(first.w) == 0.0
    np.testing.assert_allclose(first.mu, 0.5 + 0.3 / 8)


def test_saturated_logits_give_finite_loss_and_gradients():
    scheme = schemes.create("gr", context=_context(), **DEFAULTS)
    logits = jnp.asarray([[-200.0, 200.0, 0.0], [120.0, -150.0, 5.0]])
    batch = _batch([[1, 0, 0], [0, 1, 0]])
    scheduled = scheme.schedule(jnp.int32(5))

    def loss_fn(x):
        return scheme.apply(x, batch, scheme.init(), scheduled)[0]

    loss, grad = jax.value_and_grad(loss_fn)(logits)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    # -log p of a positive at x = -200 is 200 (softplus), not -log(1e-7) = 16.1.
    assert float(loss) * 6 > 200.0


def test_nothing_is_selected_and_padding_counts_nowhere():
    scheme = schemes.create("gr", context=_context(), **DEFAULTS)
    logits = jnp.asarray([[1.0, -1.0, 0.5], [0.3, 2.0, -2.0], [9.0, 9.0, 9.0]])
    labels = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    batch = _batch(labels) | {"mask": jnp.asarray([1.0, 1.0, 0.0])}
    scheduled = scheme.schedule(jnp.int32(0))
    loss, _, aux = scheme.apply(logits, batch, scheme.init(), scheduled)
    real, _, _ = scheme.apply(logits[:2], _batch(labels[:2]), scheme.init(), scheduled)
    np.testing.assert_allclose(loss, real, rtol=1e-6)
    assert int(aux.k) == 0 and not aux.modified.any()


def test_observed_negatives_and_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="'gr' is defined for single-positive labels"):
        schemes.create("gr", context=_context(observed_negatives=True), **DEFAULTS)
    with pytest.raises(ValueError, match=r"beta is \(w0, wT, b0, bT\)"):
        schemes.create("gr", context=_context(), **(DEFAULTS | {"beta": (0.0, 2.0)}))
    with pytest.raises(ValueError, match="sigma0 and sigmaT must be > 0"):
        schemes.create("gr", context=_context(), **(DEFAULTS | {"alpha": (0.5, 0.0, 0.8, 0.5)}))
    with pytest.raises(ValueError, match="q2 and q3 must be > 0"):
        schemes.create("gr", context=_context(), **(DEFAULTS | {"q2": 0.0}))
