"""The optimizer of SPEC.md section 4, as an optax transformation built from `config.optim`.

Adam or SGD with momentum, both with *coupled* weight decay (added to the gradient, as
PyTorch's `weight_decay` does), a constant learning rate, and the head trained at
`head_lr_multiplier` times the backbone's rate (PyTorch parameter groups, here an optax
`multi_transform` keyed by the top-level module name).
"""

from collections.abc import Callable
from typing import Any

import optax
from flax import traverse_util

from lln_jax import models


def _adam(learning_rate: float, *, b1: float, b2: float, eps: float, weight_decay: float):
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    )


def _sgd(learning_rate: float, *, momentum: float, weight_decay: float):
    # optax.trace with nesterov=False is PyTorch's momentum buffer without dampening.
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum)
    )


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"adam": _adam, "sgd": _sgd}


def _param_group(params: Any) -> Any:
    """'head' for the classification head's parameters, 'backbone' for the rest."""
    flat = traverse_util.flatten_dict(params)
    groups = {path: "head" if path[0] == models.HEAD_NAME else "backbone" for path in flat}
    return traverse_util.unflatten_dict(groups)


def create(
    name: str, *, learning_rate: float, head_lr_multiplier: float, **hparams: Any
) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
    """Builds the optimizer and its learning-rate function.

    Args:
      name: a key of `OPTIMIZERS`.
      learning_rate: the backbone's learning rate (constant; the paper uses no schedule).
      head_lr_multiplier: the head's learning rate over the backbone's (10 in the paper).
      **hparams: the optimizer's own hyperparameters (every one required, so each value
        used is in the config).

    Returns:
      `(tx, lr_fn)`: the transformation and `lr_fn(step) -> backbone learning rate`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; valid optimizers: {sorted(OPTIMIZERS)}")
    build = OPTIMIZERS[name]
    tx = optax.multi_transform(
        {
            "backbone": build(learning_rate, **hparams),
            "head": build(learning_rate * head_lr_multiplier, **hparams),
        },
        _param_group,
    )
    return tx, lambda step: learning_rate
