"""Every config x every scheme loads and builds its model, scheme and optimizer (no data)."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import CONFIG_DIR, load_config

from lln_jax import models, schemes
from lln_jax.training import optim

CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py"))
SCHEMES = sorted(schemes.SCHEMES)
# The number of classes comes from the data in a run; here it is the spec's table.
NUM_CLASSES = {
    "voc2012": 20, "coco2014": 80, "nuswide": 81, "cub": 312,
    "digit_mosaics": 10, "digit_mosaics_small": 10,
}  # fmt: skip
# SPEC.md section 4: optimizer, learning rate and delta_rel per scheme.
PAPER = {
    "voc.py": ("sgd", 5e-3, {"ll_r": 0.002, "ll_ct": 0.002, "ll_cp": 0.001}),
    "coco.py": ("adam", 1e-5, {"ll_r": 0.004, "ll_ct": 0.002, "ll_cp": 0.002}),
    "nuswide.py": ("adam", 1e-5, {"ll_r": 0.004, "ll_ct": 0.002, "ll_cp": 0.002}),
    "cub.py": ("adam", 7.5e-5, {"ll_r": 0.004, "ll_ct": 0.004, "ll_cp": 0.002}),
}


def _load(name, arg):
    return load_config(name, arg)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_model_scheme_and_optimizer(name, scheme):
    config = _load(name, f"scheme={scheme}")
    assert config.scheme.name == scheme
    num_classes = NUM_CLASSES[config.data.name]
    context = schemes.SchemeContext(
        1000, num_classes, config.data.batch_size, 63, config.num_epochs
    )
    loss_scheme = schemes.create(**config.scheme, context=context)
    model = models.create(**config.model, num_classes=num_classes)
    size = config.data.image_size
    init = functools.partial(model.init, train=False)
    variables = jax.eval_shape(
        init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.uint8)
    )
    tx, _ = optim.create(**config.optim, head_name=models.HEAD_NAME)
    labels_obs = jnp.zeros((1000, num_classes), jnp.int8)
    scheme_params = jax.eval_shape(loss_scheme.init_params, jax.random.PRNGKey(0), labels_obs)
    jax.eval_shape(tx.init, optim.trainable(variables["params"], scheme_params))
    jax.eval_shape(loss_scheme.init)  # The scheme's state builds for this data set's size.
    json.loads(config.to_json_best_effort())  # The resolved config can be written.


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_hyperparameters(name):
    optimizer, learning_rate, delta_rel = PAPER[name]
    for scheme, delta in delta_rel.items():
        config = _load(name, f"scheme={scheme}")
        assert config.scheme.delta_rel == delta
        assert (config.optim.name, config.optim.learning_rate) == (optimizer, learning_rate)
        assert config.optim.head_lr_multiplier == 10.0
        assert (config.data.batch_size, config.data.image_size, config.num_epochs) == (16, 448, 10)
        assert config.model.name == "resnet50"
    assert _load(name, "scheme=an").scheme.to_dict() == {"name": "an"}


# Zhou et al.'s EM settings: batch, learning rate, entropy weight (Adam on every data set).
EM = {
    "voc.py": (8, 1e-5, 0.2),
    "coco.py": (16, 1e-5, 0.1),
    "nuswide.py": (16, 1e-5, 0.1),
    "cub.py": (8, 1e-4, 0.01),
}
EXPECTED_POSITIVES = {"voc.py": 1.5, "coco.py": 2.9, "nuswide.py": 1.9, "cub.py": 31.4}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_baseline_recipes(name):
    batch_size, learning_rate, weight = EM[name]
    em = _load(name, "scheme=em")
    assert (em.data.batch_size, em.optim.learning_rate) == (batch_size, learning_rate)
    assert (em.optim.name, em.scheme.entropy_weight) == ("adam", weight)
    optimizer, paper_lr, _ = PAPER[name]
    for scheme in ("an_ls", "wan", "epr", "role"):  # Cole et al.'s: the data set's lr and batch.
        config = _load(name, f"scheme={scheme}")
        assert (config.optim.name, config.optim.learning_rate) == (optimizer, paper_lr)
        assert config.data.batch_size == 16
    assert _load(name, "scheme=epr").scheme.expected_num_pos == EXPECTED_POSITIVES[name]
    assert _load(name, "scheme=role").scheme.expected_num_pos == EXPECTED_POSITIVES[name]
    assert _load(name, "scheme=an_ls").scheme.label_smoothing == 0.1


@pytest.mark.parametrize("name", sorted(PAPER))
def test_gr_recipe_is_its_codes_defaults_and_training(name):
    config = _load(name, "scheme=gr")
    assert tuple(config.scheme.beta) == (0.0, 2.0, -2.0, -2.0)
    assert tuple(config.scheme.alpha) == (0.5, 2.0, 0.8, 0.5)
    assert (config.scheme.q2, config.scheme.q3) == (0.01, 1.0)
    assert (config.optim.name, config.optim.learning_rate, config.optim.weight_decay) == (
        "adam", 1e-5, 0.0,
    )  # fmt: skip
    assert (config.optim.head_lr_multiplier, config.data.batch_size) == (10.0, 8)
    assert (config.num_epochs, config.early_stop_drop) == (8, 2.0)
    ll_r = _load(name, "scheme=ll_r")
    assert (ll_r.num_epochs, ll_r.early_stop_drop) == (10, 3.0)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_recipe_states_exactly_its_schemes_hyperparameters(name):
    for scheme in SCHEMES:
        config = _load(name, f"scheme={scheme}")
        assert set(config.scheme) - {"name"} == set(schemes.hyperparameters(scheme))


def test_head_options_and_phases_from_the_argument():
    config = _load("coco.py", "scheme=ll_r,boostlu,val_labels=observed,linear_init")
    assert config.model.boost_alpha == 5.0 and config.data.val_labels == "observed"
    assert (config.linear_init.num_epochs, config.linear_init.learning_rate) == (25, 1e-4)
    plain = _load("coco.py", "scheme=ll_r")
    assert plain.model.boost_alpha == 1.0 and plain.data.val_labels == "true"
    assert plain.linear_init.num_epochs == 0


@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_shrinks_the_same_config(name):
    config = _load(name, "scheme=ll_cp,runlocal")
    assert config.model.name == "resnet_tiny" and config.data.image_size == 32
    assert config.scheme.name == "ll_cp"


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match=r"Unknown scheme 'll_x'"):
        _load("coco.py", "scheme=ll_x")
    with pytest.raises(ValueError, match=r"Unknown config argument 'schem'"):
        _load("coco.py", "schem=ll_r")


def test_mistyped_override_fails_before_anything_runs(tmp_path):
    command = [
        sys.executable, "-m", "lln_jax.main", f"--config={CONFIG_DIR / 'coco.py'}:scheme=ll_r",
        "--config.scheme.delta_rell=0.003", f"--workdir={tmp_path}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'lln_jax.main: \'delta_rell\' Did you mean "delta_rel" instead of "delta_rell"?'
    ]
    assert not any(tmp_path.iterdir())  # Nothing was started.


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["coco.py:runlocal=maybe"], "config argument runlocal='maybe': give runlocal"),
        (
            ["digits.py", "--config.data.batch_size=0", "--config.num_epochs=0",
             "--config.checkpoint.every_steps=0", "--config.data.val_frac=0"],
            "bad config: num_epochs=0 must be a positive integer; data.batch_size=0 must be a "
            "positive integer; checkpoint.every_steps=0 must be a positive integer; "
            "data.val_frac=0.0 must be in (0, 1)",
        ),
        (["digits.py", "--config.scheme.name=ll_cp"], "holds the recipe of 'll_r'"),
        (["digits.py:scheme=an", "--config.optim.learning_rate=-1"], "learning_rate=-1.0"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_before_anything_heavy(tmp_path, arguments, message):
    config, *overrides = arguments
    command = [sys.executable, "-m", "lln_jax.main", f"--config={CONFIG_DIR / config}",
               *overrides, f"--workdir={tmp_path}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr
    assert "tensorflow" not in done.stderr.lower()  # Refused before TensorFlow was imported.
    assert not any(tmp_path.iterdir())
