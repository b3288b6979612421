"""The loss-scheme contract: `LossScheme`, `SchemeContext`, and the checks every scheme shares.

A scheme is a `LossScheme`, a named tuple of pure functions modelled on optax's
`GradientTransformation`:

- `init() -> state`: the scheme's explicit state (empty, or LL-Cp's `[N, C]` table);
- `apply(logits, batch, state, rate, params=()) -> (loss, new_state, aux)`: the batch loss;
- `rate_fn(step) -> rate`: the selection rate of SPEC.md section 3 at a 0-indexed step;
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
Aux = dict[str, jax.Array]


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


class LossScheme(NamedTuple):
    """A loss scheme: pure functions with explicit state (see the module docstring)."""

    init: Callable[[], PyTree]
    apply: Callable[..., tuple[jax.Array, PyTree, Aux]]
    rate_fn: Callable[[jax.Array], jax.Array]
    init_params: Callable[[jax.Array, jax.Array], PyTree] = no_params


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


def diagnostics(rate, k, modified: jax.Array, flipped: jax.Array, mask: jax.Array) -> Aux:
    """Aux: scalars for logging, `[B, C]` masks for inspection and tests."""
    num_entries = jnp.maximum(jnp.sum(mask > 0) * modified.shape[1], 1)
    return {
        "rate": jnp.asarray(rate, jnp.float32),
        "k": jnp.asarray(k, jnp.int32),
        "modified_fraction": jnp.sum(modified) / num_entries,
        "modified": modified,
        "flipped": flipped,
    }


def no_selection(logits: jax.Array, mask: jax.Array) -> Aux:
    """The diagnostics of a scheme that selects nothing."""
    nothing = jnp.zeros(logits.shape, bool)
    return diagnostics(jnp.float32(0.0), jnp.int32(0), nothing, nothing, mask)


def zero_rate(step: jax.Array) -> jax.Array:
    """The rate of a scheme that never selects: 0 at every step."""
    return jnp.zeros_like(jnp.asarray(step), dtype=jnp.float32)
