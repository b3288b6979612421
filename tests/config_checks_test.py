"""The config check: every bad value at once, as one message, before anything runs."""

import pytest
from conftest import CONFIG_DIR, load_config

from lln_jax.config import checks as config_checks


def _load(name="digits.py", arg="scheme=ll_r"):
    return load_config(name, arg)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.py")))
def test_every_shipped_config_passes(name):
    for arg in ("scheme=ll_cp", "scheme=role,boostlu,linear_init", "scheme=em,runlocal"):
        config_checks.check(_load(name, arg))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.batch_size", 0, "data.batch_size=0 must be a positive integer"),
        ("data.eval_batch_size", -8, "data.eval_batch_size=-8 must be a positive integer"),
        ("num_epochs", 0, "num_epochs=0 must be a positive integer"),
        ("log_every_steps", 0, "log_every_steps=0 must be a positive integer"),
        ("checkpoint.max_to_keep", 0, "checkpoint.max_to_keep=0 must be a positive integer"),
        ("optim.learning_rate", 0.0, "optim.learning_rate=0.0 must be a positive number"),
        ("data.val_frac", 1.0, "data.val_frac=1.0 must be in (0, 1)"),
        ("data.image_size", 0, "data.image_size=0 must be a positive integer"),
        ("data.label_setting", "partial", "data.label_setting='partial'; valid: ['full'"),
        ("model.dtype", "float16", "model.dtype='float16'; valid: ['bfloat16', 'float32']"),
        ("model.boost_alpha", 0.5, "model.boost_alpha must be >= 1"),
        ("linear_init.num_epochs", -1, "linear_init.num_epochs must be >= 0"),
    ],
)
def test_a_bad_value_is_named(key, value, message):
    config = _load()
    parent, leaf = key.rsplit(".", 1) if "." in key else (None, key)
    (config[parent] if parent else config)[leaf] = value
    with pytest.raises(config_checks.ConfigError) as raised:
        config_checks.check(config)
    assert message in str(raised.value)


def test_every_bad_value_is_reported_at_once():
    config = _load()
    config.data.batch_size, config.num_epochs = 0, -1
    with pytest.raises(config_checks.ConfigError) as raised:
        config_checks.check(config)
    assert str(raised.value) == (
        "num_epochs=-1 must be a positive integer; data.batch_size=0 must be a positive integer"
    )


def test_a_scheme_must_keep_its_recipe_and_its_hyperparameters():
    config = _load(arg="scheme=ll_r")
    config.scheme.name = "ll_cp"
    with pytest.raises(config_checks.ConfigError, match="holds the recipe of 'll_r'"):
        config_checks.check(config)
    config = _load(arg="scheme=an")
    with config.unlocked():
        config.scheme.delta_rel = 0.002
    with pytest.raises(config_checks.ConfigError, match=r"'an' takes \[\], .* \['delta_rel'\]"):
        config_checks.check(config)


def test_the_optimizer_keys_must_be_those_the_optimizer_takes():
    config = _load()
    config.optim.name = "sgd"  # Adam's b1, b2 and eps left in the config.
    with pytest.raises(
        config_checks.ConfigError,
        match=r"optim\.name='sgd' takes \['momentum', 'weight_decay'\], the config gives "
        r"\['b1', 'b2', 'eps', 'weight_decay'\]",
    ):
        config_checks.check(config)


def test_the_image_must_cover_the_models_output_stride():
    config = _load()  # resnet_small: three stages, output stride 16.
    config.data.image_size = 3
    with pytest.raises(config_checks.ConfigError, match=r"image_size=3 is smaller than resnet_"):
        config_checks.check(config)
    config.data.image_size = 16
    config_checks.check(config)
