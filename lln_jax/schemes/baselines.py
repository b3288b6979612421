"""Assume-negative and the baselines of the paper's table and later methods (SPEC.md section 9).

`an` is the paper's "Naive AN". The others are defined for single-positive labels: Cole et
al.'s `an_ls` (label smoothing), `wan` (weak assume negative), `epr` (expected positive
regularisation) and `role` (online label estimation), and Zhou et al.'s `em` (entropy
maximisation). None of them selects entries or depends on the epoch (`Unscheduled`).

Every entry term is summed over the `B*C` real entries and divided by `B*C`
(`losses.mean_over_entries`); a batch regulariser `R` averages over the real rows.
We use exact log-sigmoid forms where the reference code computes `-log(p + 1e-5)`.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lln_jax.schemes import losses
from lln_jax.schemes.contract import (
    EmptyState,
    LossScheme,
    SchemeContext,
    mask_of,
    no_params,
    no_selection,
    require_single_positive,
    unscheduled,
    validate_batch,
)

# ROLE's estimator starts at logit(0.995) on observed positives (Cole et al.).
_ROLE_POSITIVE_LOGIT = math.log(0.995 / 0.005)
_ROLE_INIT_BOUND = math.log(1.5)  # ... and uniform in +-ln(1.5) elsewhere.


class LabelEstimator(NamedTuple):
    """ROLE's learned label estimates.

    Attributes:
      logits: `[N, C]` float32 theta, one row per train example (its global example id);
        `sigmoid(theta)` is the estimated probability that the label is present.
    """

    logits: jax.Array


def _bce(logits: jax.Array, targets) -> jax.Array:
    return losses.sigmoid_bce(logits, jnp.broadcast_to(targets, logits.shape))


def _positives_per_row(probabilities: jax.Array, mask: jax.Array) -> jax.Array:
    """`mean_i sum_j p_ij` over the real rows of the batch."""
    row_mask = (mask > 0).astype(jnp.float32)
    return jnp.sum(probabilities.sum(axis=1) * row_mask) / jnp.maximum(jnp.sum(row_mask), 1.0)


def _expected_positive_penalty(probabilities, mask, expected_num_pos: float, num_classes: int):
    """`(mean_i sum_j p_ij - k_hat)^2 / C^2`."""
    gap = _positives_per_row(probabilities, mask) - expected_num_pos
    return jnp.square(gap) / num_classes**2


def _scheme(context: SchemeContext, loss_fn, init_params=no_params) -> LossScheme:
    """A scheme with no selection from `loss_fn(logits, labels_obs, mask, batch, params)`."""

    def apply(logits, batch, state, scheduled, params=()):
        del scheduled
        validate_batch(logits, batch, context.num_classes)
        mask = mask_of(batch, logits)
        loss = loss_fn(logits.astype(jnp.float32), batch["labels_obs"], mask, batch, params)
        return loss, state, no_selection(logits, mask)

    return LossScheme(EmptyState, apply, unscheduled, init_params)


def _entry_loss(entry_on_positive, entry_on_unobserved):
    """`loss_fn` of a scheme whose entry term depends only on whether the label is observed."""

    def loss_fn(logits, labels_obs, mask, batch, params):
        del batch, params
        matrix = jnp.where(labels_obs == 1, entry_on_positive(logits), entry_on_unobserved(logits))
        return losses.mean_over_entries(matrix, mask)

    return loss_fn


def assume_negative(context: SchemeContext) -> LossScheme:
    """Naive AN: every unobserved entry is a negative (observed negatives stay negatives)."""

    def loss_fn(logits, labels_obs, mask, batch, params):
        del batch, params
        return losses.mean_over_entries(losses.sigmoid_bce(logits, labels_obs == 1), mask)

    return _scheme(context, loss_fn)


def assume_negative_label_smoothing(
    context: SchemeContext, *, label_smoothing: float
) -> LossScheme:
    """AN-LS: positives trained towards `1 - e`, unobserved entries towards `e`."""
    require_single_positive("an_ls", context)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    e = float(label_smoothing)
    return _scheme(context, _entry_loss(lambda x: _bce(x, 1.0 - e), lambda x: _bce(x, e)))


def weak_assume_negative(context: SchemeContext) -> LossScheme:
    """WAN: an unobserved entry is a negative weighted `1 / (C - 1)`."""
    require_single_positive("wan", context)
    weight = 1.0 / max(context.num_classes - 1, 1)
    return _scheme(context, _entry_loss(lambda x: _bce(x, 1.0), lambda x: weight * _bce(x, 0.0)))


def _validate_expected_num_pos(expected_num_pos: float, num_classes: int) -> float:
    if not 0.0 < expected_num_pos <= num_classes:
        raise ValueError(
            f"expected_num_pos is positives per image in (0, {num_classes}], got {expected_num_pos}"
        )
    return float(expected_num_pos)


def expected_positive_regularisation(
    context: SchemeContext, *, expected_num_pos: float
) -> LossScheme:
    """EPR: BCE on the observed positives; the expected positives per image pulled to k_hat."""
    require_single_positive("epr", context)
    k_hat = _validate_expected_num_pos(expected_num_pos, context.num_classes)
    observed = _entry_loss(lambda x: _bce(x, 1.0), jnp.zeros_like)

    def loss_fn(logits, labels_obs, mask, batch, params):
        penalty = _expected_positive_penalty(
            jax.nn.sigmoid(logits), mask, k_hat, context.num_classes
        )
        return observed(logits, labels_obs, mask, batch, params) + penalty

    return _scheme(context, loss_fn)


def entropy_maximisation(context: SchemeContext, *, entropy_weight: float) -> LossScheme:
    """EM: BCE on the observed positives; the entropy of the unobserved entries maximised."""
    require_single_positive("em", context)
    if entropy_weight < 0.0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
    a = float(entropy_weight)
    # H(p) = softplus(x) - x p = BCE(x, p) with p = sigmoid(x), gradient through both.
    entropy = lambda x: losses.sigmoid_bce(x, jax.nn.sigmoid(x))  # noqa: E731
    return _scheme(context, _entry_loss(lambda x: _bce(x, 1.0), lambda x: -a * entropy(x)))


def online_label_estimation(context: SchemeContext, *, expected_num_pos: float) -> LossScheme:
    """ROLE: the network and a learned `[N, C]` label estimator train each other.

    The estimator is the scheme's params (`LabelEstimator`), indexed by global example id and
    updated by the optimizer (at its own learning rate, SPEC.md section 9).
    """
    require_single_positive("role", context)
    k_hat = _validate_expected_num_pos(expected_num_pos, context.num_classes)
    num_classes = context.num_classes

    def init_params(rng, labels_obs):
        noise = jax.random.uniform(
            rng, labels_obs.shape, jnp.float32, -_ROLE_INIT_BOUND, _ROLE_INIT_BOUND
        )
        return LabelEstimator(jnp.where(labels_obs == 1, _ROLE_POSITIVE_LOGIT, noise))

    def loss_fn(logits, labels_obs, mask, batch, params):
        if "example_id" not in batch:
            raise KeyError("role needs batch['example_id'] to index its label estimator")
        theta = params.logits[batch["example_id"]]
        p, q = jax.nn.sigmoid(logits), jax.nn.sigmoid(theta)
        positive = (labels_obs == 1).astype(jnp.float32)
        matrix = 0.5 * positive * (_bce(logits, 1.0) + _bce(theta, 1.0)) + 0.5 * (
            _bce(logits, jax.lax.stop_gradient(q)) + _bce(theta, jax.lax.stop_gradient(p))
        )
        penalty = 0.5 * (
            _expected_positive_penalty(p, mask, k_hat, num_classes)
            + _expected_positive_penalty(q, mask, k_hat, num_classes)
        )
        return losses.mean_over_entries(matrix, mask) + penalty

    return _scheme(context, loss_fn, init_params)
