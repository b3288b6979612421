"""Test set-up: 8 fake CPU devices, fixed before JAX initialises."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest

jax.config.update("jax_disable_most_optimizations", True)

NUM_DEVICES = 8


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """The embedded benchmark's small configuration, prepared once for the whole session."""
    from lln_jax import datasets

    path = tmp_path_factory.mktemp("tfds")
    datasets.prepare("digit_mosaics_small", str(path))
    return str(path)
