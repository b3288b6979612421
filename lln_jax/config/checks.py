"""Checks a resolved config before anything heavy is imported or opened.

Every value is checked against its range and every name against its registry, and the
scheme's hyperparameters against those the scheme declares, so that a bad value fails in a
second with one line instead of after the data is opened. Imports the registries (JAX and
Flax come with them), never TensorFlow or the data.
"""

import inspect
from typing import Any

import ml_collections

from lln_jax import models, schemes
from lln_jax.data import image_storage, labeled_splits
from lln_jax.training import optim

# Keys of `config.optim` that every optimizer takes (`optim.create`'s own arguments).
_OPTIM_COMMON = {"name", "learning_rate", "head_lr_multiplier", "scheme_lr_multiplier"}


class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and what it may be."""


def _positive_int(config, key: str) -> str | None:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{key}={value!r} must be a positive integer"
    return None


def _positive(config, key: str) -> str | None:
    value = _get(config, key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        return f"{key}={value!r} must be a positive number"
    return None


def _choice(config, key: str, choices) -> str | None:
    value = _get(config, key)
    return None if value in choices else f"{key}={value!r}; valid: {sorted(choices)}"


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _range_errors(config) -> list[str | None]:
    val_frac = config.data.val_frac
    return [
        *(
            _positive_int(config, key)
            for key in (
                "num_epochs", "log_every_steps", "data.batch_size", "data.eval_batch_size",
                "data.image_size", "data.num_threads", "checkpoint.every_steps",
                "checkpoint.max_to_keep", "linear_init.batch_size",
            )
        ),
        *(
            _positive(config, key)
            for key in (
                "optim.learning_rate", "optim.head_lr_multiplier", "optim.scheme_lr_multiplier",
                "linear_init.learning_rate",
            )
        ),
        None if 0.0 < val_frac < 1.0 else f"data.val_frac={val_frac!r} must be in (0, 1)",
        None if config.early_stop_drop >= 0 else "early_stop_drop must be >= 0",
        None if config.linear_init.num_epochs >= 0 else "linear_init.num_epochs must be >= 0",
        None if config.data.num_workers >= 0 else "data.num_workers must be >= 0",
    ]  # fmt: skip


def _choice_errors(config) -> list[str | None]:
    return [
        _choice(config, "scheme.name", schemes.SCHEMES),
        _choice(config, "model.name", models.MODELS),
        _choice(config, "model.dtype", models.DTYPES),
        _choice(config, "data.label_setting", labeled_splits.LABEL_SETTINGS),
        _choice(config, "data.val_labels", ("true", "observed")),
        None if config.model.boost_alpha >= 1.0 else "model.boost_alpha must be >= 1",
        None
        if image_storage.is_valid(config.data.storage)
        else f"data.storage={config.data.storage!r}; valid: 'original', 'raw' or 'jpeg<1..100>'",
    ]


def _scheme_errors(config) -> list[str | None]:
    name, recipe = config.scheme.name, config.get("recipe", config.scheme.name)
    if name not in schemes.SCHEMES:
        return []  # Reported by `_choice_errors`.
    if name != recipe:
        return [
            f"scheme.name={name!r} but the config holds the recipe of {recipe!r}; choose the "
            f"scheme in the config argument instead (--config=configs/<data>.py:scheme={name})"
        ]
    given = set(config.scheme) - {"name"}
    expected = set(schemes.hyperparameters(name))
    if given == expected:
        return []
    return [f"scheme {name!r} takes {sorted(expected)}, the config gives {sorted(given)}"]


def _optimizer_errors(config) -> list[str | None]:
    """The optimizer's own keys against those its builder takes (an SGD run must not carry
    Adam's `b1`: it would be ignored, or fail after the data is opened)."""
    name = config.optim.name
    if name not in optim.OPTIMIZERS:
        return [_choice(config, "optim.name", optim.OPTIMIZERS)]
    parameters = inspect.signature(optim.OPTIMIZERS[name]).parameters
    expected = {key for key, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    given = set(config.optim) - _OPTIM_COMMON
    if given == expected:
        return []
    return [f"optim.name={name!r} takes {sorted(expected)}, the config gives {sorted(given)}"]


def _image_size_errors(config) -> list[str | None]:
    if config.model.name not in models.MODELS or not isinstance(config.data.image_size, int):
        return []  # Reported by `_choice_errors` or `_range_errors`.
    stride = models.output_stride(config.model.name)
    if config.data.image_size >= stride:
        return []
    return [
        f"data.image_size={config.data.image_size} is smaller than {config.model.name}'s "
        f"output stride {stride}: its last feature map would not see a whole cell"
    ]


def check(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` listing every bad value of `config` at once."""
    errors = [e for e in (*_range_errors(config), *_choice_errors(config)) if e]
    errors += [e for e in (*_scheme_errors(config), *_optimizer_errors(config)) if e]
    errors += [e for e in _image_size_errors(config) if e]
    if errors:
        raise ConfigError("; ".join(errors))
