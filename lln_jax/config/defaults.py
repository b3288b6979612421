"""Helpers for `configs/*.py`: the `get_config(arg)` argument parser.

Imported by configs, which must not initialise JAX; this module imports only
ml_collections.
"""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `'scheme=ll_ct,runlocal'` against typed defaults.

    A bare name sets a boolean default to True; `key=value` is converted to the default's
    type. An unknown key is an error that lists the known ones.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            parsed[key] = _parse_bool(key, value)
        else:
            parsed[key] = type(default)(value)
    return parsed


_BOOLS = {"": True, "1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _parse_bool(key: str, value: str) -> bool:
    if value.lower() not in _BOOLS:
        raise ValueError(f"config argument {key}={value!r}: give {key}, {key}=true or {key}=false")
    return _BOOLS[value.lower()]


# The paper's optimizers (SPEC.md section 4); learning rates are per data set.
OPTIMIZERS = {
    "adam": dict(name="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    "sgd": dict(name="sgd", momentum=0.9, weight_decay=1e-3),
}


# What a recipe may set besides the scheme's own hyperparameters: the authors of some
# methods train with another optimizer, learning rate, batch size, number of epochs or
# early stop than the paper's.
RECIPE_OVERRIDES = ("optimizer", "learning_rate", "batch_size", "num_epochs", "early_stop_drop")

# GR Loss (SPEC.md section 11): its public code's defaults, the only published values.
# A later paper built on GR (AEVLP) uses beta (0, 10, -2, -8) on COCO, NUS-WIDE and CUB,
# and q3 1.5 on CUB: `--config.scheme.beta='(0,10,-2,-8)'`, `--config.scheme.q3=1.5`.
GR_LOSS = dict(beta=(0.0, 2.0, -2.0, -2.0), alpha=(0.5, 2.0, 0.8, 0.5), q2=0.01, q3=1.0)
# ... and its code's training: Adam 1e-5 (the head at 10x, no weight decay), batch 8,
# 8 epochs, early stop 2 points below the best val mAP (LL's is 3).
GR_TRAINING = dict(
    optimizer="adam", learning_rate=1e-5, batch_size=8, num_epochs=8, early_stop_drop=2.0
)

BOOSTLU_ALPHA = 5.0  # BoostLU's factor on positive class activations (Kim et al., CVPR 2023).


def create_config(
    arg: str | None,
    *,
    dataset: str,
    optimizer: str,
    learning_rate: float,
    recipes: dict[str, dict],
    num_epochs: int = 10,
    image_size: int = 448,
    batch_size: int = 16,
    model: str = "resnet50",
    head_lr_multiplier: float = 10.0,
    runlocal_dataset: str | None = None,
) -> ml_collections.ConfigDict:
    """The paper's end-to-end setting on one data set (SPEC.md section 4).

    Args:
      arg: the `get_config` argument: `scheme=<name>` (a key of `recipes`),
        `labels=<single_positive|full|stored>`, `boostlu` (the BoostLU head, alpha 5),
        `val_labels=<true|observed>` (model selection on clean or observed val labels),
        `linear_init` (first train the head alone on frozen features, 25 epochs),
        `runlocal` (tiny model, small images, two epochs: a smoke run on a CPU).
      dataset: the data set's registry name.
      optimizer: a key of `OPTIMIZERS`.
      learning_rate: the backbone's learning rate.
      recipes: per scheme, its hyperparameters (e.g. `delta_rel`, a *fraction*: the paper's
        percent divided by 100, its "0.2" is 0.002) and any of `RECIPE_OVERRIDES` where
        the method's authors trained otherwise. Adding a scheme is one entry here.
      num_epochs, image_size, batch_size, model, head_lr_multiplier: the paper's values
        unless a data set (the embedded benchmark) needs others; `runlocal` overrides them.
      runlocal_dataset: a smaller data set for `runlocal`, where one exists.
    """
    arg = parse_arg(
        arg, scheme="ll_r", labels="single_positive", boostlu=False, val_labels="true",
        linear_init=False, runlocal=False,
    )  # fmt: skip
    if arg.scheme not in recipes:
        raise ValueError(f"Unknown scheme {arg.scheme!r}; valid: {sorted(recipes)}")
    recipe = dict(recipes[arg.scheme])
    overrides = {key: recipe.pop(key) for key in RECIPE_OVERRIDES if key in recipe}
    optimizer = overrides.get("optimizer", optimizer)
    learning_rate = overrides.get("learning_rate", learning_rate)
    batch_size = overrides.get("batch_size", batch_size)
    num_epochs = overrides.get("num_epochs", num_epochs)
    config = ml_collections.ConfigDict()
    # The scheme whose recipe this config holds; overriding scheme.name alone is refused.
    config.recipe = arg.scheme
    config.seed = 0
    config.num_epochs = num_epochs
    config.log_every_steps = 50
    # Stop when val mAP falls this many points below the best.
    config.early_stop_drop = overrides.get("early_stop_drop", 3.0)
    # After every epoch, the train split's loss on its false negatives (a pass over train).
    config.diagnose_false_negatives = False
    config.data = dict(
        name=dataset,
        data_dir=ml_collections.config_dict.placeholder(str),  # TFDS's default when unset.
        # Train on data prepared with --nocheck_counts (a subset), which is refused otherwise.
        allow_unchecked_counts=False,
        label_setting=arg.labels,
        # Model selection against the val split's clean labels ("true", the paper's) or its
        # single-positive observed labels ("observed", for users without clean labels).
        val_labels=arg.val_labels,
        observed_seed=1200,
        split_seed=1200,
        val_frac=0.2,
        image_size=image_size,
        # "original": decode and resize the stored images every time; "jpeg95" or "raw": read
        # them pre-resized to image_size (`python -m lln_jax.prepare NAME --image_size=...`).
        storage="original",
        batch_size=batch_size,
        eval_batch_size=64,
        # PIL decodes and resizes without the GIL, so threads in the training process scale
        # with the cores (benchmarks/README.md); worker processes add a copy of every batch.
        num_threads=16,
        num_workers=0,
    )
    config.model = dict(
        name=model,
        dtype="float32",  # "bfloat16": mixed precision.
        boost_alpha=BOOSTLU_ALPHA if arg.boostlu else 1.0,  # 1: the plain linear head.
    )
    # ImageNet weights converted by `python -m lln_jax.models.pretrained` (.npz); the paper
    # starts every run from torchvision's ResNet-50 IMAGENET1K_V1. Unset: from scratch.
    config.init_from = ml_collections.config_dict.placeholder(str)
    config.scheme = dict(name=arg.scheme, **recipe)
    config.optim = dict(
        OPTIMIZERS[optimizer],
        learning_rate=learning_rate,
        head_lr_multiplier=head_lr_multiplier,
        scheme_lr_multiplier=10.0,  # ROLE's label estimator at 10x (SPEC.md section 9).
    )
    # LinearInit: before the end-to-end run, the head alone on frozen backbone features for
    # `num_epochs` (0: off), with the run's optimizer at its own rate and batch size; by
    # default the head's end-to-end rate and the run's batch.
    config.linear_init = dict(
        num_epochs=25 if arg.linear_init else 0,
        learning_rate=learning_rate * head_lr_multiplier,
        batch_size=batch_size,
    )
    config.checkpoint = dict(every_steps=1000, max_to_keep=2)
    if arg.runlocal:
        config.num_epochs = 2
        config.log_every_steps = 5
        config.data.update(image_size=32, batch_size=16, eval_batch_size=16, num_threads=2)
        config.linear_init.update(num_epochs=min(config.linear_init.num_epochs, 2), batch_size=16)
        config.model.name = "resnet_tiny"
        config.checkpoint.every_steps = 10
        config.data.name = runlocal_dataset or dataset
    return config
