"""Loss schemes: assume-negative and the large-loss family (LL-R, LL-Ct, LL-Cp).

A scheme is a `LossScheme`, a named triple of pure functions modelled on optax's
`GradientTransformation`:

- `init() -> state`: the scheme's explicit state (empty, or LL-Cp's `[N, C]` table);
- `apply(logits, batch, state, rate) -> (loss, new_state, aux)`: the batch loss;
- `rate_fn(step) -> rate`: the rejection rate of SPEC.md section 3 at a 0-indexed step.

`apply` takes the rate rather than the step so that the selection is a function of the
quantity the paper defines it by; the train step evaluates `rate_fn(step)` and passes it in.
Everything that changes during training (the rate, k, the number of real examples) is a
traced value, so neither a new epoch nor a smaller last batch recompiles the step.

Builders receive a `SchemeContext` (dataset facts injected by the trainer) plus their own
hyperparameters; `create(name, context=..., **hparams)` looks them up in `SCHEMES`.
Schemes whose state is *learned* (ROLE-style label estimates) do not fit this contract:
learned values belong in the model's params, not in `state`.

This module does no I/O and reads no config.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lln_jax import losses

PyTree = Any
Batch = Mapping[str, jax.Array]
Aux = dict[str, jax.Array]

# Products num_entries * rate within this relative distance of an integer are that integer:
# float32 rounding of `(epoch - 1) * delta_rel * B * C` stays within a few ulps (~2e-7
# relative), and SPEC.md demands that e.g. 16 * 20 * 0.025 gives k = 8, not 9.
_INTEGER_SNAP = 2.0**-20


class SchemeContext(NamedTuple):
    """Dataset and run facts a scheme is built for, injected by the trainer.

    Attributes:
      num_examples: N, the number of training examples (rows of LL-Cp's table).
      num_classes: C.
      batch_size: the global batch size B; bounds k statically.
      steps_per_epoch: steps in one epoch, the last partial batch included.
      num_epochs: the number of epochs the run can reach; bounds k statically.
    """

    num_examples: int
    num_classes: int
    batch_size: int
    steps_per_epoch: int
    num_epochs: int


class LossScheme(NamedTuple):
    """A loss scheme: pure functions with explicit state (see the module docstring)."""

    init: Callable[[], PyTree]
    apply: Callable[[jax.Array, Batch, PyTree, jax.Array], tuple[jax.Array, PyTree, Aux]]
    rate_fn: Callable[[jax.Array], jax.Array]


class EmptyState(NamedTuple):
    """The state of a stateless scheme."""


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


def zero_rate(epoch: jax.Array) -> jax.Array:
    """Assume-negative schedule: nothing is ever selected."""
    return jnp.zeros_like(jnp.asarray(epoch), dtype=jnp.float32)


def epoch_of_step(step: jax.Array, steps_per_epoch: int) -> jax.Array:
    """The 1-indexed epoch that a 0-indexed step belongs to."""
    return jnp.asarray(step) // steps_per_epoch + 1


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


def _validate_batch(logits: jax.Array, batch: Batch, num_classes: int) -> None:
    """Fails loudly on shapes that do not match, and on bad label values when concrete."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must be [B, {num_classes}], got shape {logits.shape}")
    labels_obs = batch["labels_obs"]
    if labels_obs.shape != logits.shape:
        raise ValueError(f"labels_obs shape {labels_obs.shape} != logits shape {logits.shape}")
    for key in ("mask", "example_id"):
        if key in batch and batch[key].shape != logits.shape[:1]:
            raise ValueError(f"batch[{key!r}] must be [{logits.shape[0]}], got {batch[key].shape}")
    if not isinstance(labels_obs, jax.core.Tracer):
        bad = ~np.isin(np.asarray(labels_obs), (-1, 0, 1))
        if bad.any():
            values = np.unique(np.asarray(labels_obs)[bad]).tolist()
            raise ValueError(f"labels_obs must be in {{-1, 0, 1}}; found {values}")


def _validate_delta(delta_rel: float) -> float:
    if not 0.0 <= float(delta_rel) <= 1.0:
        raise ValueError(
            f"delta_rel is a fraction per epoch in [0, 1], got {delta_rel}"
            " (the paper's percent 0.2 is delta_rel=0.002)"
        )
    return float(delta_rel)


def _mask_of(batch: Batch, logits: jax.Array) -> jax.Array:
    return batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))


# ----------------------------------------------------------------------------- schemes


def apply_corrections(labels_obs: jax.Array, corrected_rows: jax.Array) -> jax.Array:
    """Observed labels `[B, C]` with LL-Cp's corrected entries written as +1."""
    return jnp.where(corrected_rows, jnp.ones_like(labels_obs), labels_obs)


def _step_rate_fn(epoch_rate_fn: Callable, steps_per_epoch: int) -> Callable:
    return lambda step: epoch_rate_fn(epoch_of_step(step, steps_per_epoch))


def _k_max(epoch_rate_fn: Callable, context: SchemeContext) -> int:
    return max_num_selected(
        epoch_rate_fn,
        num_entries=context.batch_size * context.num_classes,
        num_epochs=context.num_epochs,
    )


def _aux(rate: jax.Array, k: jax.Array, modified: jax.Array, flipped: jax.Array, mask) -> Aux:
    """Diagnostics: scalars for logging, `[B, C]` masks for inspection and tests."""
    num_entries = jnp.maximum(jnp.sum(mask > 0) * modified.shape[1], 1)
    return {
        "rate": jnp.asarray(rate, jnp.float32),
        "k": jnp.asarray(k, jnp.int32),
        "modified_fraction": jnp.sum(modified) / num_entries,
        "modified": modified,
        "flipped": flipped,
    }


def _large_loss_terms(logits, labels_obs, mask, rate, *, action, k_max):
    """AN loss matrix, selection over the real unobserved entries, action, reduction."""
    loss_matrix = losses.sigmoid_bce(logits, labels_obs == 1)
    unobserved = (labels_obs == 0) & (mask[:, None] > 0)
    k = num_selected(rate, jnp.sum(mask > 0) * logits.shape[1])
    modified = large_loss_mask(loss_matrix, unobserved, k, k_max)
    loss = losses.mean_over_entries(action(loss_matrix, logits, modified), mask)
    return loss, modified, k


def assume_negative(context: SchemeContext) -> LossScheme:
    """Naive AN: every unobserved entry is a negative; the rate is ignored."""

    def apply(logits, batch, state, rate, params=()):
        del rate, params
        _validate_batch(logits, batch, context.num_classes)
        mask = _mask_of(batch, logits)
        loss_matrix = losses.sigmoid_bce(logits, batch["labels_obs"] == 1)
        nothing = jnp.zeros(logits.shape, bool)
        aux = _aux(jnp.float32(0.0), jnp.int32(0), nothing, nothing, mask)
        return losses.mean_over_entries(loss_matrix, mask), state, aux

    return LossScheme(EmptyState, apply, _step_rate_fn(zero_rate, context.steps_per_epoch))


def _stateless_large_loss(context: SchemeContext, action, epoch_rate_fn) -> LossScheme:
    k_max = _k_max(epoch_rate_fn, context)

    def apply(logits, batch, state, rate, params=()):
        del params
        _validate_batch(logits, batch, context.num_classes)
        mask = _mask_of(batch, logits)
        loss, modified, k = _large_loss_terms(
            logits, batch["labels_obs"], mask, rate, action=action, k_max=k_max
        )
        return loss, state, _aux(rate, k, modified, jnp.zeros_like(modified), mask)

    return LossScheme(EmptyState, apply, _step_rate_fn(epoch_rate_fn, context.steps_per_epoch))


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

    def apply(logits, batch, state, rate, params=()):
        del params
        _validate_batch(logits, batch, num_classes)
        if "example_id" not in batch:
            raise KeyError("ll_cp needs batch['example_id'] to index its correction table")
        mask = _mask_of(batch, logits)
        example_id = batch["example_id"]
        corrected_rows = state.corrected[example_id]
        labels_obs = apply_corrections(batch["labels_obs"], corrected_rows)
        loss, modified, k = _large_loss_terms(
            logits, labels_obs, mask, rate, action=_correct, k_max=k_max
        )
        # Padding rows write out of range and are dropped, so they never touch a real row.
        write_id = jnp.where(mask > 0, example_id, num_examples)
        table = state.corrected.at[write_id].set(corrected_rows | modified, mode="drop")
        return loss, CorrectionState(table), _aux(rate, k, modified, modified, mask)

    return LossScheme(init, apply, _step_rate_fn(epoch_rate_fn, context.steps_per_epoch))


SCHEMES: dict[str, Callable[..., LossScheme]] = {
    "an": assume_negative,
    "ll_r": large_loss_rejection,
    "ll_ct": large_loss_temporary_correction,
    "ll_cp": large_loss_permanent_correction,
}


def create(name: str, *, context: SchemeContext, **hparams: Any) -> LossScheme:
    """Builds the scheme `name` from `SCHEMES` with its hyperparameters.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
      TypeError: for a hyperparameter the scheme does not take, or a missing one.
    """
    if name not in SCHEMES:
        raise ValueError(f"Unknown loss scheme {name!r}; valid schemes: {sorted(SCHEMES)}")
    return SCHEMES[name](context, **hparams)
