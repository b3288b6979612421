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
`checkpoints/linear_init`, and its batches are a pure function of `(seed, step)`. A stop
request is honoured at every batch of the feature pass (nothing to save) and at every step
of the head's loop (saved there first).
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lln_jax import models, schemes
from lln_jax.data import input_pipeline
from lln_jax.models import resnet
from lln_jax.run import checkpointing
from lln_jax.training import evaluation, optim, steps
from lln_jax.training.experiment import Experiment
from lln_jax.training.session import Session
from lln_jax.training.train_state import TrainState

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
    trained, _, opt_state = steps.optimizer_update(state.tx, state.opt_state, trainable, grads)
    new_state = state.replace(
        step=state.step + 1,
        head=trained["model"][resnet.HEAD_NAME],
        scheme_state=scheme_state,
        scheme_params=trained["scheme"],
        opt_state=opt_state,
    )
    return new_state, loss


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


def _features(experiment: Experiment, session: Session, state: TrainState, start: int, total):
    """`[N, D]` pooled train features in row order, on every host; stoppable per batch."""

    def check_stop(index: int) -> None:
        if session.stop.agreed(index, every=experiment.loop.log_every_steps):
            raise session.interrupted(start, total, None)

    outputs = evaluation.ordered_pass(
        experiment.features_step, state, experiment.splits["train"],
        batch_size=experiment.linear_init.batch_size, loading=experiment.loading,
        data_sharding=experiment.data_sharding, check_stop=check_stop,
    )  # fmt: skip
    return evaluation.in_split_order(list(outputs), "features")


def run(experiment: Experiment, session: Session, state: TrainState) -> TrainState:
    """LinearInit: the head alone on `state`'s frozen features; the state to train from."""
    create = jax.jit(
        functools.partial(create_head_state, tx=experiment.linear_init.tx),
        out_shardings=experiment.replicated,
    )
    head_state = create(state.params[models.HEAD_NAME], state.scheme_state, state.scheme_params)
    checkpointer = checkpointing.Checkpointer(
        f"{session.workdir}/checkpoints/linear_init", max_to_keep=1
    )
    try:
        if checkpointer.latest_step() is not None:
            abstract = checkpointing.abstract_like(head_state, experiment.replicated)
            head_state, _ = checkpointer.restore_latest(abstract, session.check_identity)
        head_state = _train_head(experiment, session, state, head_state, checkpointer)
    finally:
        checkpointer.wait_until_finished()
        checkpointer.close()
    params = {**state.params, models.HEAD_NAME: head_state.head}
    trainable = optim.trainable(params, head_state.scheme_params)
    return state.replace(
        params=params,
        scheme_state=head_state.scheme_state,
        scheme_params=head_state.scheme_params,
        opt_state=jax.jit(experiment.tx.init, out_shardings=experiment.replicated)(trainable),
    )


def _train_head(experiment: Experiment, session: Session, state, head_state, checkpointer):
    """The head's loop from the restored step: `state`'s features once, then the head."""
    settings, train = experiment.linear_init, experiment.splits["train"]
    every = experiment.loop.log_every_steps
    steps_per_epoch = input_pipeline.steps_per_epoch(train.num_examples, settings.batch_size)
    start, total = int(jax.device_get(head_state.step)), settings.num_epochs * steps_per_epoch
    logging.info("LinearInit: the head alone, steps %d to %d", start, total)
    if start >= total:
        return head_state
    features = _features(experiment, session, state, start, total)
    jit_step = jax.jit(
        functools.partial(head_step, head=experiment.head, scheme=experiment.scheme),
        donate_argnums=0,
        out_shardings=(experiment.replicated, experiment.replicated),
    )
    local = input_pipeline.local_slice(
        settings.batch_size, jax.process_index(), jax.process_count()
    )
    for step in range(start, total):
        batch = feature_batch(
            features, train.labels_obs, seed=experiment.seed, step=step,
            batch_size=settings.batch_size,
        )  # fmt: skip
        local_batch = {key: value[local] for key, value in batch.items()}
        head_state, loss = jit_step(
            head_state, input_pipeline.to_global(local_batch, experiment.data_sharding)
        )
        epoch_ends = (step + 1) % steps_per_epoch == 0
        stop_now = session.stop.agreed(step + 1, every=every)
        if epoch_ends:
            session.writer.write_scalars(
                step + 1, {"linear_init/loss": float(jax.device_get(loss))}
            )
        if epoch_ends or stop_now:
            session.fence()
            checkpointer.save(step + 1, head_state, session.identity_record())
        if stop_now:
            checkpointer.wait_until_finished()
            where = f"{session.workdir}/checkpoints/linear_init/latest"
            raise session.interrupted(step + 1, total, where)
    return head_state
