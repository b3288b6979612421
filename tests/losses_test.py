"""The stable BCE and the B*C reduction against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lln_jax.schemes import losses


def _naive_bce(x: float, t: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))


@pytest.mark.parametrize(
    ("logit", "target"),
    [(0.0, 0.0), (0.0, 1.0), (2.0, 1.0), (2.0, 0.0), (-3.5, 1.0), (-3.5, 0.0), (0.7, 0.3)],
)
def test_bce_matches_the_definition(logit, target):
    got = losses.sigmoid_bce(jnp.array([[logit]]), jnp.array([[target]]))
    np.testing.assert_allclose(got[0, 0], _naive_bce(logit, target), rtol=1e-6)


@pytest.mark.parametrize(
    ("logit", "target", "expected"),
    [
        (100.0, 1.0, 0.0),  # exp(-100) underflows float32 to 0 in the loss
        (100.0, 0.0, 100.0),  # softplus(100) = 100 + log1p(exp(-100))
        (-100.0, 1.0, 100.0),
        (-100.0, 0.0, 0.0),
        (1e4, 0.0, 1e4),  # a naive log(1 - sigmoid) would give inf here
    ],
)
def test_bce_is_exact_for_saturated_logits(logit, target, expected):
    got = losses.sigmoid_bce(jnp.array([[logit]]), jnp.array([[target]]))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6, atol=1e-6)


def test_bce_gradient_is_sigmoid_minus_target_even_when_saturated():
    logits = jnp.array([[-50.0, 0.0, 50.0]])
    targets = jnp.array([[1.0, 1.0, 0.0]])
    grad = jax.grad(lambda x: losses.sigmoid_bce(x, targets).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(logits) - targets, atol=1e-7)


def test_bce_is_float32_for_any_input_dtype():
    got = losses.sigmoid_bce(jnp.zeros((2, 3), jnp.bfloat16), jnp.zeros((2, 3), bool))
    assert got.dtype == jnp.float32


def test_mean_counts_every_real_entry_and_no_padding():
    loss_matrix = jnp.array([[1.0, 0.0, 2.0], [3.0, 3.0, 3.0], [100.0, 100.0, 100.0]])
    mask = jnp.array([1.0, 1.0, 0.0])
    # (1 + 0 + 2 + 9) / (2 rows * 3 classes): the zero stays in the denominator.
    np.testing.assert_allclose(losses.mean_over_entries(loss_matrix, mask), 12.0 / 6.0)


def test_mean_of_an_all_padding_batch_is_zero():
    got = losses.mean_over_entries(jnp.ones((2, 3)), jnp.zeros(2))
    assert float(got) == 0.0
