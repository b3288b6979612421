"""The embedded benchmark: multi-label mosaics of handwritten digits (no download).

`python -m lln_jax.main --config=configs/digits.py:scheme=ll_cp --workdir=runs/digits`.
A small ResNet trained from scratch on 32x32 images in a few minutes on a CPU. With no
pretrained backbone to protect, the head trains at the backbone's rate.
"""

from lln_jax.config import defaults

# Per scheme: its hyperparameters (delta_rel scaled to this data set's false-negative rate,
# about a quarter of the entries, as the paper scales it per data set); about 3.4 of the 10
# digits are present per mosaic.
RECIPES = {
    "an": {},
    "an_ls": {"label_smoothing": 0.1},
    "wan": {},
    "epr": {"expected_num_pos": 3.4},
    "role": {"expected_num_pos": 3.4},
    "em": {"entropy_weight": 0.1},
    "ll_r": {"delta_rel": 0.02},
    "ll_ct": {"delta_rel": 0.02},
    "ll_cp": {"delta_rel": 0.01},
    # GR Loss at its code's defaults and early stop, trained at this benchmark's budget.
    "gr": {**defaults.GR_LOSS, "early_stop_drop": 2.0},
}


def get_config(arg=None):
    config = defaults.create_config(
        arg,
        dataset="digit_mosaics",
        optimizer="adam",
        learning_rate=1e-3,
        recipes=RECIPES,
        num_epochs=12,
        image_size=32,
        batch_size=32,
        model="resnet_small",
        head_lr_multiplier=1.0,
        runlocal_dataset="digit_mosaics_small",
    )
    config.diagnose_false_negatives = True
    config.data.eval_batch_size = 200
    config.data.num_threads = 2
    return config
