"""Test set-up: 8 fake CPU devices, fixed before JAX initialises; the shared helpers.

`load_config` is imported by the test modules (`from conftest import load_config`): the
one way a test reads a shipped config.
"""

import importlib.util
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import pytest
from absl import flags

jax.config.update("jax_disable_most_optimizations", True)
# libtpu for the TPU plan's compiles (read when the TPU plugin loads, after this), kept by
# `make` apart from the environment's packages.
_LIBTPU = pathlib.Path(__file__).resolve().parents[1] / ".venv/libtpu/libtpu/libtpu.so"
if _LIBTPU.exists():
    os.environ.setdefault("TPU_LIBRARY_PATH", str(_LIBTPU))
# The test session is the program: it parses absl's flags (grain's workers read them).
flags.FLAGS.mark_as_parsed()

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str = "digits.py", arg: str | None = None, **overrides):
    """`configs/<name>`'s `get_config(arg)`, with dotted-key overrides
    (`load_config("digits.py", "scheme=ll_cp", **{"data.data_dir": path})`)."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), CONFIG_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def cpu_identity() -> str:
    """The CPU's model name, family, model and widest vector ISA, from /proc/cpuinfo: what
    XLA:CPU's kernels, and so the last bits of a CPU run, depend on."""
    info = pathlib.Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    fields = {}
    for line in reversed(text.splitlines()):  # The first processor's fields win.
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags_ = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                if flag in flags_), "SSE")  # fmt: skip
    return (
        f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')}, "
        f"model {fields.get('model', '?')}, {isa})"
    )


NUM_DEVICES = 8


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """The embedded benchmark's small configuration, prepared once for the whole session."""
    from lln_jax.data import datasets

    path = tmp_path_factory.mktemp("tfds")
    datasets.prepare("digit_mosaics_small", str(path))
    return str(path)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """`gs://BUCKET/...` served from `tmp_path/gcs/BUCKET/...` through etils.epath, the one
    path layer; the test runs in `tmp_path`, so a path mishandled as local shows up there."""
    from unittest import mock

    from etils.epath import gpath, testing

    root = tmp_path / "gcs"
    root.mkdir()
    monkeypatch.chdir(tmp_path)

    def local(path) -> str:
        path = str(path)
        return str(root / path[len("gs://") :]) if path.startswith("gs://") else path

    def redirect(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def redirect_two(original, source, target, *args, **kwargs):
        return original(local(source), local(target), *args, **kwargs)

    names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
             "rmtree", "stat", "walk")  # fmt: skip
    mocks = {name: redirect for name in names}
    mocks.update(copy=redirect_two, rename=redirect_two, replace=redirect_two)
    # With TensorFlow installed, epath sends gs:// to tf.io.gfile whatever the mock says.
    with mock.patch.object(gpath, "_is_tf_installed", lambda: False), testing.mock_epath(**mocks):
        yield root
