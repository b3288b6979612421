"""NUS-WIDE (Cole et al.'s re-crawl), 81 classes: Adam 1e-5; LL-R 0.4%, LL-Ct 0.2%, LL-Cp 0.2%."""

from lln_jax import config_lib


def get_config(arg=None):
    return config_lib.create_config(
        arg,
        dataset="nuswide",
        optimizer="adam",
        learning_rate=1e-5,
        delta_rel={"ll_r": 0.004, "ll_ct": 0.002, "ll_cp": 0.002},
    )
