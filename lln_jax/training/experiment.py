"""`Experiment`: everything a run is built from, derived once from the config.

`build(config)` reads the config (the only function of the training package that does,
besides the run's entry point) and returns a frozen record of plain values: the mesh and
its shardings, the splits, the model, the scheme, the optimizer, `steps_per_epoch`, the
jitted steps and the loop's settings. Every other function of the package takes these
values, never the config.
"""

import dataclasses
import functools
import hashlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from lln_jax import models, schemes
from lln_jax.data import input_pipeline, labeled_splits
from lln_jax.models import resnet
from lln_jax.run import sharding
from lln_jax.training import optim, steps


@dataclasses.dataclass(frozen=True)
class Loading:
    """How a split's batches are read: sizes, image size and the loaders' parallelism."""

    batch_size: int
    eval_batch_size: int
    image_size: int
    num_threads: int
    num_workers: int


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """When the loop logs, saves, evaluates against which labels, and stops early."""

    log_every_steps: int
    checkpoint_every_steps: int
    max_to_keep: int
    early_stop_drop: float
    val_labels: str  # "true" (the paper's) or "observed"
    diagnose_false_negatives: bool


@dataclasses.dataclass(frozen=True)
class LinearInitSettings:
    """LinearInit's phase: epochs (0: off), batch size and its own optimizer."""

    num_epochs: int
    batch_size: int
    tx: optax.GradientTransformation


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The built pieces of one run (see the module docstring)."""

    seed: int
    num_epochs: int
    mesh: jax.sharding.Mesh
    data_sharding: jax.sharding.NamedSharding
    replicated: jax.sharding.NamedSharding
    splits: dict[str, labeled_splits.Split]
    labels_digest: str  # sha256 of the train split's observed labels
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    loading: Loading
    loop: LoopSettings
    linear_init: LinearInitSettings
    model_name: str
    model: nn.Module
    head: nn.Module  # LinearInit's plain linear head on pooled features.
    scheme: schemes.LossScheme
    tx: optax.GradientTransformation
    lr_fn: Any  # step -> the backbone's learning rate
    learning_rate: float
    init_from: str | None
    train_step: Any  # jitted steps.train_step
    eval_step: Any  # jitted steps.eval_step
    features_step: Any  # jitted steps.features_step


def labels_digest(labels_obs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels_obs).tobytes()).hexdigest()


def _check_batch_sizes(data_config, num_devices: int) -> None:
    for key in ("batch_size", "eval_batch_size"):
        if data_config[key] % num_devices:
            raise ValueError(
                f"data.{key}={data_config[key]} must divide over {num_devices} devices"
            )


def _scheme(config, train: labeled_splits.Split, steps_per_epoch: int) -> schemes.LossScheme:
    context = schemes.SchemeContext(
        num_examples=train.num_examples,
        num_classes=train.labels_true.shape[1],
        batch_size=config.data.batch_size,
        steps_per_epoch=steps_per_epoch,
        num_epochs=config.num_epochs,
        observed_negatives=bool((train.labels_obs == -1).any()),
    )
    return schemes.create(**config.scheme, context=context)


def _settings(config) -> tuple[Loading, LoopSettings, LinearInitSettings]:
    data = config.data
    loading = Loading(
        data.batch_size, data.eval_batch_size, data.image_size, data.num_threads,
        data.num_workers,
    )  # fmt: skip
    loop = LoopSettings(
        log_every_steps=config.log_every_steps,
        checkpoint_every_steps=config.checkpoint.every_steps,
        max_to_keep=config.checkpoint.max_to_keep,
        early_stop_drop=config.early_stop_drop,
        val_labels=data.val_labels,
        diagnose_false_negatives=config.diagnose_false_negatives,
    )
    head_optim = dict(config.optim, learning_rate=config.linear_init.learning_rate)
    head_tx, _ = optim.create(**head_optim, head_name=models.HEAD_NAME)
    linear_init = LinearInitSettings(
        config.linear_init.num_epochs, config.linear_init.batch_size, head_tx
    )
    return loading, loop, linear_init


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Opens the data and builds the model, scheme, optimizer and jitted steps."""
    mesh = sharding.create_mesh()
    data_sharding, replicated = sharding.data_sharding(mesh), sharding.replicated(mesh)
    _check_batch_sizes(config.data, jax.device_count())
    splits = labeled_splits.open_splits(config.data)
    train = splits["train"]
    num_classes = train.labels_true.shape[1]
    steps_per_epoch = input_pipeline.steps_per_epoch(train.num_examples, config.data.batch_size)
    model = models.create(**config.model, num_classes=num_classes)
    scheme = _scheme(config, train, steps_per_epoch)
    tx, lr_fn = optim.create(**config.optim, head_name=models.HEAD_NAME)
    loading, loop, linear_init = _settings(config)
    return Experiment(
        seed=config.seed,
        num_epochs=config.num_epochs,
        mesh=mesh,
        data_sharding=data_sharding,
        replicated=replicated,
        splits=splits,
        labels_digest=labels_digest(train.labels_obs),
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.num_epochs,
        loading=loading,
        loop=loop,
        linear_init=linear_init,
        model_name=config.model.name,
        model=model,
        head=resnet.BoostedHead(num_classes),
        scheme=scheme,
        tx=tx,
        lr_fn=lr_fn,
        learning_rate=config.optim.learning_rate,
        init_from=config.init_from,
        train_step=jax.jit(
            functools.partial(steps.train_step, model=model, scheme=scheme),
            donate_argnums=0,
            out_shardings=(replicated, replicated, replicated),
        ),
        eval_step=jax.jit(
            functools.partial(steps.eval_step, model=model), out_shardings=replicated
        ),
        features_step=jax.jit(functools.partial(steps.features_step, model=model)),
    )
