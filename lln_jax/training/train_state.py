"""The train state: everything a resumed run needs, as one pytree."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lln_jax import schemes
from lln_jax.training import optim

# The scheme's learned values are drawn from `fold_in(rng, _SCHEME_PARAMS_STREAM)`, a stream
# apart from the model's initialisation and the step's randomness (both from `split(rng)`).
_SCHEME_PARAMS_STREAM = 0x5C4E


class TrainState(flax.struct.PyTreeNode):
    """Params, BatchNorm statistics, optimizer and loss-scheme state, step and rng.

    `scheme_params` are a loss scheme's learned values (ROLE's label estimator; `()` for
    the others), updated by the optimizer with the params; `opt_state` covers both
    (`optim.trainable`). `tx` is static (not a pytree leaf), as in flax's `TrainState`.
    `rng` is a raw uint32 key; the step derives its randomness as `fold_in(rng, step)`.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    scheme_state: Any
    scheme_params: Any
    rng: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_train_state(
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    scheme: schemes.LossScheme,
    image_shape: tuple[int, int, int],
    labels_obs: jax.Array,
) -> TrainState:
    """Initialises a fresh state; jit it with `out_shardings` to place it on the mesh.

    `labels_obs` `[N, C]` are the train split's observed labels (ROLE starts from them).
    """
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.uint8), train=False)
    params = variables["params"]
    scheme_params = scheme.init_params(jax.random.fold_in(rng, _SCHEME_PARAMS_STREAM), labels_obs)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(optim.trainable(params, scheme_params)),
        scheme_state=scheme.init(),
        scheme_params=scheme_params,
        rng=state_rng,
        tx=tx,
    )
