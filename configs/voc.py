"""Pascal VOC 2012, 20 classes: SGD 5e-3; delta_rel LL-R 0.2%, LL-Ct 0.2%, LL-Cp 0.1%."""

from lln_jax.config import defaults

# Per scheme: its hyperparameters (delta_rel a fraction per epoch: the paper's 0.2% is 0.002)
# and, where a method's authors trained otherwise, their optimizer, learning rate and batch.
RECIPES = {
    "an": {},
    "an_ls": {"label_smoothing": 0.1},
    "wan": {},
    "epr": {"expected_num_pos": 1.5},
    "role": {"expected_num_pos": 1.5},
    # Zhou et al.'s weight, learning rate and batch (and their Adam).
    "em": {"entropy_weight": 0.2, "optimizer": "adam", "learning_rate": 1e-5, "batch_size": 8},
    "ll_r": {"delta_rel": 0.002},
    "ll_ct": {"delta_rel": 0.002},
    "ll_cp": {"delta_rel": 0.001},
    # GR Loss: its code's defaults and training (AEVLP's values: lln_jax/config/defaults.py).
    "gr": {**defaults.GR_LOSS, **defaults.GR_TRAINING},
}


def get_config(arg=None):
    return defaults.create_config(
        arg,
        dataset="voc2012",
        optimizer="sgd",
        learning_rate=5e-3,
        recipes=RECIPES,
    )
