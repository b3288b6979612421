"""Elementwise loss math: the stable per-entry BCE and the one batch reduction.

Knows nothing about loss schemes, schedules or selection; `schemes.py` builds on it.
"""

import jax
import jax.numpy as jnp


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Unreduced binary cross-entropy on logits, `[B, C] -> [B, C]`, in float32.

    Written with `log_sigmoid` of `+-logits` (the softplus form), so it is exact for
    saturated logits and needs no epsilon: `BCE(x, t) = -t log s(x) - (1 - t) log s(-x)`.

    Args:
      logits: `[B, C]` raw scores.
      targets: `[B, C]` targets in [0, 1] (any numeric or boolean dtype).

    Returns:
      `[B, C]` float32 per-entry losses.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    return -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def mean_over_entries(loss_matrix: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `[B, C]` losses over the `B_real * C` entries of the real examples.

    This is the paper's (and the official code's) reduction: rejected entries are zeros that
    stay in the denominator. Padding rows (`mask == 0`) count neither in the sum nor in the
    denominator, so a padded last batch gives the mean over its real examples.

    Args:
      loss_matrix: `[B, C]` per-entry losses.
      mask: `[B]` 1 for real examples, 0 for padding.

    Returns:
      A float32 scalar.
    """
    row_mask = mask.astype(jnp.float32)[:, None]
    num_entries = jnp.sum(row_mask) * loss_matrix.shape[1]
    return jnp.sum(loss_matrix * row_mask) / jnp.maximum(num_entries, 1.0)
