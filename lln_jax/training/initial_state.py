"""The run's first train state: its structure alone for a restore, or initialised for real.

A resumed run needs only the structure (shapes, dtypes, shardings) to restore into:
`abstract_state` traces the initialisation with `jax.eval_shape` and computes nothing. A
fresh run initialises on the mesh and loads the backbone's ImageNet weights.
"""

import functools

import jax
import numpy as np
from absl import logging

from lln_jax import models
from lln_jax.models import pretrained
from lln_jax.run import checkpointing
from lln_jax.training import optim
from lln_jax.training.experiment import Experiment
from lln_jax.training.train_state import TrainState, create_train_state


def _init_fn(experiment: Experiment):
    image_size = experiment.loading.image_size
    create = functools.partial(
        create_train_state,
        model=experiment.model,
        tx=experiment.tx,
        scheme=experiment.scheme,
        image_shape=(image_size, image_size, 3),
    )
    return jax.jit(
        lambda seed, labels: create(jax.random.PRNGKey(seed), labels_obs=labels),
        out_shardings=experiment.replicated,
    )


def _init_arguments(experiment: Experiment):
    return np.int32(experiment.seed), experiment.splits["train"].labels_obs


def abstract_state(experiment: Experiment) -> TrainState:
    """The state's structure on the mesh, computed without running the initialisation."""
    shapes = jax.eval_shape(_init_fn(experiment), *_init_arguments(experiment))
    return checkpointing.abstract_like(shapes, experiment.replicated)


def fresh_state(experiment: Experiment) -> TrainState:
    """A state initialised from the seed, the backbone from `init_from` where given."""
    seed, labels_obs = jax.device_put(_init_arguments(experiment), experiment.replicated)
    state = _init_fn(experiment)(seed, labels_obs)
    if experiment.init_from:
        return _load_pretrained(experiment, state, experiment.init_from)
    if experiment.model_name == "resnet50":
        logging.warning(
            "ResNet-50 from scratch: the paper starts from ImageNet weights "
            "(set --config.init_from; see lln_jax/models/pretrained.py)."
        )
    return state


def _load_pretrained(experiment: Experiment, state: TrainState, path: str) -> TrainState:
    """The backbone from converted ImageNet weights; the head as initialised."""
    initial = {"params": state.params, "batch_stats": state.batch_stats}
    merged = pretrained.merge(
        jax.device_get(initial), pretrained.load(path), exclude=(models.HEAD_NAME,)
    )
    merged = jax.device_put(merged, experiment.replicated)
    logging.info("Backbone initialised from %s", path)
    trainable = optim.trainable(merged["params"], state.scheme_params)
    opt_state = jax.jit(experiment.tx.init, out_shardings=experiment.replicated)(trainable)
    return state.replace(
        params=merged["params"], batch_stats=merged["batch_stats"], opt_state=opt_state
    )
