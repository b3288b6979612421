"""The pure, jit-compilable train and eval steps. No I/O, no config, no host syncs.

Collaborators (the model and the loss scheme) are keyword-only and bound once with
`functools.partial` before `jax.jit`, so the step can be tested with any model.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lln_jax import metrics, schemes
from lln_jax.train_state import TrainState

Batch = dict[str, jax.Array]


def train_step(
    state: TrainState, batch: Batch, *, model: nn.Module, scheme: schemes.LossScheme
) -> tuple[TrainState, metrics.TrainMetrics]:
    """One optimizer step on a global batch; returns the new state and its metrics.

    Everything that changes over training (the step, hence the epoch, the rate and k; the
    number of real examples) is traced, so the step compiles once.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    rate = scheme.rate_fn(state.step)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mask=batch["mask"],
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss, scheme_state, aux = scheme.apply(logits, batch, state.scheme_state, rate)
        return loss, (updates["batch_stats"], scheme_state, aux)

    (loss, (batch_stats, scheme_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        scheme_state=scheme_state,
    )
    train_metrics = metrics.TrainMetrics.single_from_model_output(
        loss=loss,
        rate=aux["rate"],
        k=aux["k"].astype(jnp.float32),
        modified_fraction=aux["modified_fraction"],
        grad_norm=optax.tree.norm(grads),
        param_norm=optax.tree.norm(params),
        update_norm=optax.tree.norm(updates),
    )
    return new_state, train_metrics


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module) -> dict[str, Any]:
    """Sigmoid scores, true labels and the padding mask of one eval batch."""
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    return {"scores": jax.nn.sigmoid(logits), "labels": batch["labels_true"], "mask": batch["mask"]}
