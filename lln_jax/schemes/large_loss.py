"""The large-loss family (SPEC.md sections 2-3): LL-R, LL-Ct and LL-Cp.

Among the unobserved entries of the whole global batch, the `k = ceil(B*C*r)` largest
assume-negative losses are rejected (LL-R), trained as positives for this step (LL-Ct), or
trained as positives and written into the observed labels for good (LL-Cp, whose `[N, C]`
table of corrections is the scheme's state).

The schedule gives `apply` the rate (`SelectionRate`) rather than the step, so that the
selection is a function of the quantity the paper defines it by.
Everything that changes during training (the rate, k, the number of real examples) is a
traced value, so neither a new epoch nor a smaller last batch recompiles the step.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lln_jax.schemes import losses
from lln_jax.schemes.contract import (
    EmptyState,
    LossScheme,
    SchemeContext,
    epoch_of_step,
    mask_of,
    selection,
    validate_batch,
)

# Products num_entries * rate within this relative distance of an integer are that integer:
# float32 rounding of `(epoch - 1) * delta_rel * B * C` stays within a few ulps (~2e-7
# relative), and SPEC.md demands that e.g. 16 * 20 * 0.025 gives k = 8, not 9.
_INTEGER_SNAP = 2.0**-20


class SelectionRate(NamedTuple):
    """The large-loss family's schedule: the fraction `r` of the batch's entries to select."""

    rate: jax.Array


class CorrectionState(NamedTuple):
    """LL-Cp's permanent corrections.

    Attributes:
      corrected: `[N, C]` bool; True where an unobserved entry of example `n` (its global
        example id) was corrected to an observed positive. Entries only ever become True.
    """

    corrected: jax.Array


# ----------------------------------------------------------------------------- schedules


def growing_rate(delta_rel: float) -> Callable[[jax.Array], jax.Array]:
    """LL-R / LL-Ct schedule: `r = (epoch - 1) * delta_rel` (1-indexed epochs), at most 1."""
    return lambda epoch: jnp.clip((jnp.asarray(epoch, jnp.float32) - 1.0) * delta_rel, 0.0, 1.0)


def constant_rate_after_first_epoch(delta_rel: float) -> Callable[[jax.Array], jax.Array]:
    """LL-Cp schedule: `r = 0` in epoch 1, `delta_rel` from epoch 2 on (the flips accumulate)."""
    return lambda epoch: jnp.where(jnp.asarray(epoch) > 1, jnp.float32(delta_rel), 0.0)


def num_selected(rate: jax.Array, num_entries: jax.Array) -> jax.Array:
    """k = ceil(num_entries * rate) as int32, exact where the product is an integer.

    Args:
      rate: the fraction of entries to select, in [0, 1].
      num_entries: `B_real * C`, the entries of the real examples of the global batch.

    Returns:
      An int32 scalar k (0 when the rate is 0).
    """
    product = jnp.asarray(num_entries, jnp.float32) * jnp.asarray(rate, jnp.float32)
    nearest = jnp.round(product)
    is_integer = jnp.abs(product - nearest) <= _INTEGER_SNAP * jnp.maximum(nearest, 1.0)
    return jnp.where(is_integer, nearest, jnp.ceil(product)).astype(jnp.int32)


def max_num_selected(epoch_rate_fn: Callable, *, num_entries: int, num_epochs: int) -> int:
    """The largest k that `epoch_rate_fn` reaches over a run: the static bound for top_k.

    Evaluated with the same float32 arithmetic as the traced k, so the two always agree.
    """
    epochs = jax.device_put(np.arange(1, max(num_epochs, 1) + 1, dtype=np.int32))
    k = jax.jit(lambda e: num_selected(jax.vmap(epoch_rate_fn)(e), num_entries))(epochs)
    return int(np.clip(np.max(jax.device_get(k)), 1, num_entries))


# ----------------------------------------------------------------------------- selection


def large_loss_mask(
    loss_matrix: jax.Array, unobserved: jax.Array, k: jax.Array, k_max: int
) -> jax.Array:
    """The modified set M: unobserved entries whose loss ties or beats the k-th largest.

    The ranking runs over the unobserved entries of the whole (global) batch, flattened.
    `jax.lax.top_k` needs a static size, so it takes the `k_max` largest and reads the
    threshold `tau` at the traced index `k - 1`; k may change without a recompile.
    If k exceeds the number of unobserved entries, `tau = -inf` and M is all of them.

    Args:
      loss_matrix: `[B, C]` per-entry losses (treated as data: no gradient flows).
      unobserved: `[B, C]` bool, the entries that may be selected (padding excluded).
      k: int scalar, the number of entries to select; 0 selects nothing.
      k_max: static upper bound on k, at most `B * C`.

    Returns:
      `[B, C]` bool mask M.
    """
    loss_matrix = jax.lax.stop_gradient(loss_matrix)
    scores = jnp.where(unobserved, loss_matrix, -jnp.inf).reshape(-1)
    top_losses, _ = jax.lax.top_k(scores, k_max)
    tau = top_losses[jnp.clip(k - 1, 0, k_max - 1)]
    return unobserved & (loss_matrix >= tau) & (k > 0)


def _reject(loss_matrix: jax.Array, logits: jax.Array, modified: jax.Array) -> jax.Array:
    """LL-R: a modified entry contributes zero (and stays in the mean's denominator)."""
    del logits
    return jnp.where(modified, 0.0, loss_matrix)


def _correct(loss_matrix: jax.Array, logits: jax.Array, modified: jax.Array) -> jax.Array:
    """LL-Ct / LL-Cp: a modified entry is trained as a positive."""
    return jnp.where(modified, losses.sigmoid_bce(logits, jnp.ones_like(logits)), loss_matrix)


# ----------------------------------------------------------------------------- validation


def _validate_delta(delta_rel: float) -> float:
    if not 0.0 <= float(delta_rel) <= 1.0:
        raise ValueError(
            f"delta_rel is a fraction per epoch in [0, 1], got {delta_rel}"
            " (the paper's percent 0.2 is delta_rel=0.002)"
        )
    return float(delta_rel)


# ----------------------------------------------------------------------------- schemes


def apply_corrections(labels_obs: jax.Array, corrected_rows: jax.Array) -> jax.Array:
    """Observed labels `[B, C]` with LL-Cp's corrected entries written as +1."""
    return jnp.where(corrected_rows, jnp.ones_like(labels_obs), labels_obs)


def _rate_schedule(epoch_rate_fn: Callable, steps_per_epoch: int) -> Callable:
    return lambda step: SelectionRate(epoch_rate_fn(epoch_of_step(step, steps_per_epoch)))


def _k_max(epoch_rate_fn: Callable, context: SchemeContext) -> int:
    return max_num_selected(
        epoch_rate_fn,
        num_entries=context.batch_size * context.num_classes,
        num_epochs=context.num_epochs,
    )


def _large_loss_terms(logits, labels_obs, mask, rate, *, action, k_max):
    """AN loss matrix, selection over the real unobserved entries, action, reduction."""
    loss_matrix = losses.sigmoid_bce(logits, labels_obs == 1)
    unobserved = (labels_obs == 0) & (mask[:, None] > 0)
    k = num_selected(rate, jnp.sum(mask > 0) * logits.shape[1])
    modified = large_loss_mask(loss_matrix, unobserved, k, k_max)
    loss = losses.mean_over_entries(action(loss_matrix, logits, modified), mask)
    return loss, modified, k


def _stateless_large_loss(context: SchemeContext, action, epoch_rate_fn) -> LossScheme:
    k_max = _k_max(epoch_rate_fn, context)

    def apply(logits, batch, state, scheduled: SelectionRate, params=()):
        del params
        validate_batch(logits, batch, context.num_classes)
        mask = mask_of(batch, logits)
        loss, modified, k = _large_loss_terms(
            logits, batch["labels_obs"], mask, scheduled.rate, action=action, k_max=k_max
        )
        return loss, state, selection(k, modified, jnp.zeros_like(modified), mask)

    return LossScheme(EmptyState, apply, _rate_schedule(epoch_rate_fn, context.steps_per_epoch))


def large_loss_rejection(context: SchemeContext, *, delta_rel: float) -> LossScheme:
    """LL-R: the large unobserved losses are rejected; the rate grows by `delta_rel` an epoch."""
    return _stateless_large_loss(context, _reject, growing_rate(_validate_delta(delta_rel)))


def large_loss_temporary_correction(context: SchemeContext, *, delta_rel: float) -> LossScheme:
    """LL-Ct: the large unobserved losses are trained as positives for this step only."""
    return _stateless_large_loss(context, _correct, growing_rate(_validate_delta(delta_rel)))


def large_loss_permanent_correction(context: SchemeContext, *, delta_rel: float) -> LossScheme:
    """LL-Cp: as LL-Ct, and every corrected entry becomes an observed positive for good.

    The corrections live in a `CorrectionState` table indexed by global example id, so a
    checkpoint of the train state carries them. The rate is `delta_rel` from epoch 2 on.
    """
    epoch_rate_fn = constant_rate_after_first_epoch(_validate_delta(delta_rel))
    k_max = _k_max(epoch_rate_fn, context)
    num_examples, num_classes = context.num_examples, context.num_classes

    def init():
        return CorrectionState(jnp.zeros((num_examples, num_classes), bool))

    def apply(logits, batch, state, scheduled: SelectionRate, params=()):
        del params
        validate_batch(logits, batch, num_classes)
        if "example_id" not in batch:
            raise KeyError("ll_cp needs batch['example_id'] to index its correction table")
        mask = mask_of(batch, logits)
        example_id = batch["example_id"]
        corrected_rows = state.corrected[example_id]
        labels_obs = apply_corrections(batch["labels_obs"], corrected_rows)
        loss, modified, k = _large_loss_terms(
            logits, labels_obs, mask, scheduled.rate, action=_correct, k_max=k_max
        )
        # Padding rows write out of range and are dropped, so they never touch a real row.
        write_id = jnp.where(mask > 0, example_id, num_examples)
        table = state.corrected.at[write_id].set(corrected_rows | modified, mode="drop")
        return loss, CorrectionState(table), selection(k, modified, modified, mask)

    return LossScheme(init, apply, _rate_schedule(epoch_rate_fn, context.steps_per_epoch))
