"""The optimizer: coupled weight decay as PyTorch, the head at 10x the backbone's rate."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lln_jax.config import defaults
from lln_jax.training import optim

PARAMS = {"conv1": {"kernel": jnp.array([1.0, -2.0])}, "fc": {"kernel": jnp.array([0.5, 3.0])}}
GRADS = {"conv1": {"kernel": jnp.array([0.1, 0.2])}, "fc": {"kernel": jnp.array([-0.3, 0.4])}}
MULTIPLIERS = dict(head_lr_multiplier=10.0, scheme_lr_multiplier=10.0, head_name="fc")


def _two_steps(name, **overrides):
    hparams = {k: v for k, v in defaults.OPTIMIZERS[name].items() if k != "name"}
    hparams.update(overrides)
    tx, lr_fn = optim.create(name, learning_rate=0.1, **MULTIPLIERS, **hparams)
    params, grads = optim.trainable(PARAMS, ()), optim.trainable(GRADS, ())
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params["model"], lr_fn


def test_sgd_matches_pytorch_with_coupled_weight_decay_and_head_multiplier():
    params, lr_fn = _two_steps("sgd", weight_decay=1e-3)
    for group, lr in (("conv1", 0.1), ("fc", 1.0)):
        p, g = np.asarray(PARAMS[group]["kernel"]), np.asarray(GRADS[group]["kernel"])
        buf = None
        for _ in range(2):  # torch.optim.SGD(momentum=0.9, weight_decay=1e-3), dampening 0.
            d = g + 1e-3 * p
            buf = d if buf is None else 0.9 * buf + d
            p = p - lr * buf
        np.testing.assert_allclose(params[group]["kernel"], p, rtol=1e-6)
    assert lr_fn(123) == 0.1


def test_adam_head_and_scheme_params_move_at_their_own_rates_on_the_first_step():
    tx, _ = optim.create(
        "adam", learning_rate=1e-3, head_lr_multiplier=10.0, scheme_lr_multiplier=4.0,
        head_name="fc", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
    )  # fmt: skip
    estimator = {"logits": jnp.array([[0.2, -0.1]])}
    params = optim.trainable(PARAMS, estimator)
    grads = optim.trainable(GRADS, {"logits": jnp.array([[0.5, -0.5]])})
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step is lr * sign(g) (up to eps).
    np.testing.assert_allclose(updates["model"]["conv1"]["kernel"], [-1e-3, -1e-3], rtol=1e-4)
    np.testing.assert_allclose(updates["model"]["fc"]["kernel"], [1e-2, -1e-2], rtol=1e-4)
    np.testing.assert_allclose(updates["scheme"]["logits"], [[-4e-3, 4e-3]], rtol=1e-4)


def test_unknown_optimizer_and_missing_hyperparameters_fail_loudly():
    with pytest.raises(ValueError, match=r"'adamw'.*\['adam', 'sgd'\]"):
        optim.create("adamw", learning_rate=1.0, **MULTIPLIERS)
    with pytest.raises(TypeError, match="momentum"):
        optim.create("sgd", learning_rate=1.0, **MULTIPLIERS, weight_decay=0.0)
