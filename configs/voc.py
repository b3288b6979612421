"""Pascal VOC 2012, 20 classes: SGD 5e-3; delta_rel LL-R 0.2%, LL-Ct 0.2%, LL-Cp 0.1%."""

from lln_jax import config_lib


def get_config(arg=None):
    return config_lib.create_config(
        arg,
        dataset="voc2012",
        optimizer="sgd",
        learning_rate=5e-3,
        delta_rel={"ll_r": 0.002, "ll_ct": 0.002, "ll_cp": 0.001},
    )
