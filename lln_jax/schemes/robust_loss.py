"""GR Loss, the generalized robust loss of Chen et al. (IJCAI 2024), SPEC.md section 11.

Single-positive labels only. With `p = sigmoid(x)` and `p'` the same value without
gradient, an observed positive costs `-log p`, and an unobserved entry

    V(p') * [K(p') * (1 - p^q2) / q2 + (1 - K(p')) * (1 - (1 - p)^q3) / q3],

a soft mix of a pseudo-positive and a negative term, with `K(p) = sigmoid(w p + b)` the
pseudo-positive weight and `V(p) = exp(-((p - mu) / sigma)^2 / 2)` a reweighting bump. The
weights move linearly over the 1-indexed epoch `e` of a run of `T` epochs, once per epoch,
as the public code moves them: `w` and `b` at `(e - 1) / T`, one epoch late, `mu` and `sigma`
at `e / T`. The scheme's schedule is therefore the epoch and the four weights (`GrWeights`),
derived from the step; nothing selects, and the scheme keeps no state.

We use exact forms where the public code computes `-log(p + 1e-7)` and `pow(sigmoid(x), q)`
(NaN gradients once the sigmoid underflows): `-log p = softplus(-x)`, and
`p^q = exp(q log_sigmoid(x))`, `(1 - p)^q = exp(q log_sigmoid(-x))`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lln_jax.schemes import losses
from lln_jax.schemes.contract import (
    EmptyState,
    LossScheme,
    SchemeContext,
    epoch_of_step,
    mask_of,
    no_selection,
    require_single_positive,
    validate_batch,
)


class GrWeights(NamedTuple):
    """GR's schedule at one step: the 1-indexed epoch and the weights it sets."""

    epoch: jax.Array
    w: jax.Array
    b: jax.Array
    mu: jax.Array
    sigma: jax.Array


def gr_weights(epoch: jax.Array, num_epochs: int, *, beta, alpha) -> GrWeights:
    """The weights of 1-indexed epoch `epoch` of `num_epochs` (SPEC.md section 11).

    Args:
      epoch: the 1-indexed epoch (traced).
      num_epochs: T, the run's end-to-end epochs.
      beta: `(w0, wT, b0, bT)`, the start and end of K's slope and offset.
      alpha: `(mu0, sigma0, muT, sigmaT)`, the start and end of V's centre and width.
    """
    (w0, w_end, b0, b_end), (mu0, sigma0, mu_end, sigma_end) = beta, alpha
    epoch = jnp.asarray(epoch, jnp.float32)
    late, now = (epoch - 1.0) / num_epochs, epoch / num_epochs
    return GrWeights(
        epoch=epoch,
        w=w0 + (w_end - w0) * late,
        b=b0 + (b_end - b0) * late,
        mu=mu0 + (mu_end - mu0) * now,
        sigma=sigma0 + (sigma_end - sigma0) * now,
    )


def gr_entry_losses(logits: jax.Array, labels_obs: jax.Array, weights: GrWeights, *, q2, q3):
    """`[B, C]` per-entry GR losses (K and V carry no gradient)."""
    x = logits.astype(jnp.float32)
    p = jax.lax.stop_gradient(jax.nn.sigmoid(x))
    pseudo_positive = jax.nn.sigmoid(weights.w * p + weights.b)  # K(p')
    reweighting = jnp.exp(-0.5 * jnp.square((p - weights.mu) / weights.sigma))  # V(p')
    positive_term = (1.0 - jnp.exp(q2 * jax.nn.log_sigmoid(x))) / q2
    negative_term = (1.0 - jnp.exp(q3 * jax.nn.log_sigmoid(-x))) / q3
    unobserved = reweighting * (
        pseudo_positive * positive_term + (1.0 - pseudo_positive) * negative_term
    )
    return jnp.where(labels_obs == 1, jax.nn.softplus(-x), unobserved)


def _validate(beta, alpha, q2: float, q3: float) -> tuple[tuple, tuple, float, float]:
    beta, alpha = tuple(float(v) for v in beta), tuple(float(v) for v in alpha)
    if len(beta) != 4 or len(alpha) != 4:
        raise ValueError(
            f"gr: beta is (w0, wT, b0, bT) and alpha (mu0, sigma0, muT, sigmaT), got "
            f"beta={beta} and alpha={alpha}"
        )
    if not (alpha[1] > 0 and alpha[3] > 0):
        raise ValueError(f"gr: the widths sigma0 and sigmaT must be > 0, got alpha={alpha}")
    if not (q2 > 0 and q3 > 0):
        raise ValueError(f"gr: q2 and q3 must be > 0, got q2={q2}, q3={q3}")
    return beta, alpha, float(q2), float(q3)


def generalized_robust_loss(
    context: SchemeContext, *, beta, alpha, q2: float, q3: float
) -> LossScheme:
    """GR Loss: soft pseudo-positives and a reweighting bump, scheduled by the epoch."""
    require_single_positive("gr", context)
    beta, alpha, q2, q3 = _validate(beta, alpha, q2, q3)
    steps_per_epoch, num_epochs = context.steps_per_epoch, context.num_epochs

    def schedule(step: jax.Array) -> GrWeights:
        epoch = epoch_of_step(step, steps_per_epoch)
        return gr_weights(epoch, num_epochs, beta=beta, alpha=alpha)

    def apply(logits, batch, state, scheduled: GrWeights, params=()):
        del params
        validate_batch(logits, batch, context.num_classes)
        mask = mask_of(batch, logits)
        matrix = gr_entry_losses(logits, batch["labels_obs"], scheduled, q2=q2, q3=q3)
        return losses.mean_over_entries(matrix, mask), state, no_selection(logits, mask)

    return LossScheme(EmptyState, apply, schedule)
