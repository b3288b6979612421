"""The optimizer of SPEC.md section 4, as an optax transformation built from `config.optim`.

Adam or SGD with momentum, both with *coupled* weight decay (added to the gradient, as
PyTorch's `weight_decay` does), a constant learning rate, and parameter groups (PyTorch's,
here an optax `multi_transform`): the model's head at `head_lr_multiplier` times the
backbone's rate, and a loss scheme's learned values (ROLE's label estimator) at
`scheme_lr_multiplier` times it.

The transformation updates the whole trainable tree `{"model": params, "scheme":
scheme_params}` (`trainable`); the head is the model's top-level module `head_name`.
"""

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import traverse_util


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


def trainable(params: Any, scheme_params: Any) -> dict[str, Any]:
    """The tree the optimizer updates: the model's params and the scheme's learned values."""
    return {"model": params, "scheme": scheme_params}


def _param_groups(head_name: str) -> Callable[[Any], Any]:
    def groups(tree: dict[str, Any]) -> dict[str, Any]:
        flat = traverse_util.flatten_dict(tree["model"])
        model = {path: "head" if path[0] == head_name else "backbone" for path in flat}
        scheme = jax.tree.map(lambda _: "scheme", tree["scheme"])
        return {"model": traverse_util.unflatten_dict(model), "scheme": scheme}

    return groups


def create(
    name: str,
    *,
    learning_rate: float,
    head_lr_multiplier: float,
    scheme_lr_multiplier: float,
    head_name: str,
    **hparams: Any,
) -> tuple[optax.GradientTransformation, Callable[[int], float]]:
    """Builds the optimizer of the trainable tree and its learning-rate function.

    Args:
      name: a key of `OPTIMIZERS`.
      learning_rate: the backbone's learning rate (constant; the paper uses no schedule).
      head_lr_multiplier: the head's learning rate over the backbone's (10 in the paper).
      scheme_lr_multiplier: the rate of a scheme's learned values over the backbone's (10
        for ROLE's label estimator, SPEC.md section 9).
      head_name: the model's top-level module that is the head.
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
            "scheme": build(learning_rate * scheme_lr_multiplier, **hparams),
        },
        _param_groups(head_name),
    )
    return tx, lambda step: learning_rate
