"""CUB-200-2011, 312 attributes: Adam 7.5e-5; delta_rel LL-R 0.4%, LL-Ct 0.4%, LL-Cp 0.2%."""

from lln_jax import config_lib


def get_config(arg=None):
    return config_lib.create_config(
        arg,
        dataset="cub",
        optimizer="adam",
        learning_rate=7.5e-5,
        delta_rel={"ll_r": 0.004, "ll_ct": 0.004, "ll_cp": 0.002},
    )
