"""The pure, jit-compilable train and eval steps. No I/O, no config, no host syncs.

Collaborators (the model and the loss scheme) are keyword-only and bound once with
`functools.partial` before `jax.jit`, so the step can be tested with any model.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lln_jax import schemes
from lln_jax.evaluation import metrics
from lln_jax.schemes.contract import Batch
from lln_jax.training import optim
from lln_jax.training.train_state import TrainState


def train_step(
    state: TrainState, batch: Batch, *, model: nn.Module, scheme: schemes.LossScheme
) -> tuple[TrainState, metrics.TrainMetrics, NamedTuple]:
    """One optimizer step on a global batch.

    Everything that changes over training (the step, hence the epoch and what the scheme's
    schedule derives from it, k; the number of real examples) is traced, so the step
    compiles once.

    Returns:
      The new state, the step's metrics, and the scheme's schedule at this step (its named
      values, passed to the scheme unchanged and returned for the loop to log).
    """
    rng = jax.random.fold_in(state.rng, state.step)
    scheduled = scheme.schedule(state.step)

    def loss_fn(trainable):
        logits, updates = model.apply(
            {"params": trainable["model"], "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mask=batch["mask"],
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss, scheme_state, aux = scheme.apply(
            logits, batch, state.scheme_state, scheduled, params=trainable["scheme"]
        )
        return loss, (updates["batch_stats"], scheme_state, aux)

    trainable = optim.trainable(state.params, state.scheme_params)
    (loss, (batch_stats, scheme_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable
    )
    trained, updates, opt_state = optimizer_update(state.tx, state.opt_state, trainable, grads)
    new_state = state.replace(
        step=state.step + 1,
        params=trained["model"],
        batch_stats=batch_stats,
        opt_state=opt_state,
        scheme_state=scheme_state,
        scheme_params=trained["scheme"],
    )
    train_metrics = metrics.TrainMetrics.single_from_model_output(
        loss=loss,
        k=aux.k.astype(jnp.float32),
        modified_fraction=aux.modified_fraction,
        grad_norm=optax.tree.norm(grads["model"]),
        param_norm=optax.tree.norm(trained["model"]),
        update_norm=optax.tree.norm(updates["model"]),
        **_selection_counts(aux.modified, batch),
    )
    return new_state, train_metrics, scheduled


def optimizer_update(tx: optax.GradientTransformation, opt_state, trainable, grads):
    """The optimizer's step on `trainable`: the updated values, the updates, the new state.

    Shared by the end-to-end step and LinearInit's head step.
    """
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), updates, opt_state


def _selection_counts(modified: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Selected entries, the truly positive ones among them, and the false negatives."""
    real = batch["mask"][:, None] > 0
    truly_positive = (batch["labels_true"] == 1) & real
    false_negatives = truly_positive & (batch["labels_obs"] == 0)
    return {
        "selected": jnp.sum(modified & real, dtype=jnp.float32),
        "selected_false_negatives": jnp.sum(modified & truly_positive, dtype=jnp.float32),
        "false_negatives": jnp.sum(false_negatives, dtype=jnp.float32),
    }


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module) -> dict[str, Any]:
    """Sigmoid scores, true labels, example ids and the padding mask of one eval batch.

    The ids let the host put the rows back in split order: the gathered global batch is in
    the mesh's device order, which on a pod need not keep each process's rows together.
    """
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    return {
        "scores": jax.nn.sigmoid(logits),
        "labels": batch["labels_true"],
        "example_id": batch["example_id"],
        "mask": batch["mask"],
    }


def features_step(state: TrainState, batch: Batch, *, model: nn.Module) -> dict[str, Any]:
    """Pooled backbone features (eval-mode BatchNorm), example ids and the padding mask."""
    features = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"],
        train=False,
        features_only=True,
    )
    return {"features": features, "example_id": batch["example_id"], "mask": batch["mask"]}
