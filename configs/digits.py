"""The embedded benchmark: multi-label mosaics of handwritten digits (no download).

`python -m lln_jax.main --config=configs/digits.py:scheme=ll_cp --workdir=runs/digits`.
A small ResNet trained from scratch on 32x32 images in a few minutes on a CPU. With no
pretrained backbone to protect, the head trains at the backbone's rate.
"""

from lln_jax import config_lib


def get_config(arg=None):
    config = config_lib.create_config(
        arg,
        dataset="digit_mosaics",
        optimizer="adam",
        learning_rate=1e-3,
        delta_rel={"ll_r": 0.02, "ll_ct": 0.02, "ll_cp": 0.01},
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
