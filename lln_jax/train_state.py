"""The train state: everything a resumed run needs, as one pytree."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lln_jax import schemes


class TrainState(flax.struct.PyTreeNode):
    """Params, BatchNorm statistics, optimizer and loss-scheme state, step and rng.

    `tx` is static (not a pytree leaf), as in `flax.training.train_state.TrainState`.
    `rng` is a raw uint32 key; the step derives its randomness as `fold_in(rng, step)`.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    scheme_state: Any
    rng: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    scheme: schemes.LossScheme,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initialises a fresh state; jit it with `out_shardings` to place it on the mesh."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.uint8), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        scheme_state=scheme.init(),
        rng=state_rng,
        tx=tx,
    )
