"""LinearInit: train the head alone on frozen backbone features before the end-to-end run.

The backbone's global-average-pooled features of the train split are computed once (eval-mode
BatchNorm, no flip) and kept on the host; the plain linear head (BoostLU's alpha does not
apply to pooled features) is then trained on them for `num_epochs` with the run's scheme at
its first-epoch values (`schemes.first_epoch_values`: rate 0 for the large-loss family, no
selection before the model has learned the clean labels; GR's epoch-1 weights), with its
own learning rate and batch size. A scheme's learned values (ROLE's label estimator) and
state train along. The end-to-end run then starts from that
head, estimator and scheme state.

The phase is resumable: its state is saved at every epoch end under
`checkpoints/linear_init`, and its batches are a pure function of `(seed, step)`.
"""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lln_jax import input_pipeline, metrics, optim, schemes
from lln_jax.models import resnet

_ORDER_STREAM = 0x11  # Epoch orders of this phase, apart from the end-to-end run's.


class HeadState(flax.struct.PyTreeNode):
    """The state of the head phase: the head, the scheme's state and learned values."""

    step: jax.Array
    head: Any
    scheme_state: Any
    scheme_params: Any
    opt_state: optax.OptState
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def create_head_state(head: Any, scheme_state: Any, scheme_params: Any, tx) -> HeadState:
    opt_state = tx.init(optim.trainable({resnet.HEAD_NAME: head}, scheme_params))
    return HeadState(jnp.zeros((), jnp.int32), head, scheme_state, scheme_params, opt_state, tx)


def head_step(
    state: HeadState, batch: dict[str, jax.Array], *, head: nn.Module, scheme: schemes.LossScheme
) -> tuple[HeadState, jax.Array]:
    """One optimizer step of the head (and the scheme's learned values) on pooled features,
    with the scheme at its first-epoch values: the head phase precedes the run's epoch 1."""
    scheduled = schemes.first_epoch_values(scheme)
    features = batch["features"][:, None, None, :]  # A 1x1 map: pooling is the identity.

    def loss_fn(trainable):
        logits = head.apply({"params": trainable["model"][resnet.HEAD_NAME]}, features)
        loss, scheme_state, _ = scheme.apply(
            logits, batch, state.scheme_state, scheduled, params=trainable["scheme"]
        )
        return loss, scheme_state

    trainable = optim.trainable({resnet.HEAD_NAME: state.head}, state.scheme_params)
    (loss, scheme_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = state.tx.update(grads, state.opt_state, trainable)
    trained = optax.apply_updates(trainable, updates)
    new_state = state.replace(
        step=state.step + 1,
        head=trained["model"][resnet.HEAD_NAME],
        scheme_state=scheme_state,
        scheme_params=trained["scheme"],
        opt_state=opt_state,
    )
    return new_state, loss


def extract_features(
    jit_features_fn: Callable,
    state: Any,
    split: input_pipeline.Split,
    *,
    data_sharding,
    check_stop: Callable[[int], None],
    **load,
) -> np.ndarray:
    """`[N, D]` pooled features of a whole split in row order, on every host.

    `check_stop(batch_index)` runs before every batch and raises to stop the pass (a stop
    request: the features are not saved, a rerun computes them again). `load` is
    `batches`' keywords for an ordered pass (batch_size, image_size, threads).
    """
    num_batches = input_pipeline.steps_per_epoch(split.num_examples, load["batch_size"])
    features, ids = [], []
    for index, batch in enumerate(
        input_pipeline.batches(split, seed=0, train=False, start=0, stop=num_batches, **load)
    ):
        check_stop(index + 1)
        outputs = jit_features_fn(state, input_pipeline.to_global(batch, data_sharding))
        host = metrics.gather_to_host(outputs)
        features.append(host["features"][host["mask"] > 0])
        ids.append(host["example_id"][host["mask"] > 0])
    # The gathered rows follow the mesh's device order; the ids put them in split order.
    return np.concatenate(features)[np.argsort(np.concatenate(ids), kind="stable")]


def feature_batch(
    features: np.ndarray, labels_obs: np.ndarray, *, seed: int, step: int, batch_size: int
) -> dict[str, np.ndarray]:
    """Global batch `step` of the head phase: a seeded order per epoch, the last one padded."""
    num_examples = len(features)
    steps_per_epoch = input_pipeline.steps_per_epoch(num_examples, batch_size)
    epoch, within = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(num_examples)
    ids = order[within * batch_size : (within + 1) * batch_size]
    mask = np.zeros(batch_size, np.float32)
    mask[: len(ids)] = 1.0
    ids = np.concatenate([ids, np.full(batch_size - len(ids), ids[0])]).astype(np.int32)
    return {
        "features": features[ids],
        "labels_obs": labels_obs[ids],
        "example_id": ids,
        "mask": mask,
    }
