"""The loss-scheme contract: `LossScheme`, `SchemeContext`, and the checks every scheme shares.

A scheme is a `LossScheme`, a named tuple of pure functions modelled on optax's
`GradientTransformation`:

- `init() -> state`: the scheme's explicit state (empty, or LL-Cp's `[N, C]` table);
- `schedule(step) -> values`: what the scheme's loss depends on besides the batch, as a
  function of the 0-indexed step: a named tuple of scalars (the large-loss family: its
  selection rate, SPEC.md section 3; GR: the epoch and the weights it sets). The train step
  evaluates it traced and passes it to `apply` unchanged; the loop logs each field by name
  (`train/rate`, `train/epoch`, ...). A scheme that depends on nothing returns `Unscheduled()`;
- `apply(logits, batch, state, scheduled, params=()) -> (loss, new_state, aux)`: the batch
  loss, with `aux` a `Selection`;
- `init_params(rng, labels_obs) -> params`: the scheme's *learned* values (ROLE's label
  estimator, `()` for every other scheme). They are trained with the network: the train
  step differentiates the loss with respect to them and the optimizer updates them, so they
  live in the train state beside the model's params, not in `state`.

This module does no I/O and reads no config.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Batch = Mapping[str, jax.Array]

# The step at which a scheme's first-epoch values hold (LinearInit trains the head at them).
FIRST_STEP = 0


class SchemeContext(NamedTuple):
    """Dataset and run facts a scheme is built for, injected by the trainer.

    Attributes:
      num_examples: N, the number of training examples (rows of LL-Cp's and ROLE's tables).
      num_classes: C.
      batch_size: the global batch size B; bounds k statically.
      steps_per_epoch: steps in one epoch, the last partial batch included.
      num_epochs: the number of epochs the run can reach; bounds k statically.
      observed_negatives: whether the train labels hold observed negatives (-1); the
        schemes defined for single-positive labels refuse them.
    """

    num_examples: int
    num_classes: int
    batch_size: int
    steps_per_epoch: int
    num_epochs: int
    observed_negatives: bool = False


def no_params(rng: jax.Array, labels_obs: jax.Array) -> tuple:
    """The learned values of a scheme that learns none."""
    del rng, labels_obs
    return ()


class Selection(NamedTuple):
    """What a scheme selected in one batch (its `aux`): scalars to log, masks to inspect.

    Attributes:
      k: int32, the number of entries the selection asked for (0: none).
      modified_fraction: float32, the modified entries over the real ones.
      modified: `[B, C]` bool, the entries whose loss was rejected or corrected (SPEC's M).
      flipped: `[B, C]` bool, the entries written for good as observed positives (LL-Cp).
    """

    k: jax.Array
    modified_fraction: jax.Array
    modified: jax.Array
    flipped: jax.Array


class Unscheduled(NamedTuple):
    """The schedule's values of a scheme whose loss depends on nothing but the batch."""


class LossScheme(NamedTuple):
    """A loss scheme: pure functions with explicit state (see the module docstring)."""

    init: Callable[[], PyTree]
    apply: Callable[..., tuple[jax.Array, PyTree, Selection]]
    schedule: Callable[[jax.Array], NamedTuple]
    init_params: Callable[[jax.Array, jax.Array], PyTree] = no_params


def first_epoch_values(scheme: LossScheme) -> NamedTuple:
    """The scheme's schedule in the first epoch (no selection for the large-loss family)."""
    return scheme.schedule(jnp.int32(FIRST_STEP))


def epoch_of_step(step: jax.Array, steps_per_epoch: int) -> jax.Array:
    """The 1-indexed epoch that a 0-indexed step belongs to."""
    return jnp.asarray(step) // steps_per_epoch + 1


class EmptyState(NamedTuple):
    """The state of a stateless scheme."""


def validate_batch(logits: jax.Array, batch: Batch, num_classes: int) -> None:
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


def mask_of(batch: Batch, logits: jax.Array) -> jax.Array:
    """`[B]` 1 for real rows, 0 for padding (all ones when the batch has no mask)."""
    return batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))


def selection(k, modified: jax.Array, flipped: jax.Array, mask: jax.Array) -> Selection:
    """The `Selection` of a batch from its masks; the fraction is over the real entries."""
    num_entries = jnp.maximum(jnp.sum(mask > 0) * modified.shape[1], 1)
    return Selection(
        k=jnp.asarray(k, jnp.int32),
        modified_fraction=jnp.sum(modified) / num_entries,
        modified=modified,
        flipped=flipped,
    )


def no_selection(logits: jax.Array, mask: jax.Array) -> Selection:
    """The selection of a scheme that selects nothing."""
    nothing = jnp.zeros(logits.shape, bool)
    return selection(jnp.int32(0), nothing, nothing, mask)


def unscheduled(step: jax.Array) -> Unscheduled:
    """The schedule of a scheme that depends on nothing but the batch."""
    del step
    return Unscheduled()


def require_single_positive(name: str, context: SchemeContext) -> None:
    """Refuses train labels with observed negatives for a scheme defined without them."""
    if context.observed_negatives:
        raise ValueError(
            f"scheme {name!r} is defined for single-positive labels (observed labels in "
            "{0, +1}); these train labels hold observed negatives: choose label_setting "
            "single_positive, or a scheme that handles negatives (an, ll_r, ll_ct, ll_cp)"
        )
