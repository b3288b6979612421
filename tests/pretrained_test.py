"""torchvision ResNet weights in our Flax ResNet: conversion, parity, merging, loading."""

import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lln_jax import models
from lln_jax.models import pretrained, resnet

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
# The architecture of tests/fixtures/make_resnet_fixture.py.
SmallTorchvisionResNet = functools.partial(
    resnet.ResNet, num_classes=5, stage_sizes=(2, 1, 1), stage_widths=(8, 16, 32), stem_width=8
)


def _load_fixture(directory: pathlib.Path, prefix: str):
    state_dict = pretrained.read_state_dict(str(directory / f"{prefix}_state_dict.safetensors"))
    with np.load(directory / f"{prefix}_outputs.npz") as data:
        outputs = {key: data[key] for key in data.files}
    return pretrained.convert(state_dict), outputs


def _check_parity(model, variables, outputs, tolerance):
    # Jitted: one compile each instead of hundreds of eager dispatches.
    init = jax.jit(functools.partial(model.init, train=False))
    initial = init(jax.random.PRNGKey(0), outputs["pixels"][:1])
    variables = pretrained.merge(initial, variables, exclude=())  # Every name and shape.
    eval_logits = jax.jit(functools.partial(model.apply, train=False))(variables, outputs["pixels"])
    np.testing.assert_allclose(eval_logits, outputs["eval_logits"], **tolerance)
    train_apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    train_logits, updates = jax.jit(train_apply)(variables, outputs["pixels"])
    np.testing.assert_allclose(train_logits, outputs["train_logits"], **tolerance)
    expected_stats = pretrained.convert(
        {key[len("stats/") :]: value for key, value in outputs.items() if key.startswith("stats/")}
    )["batch_stats"]
    got = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
    for name, value in traverse_util.flatten_dict(expected_stats, sep="/").items():
        np.testing.assert_allclose(got[name], value, err_msg=name, **tolerance)
    return float(np.max(np.abs(eval_logits - outputs["eval_logits"])))


def test_small_torchvision_resnet_matches_in_eval_and_train_mode():
    variables, outputs = _load_fixture(FIXTURES, "resnet_small")
    _check_parity(SmallTorchvisionResNet(), variables, outputs, dict(rtol=1e-4, atol=1e-4))


@pytest.mark.slow
@pytest.mark.skipif(
    "LLN_RESNET50_PARITY_DIR" not in os.environ,
    reason="set LLN_RESNET50_PARITY_DIR to the --full_size_dir of make_resnet_fixture.py",
)
def test_full_size_torchvision_resnet50_matches():
    variables, outputs = _load_fixture(
        pathlib.Path(os.environ["LLN_RESNET50_PARITY_DIR"]), "resnet50"
    )
    difference = _check_parity(
        models.create("resnet50", num_classes=20), variables, outputs, dict(rtol=1e-3, atol=1e-3)
    )
    print(f"ResNet-50 eval logits: max abs difference {difference:.3g}")


@pytest.mark.slow  # torch (the bench extra) and a ResNet-101 compile.
def test_torchvision_resnet101_converts_and_matches(tmp_path):
    """torchvision's own resnet101, random weights and statistics, converted by the same
    name mapping: eval and train logits and the updated statistics match. torch runs in a
    process of its own: imported beside JAX and TensorFlow, its triton import crashes."""
    if importlib.util.find_spec("torchvision") is None:  # Found, not imported.
        pytest.skip("needs torchvision (pip install -e '.[bench]')")
    subprocess.run([sys.executable, str(FIXTURES / "make_resnet_fixture.py"), f"--out={tmp_path}",
                    f"--full_size_dir={tmp_path}", "--full_size_arch=resnet101",
                    "--full_size_pixels=96"], check=True, timeout=600)  # fmt: skip
    variables, outputs = _load_fixture(tmp_path, "resnet101")
    difference = _check_parity(
        models.create("resnet101", num_classes=20), variables, outputs, dict(rtol=1e-3, atol=1e-3)
    )
    print(f"ResNet-101 eval logits: max abs difference {difference:.3g}")


def test_merge_keeps_the_new_head_and_names_every_mismatch():
    model = models.create("resnet_tiny", num_classes=3)
    init = functools.partial(model.init, train=False)
    ours = init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
    theirs = jax.tree.map(np.asarray, init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3))))
    merged = pretrained.merge(ours, theirs, exclude=(models.HEAD_NAME,))
    np.testing.assert_array_equal(
        merged["params"]["conv1"]["kernel"], theirs["params"]["conv1"]["kernel"]
    )
    np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], ours["params"]["fc"]["kernel"])
    broken = traverse_util.flatten_dict(theirs, sep="/")
    del broken["params/bn1/scale"]
    broken["params/layer9_0/conv1/kernel"] = np.zeros(3)
    broken["params/conv1/kernel"] = np.zeros((3, 3, 3, 8))
    with pytest.raises(ValueError) as error:
        pretrained.merge(ours, traverse_util.unflatten_dict(broken, sep="/"), exclude=("fc",))
    message = str(error.value)
    assert "missing params/bn1/scale" in message
    assert "unexpected params/layer9_0/conv1/kernel" in message
    assert "params/conv1/kernel: shape (3, 3, 3, 8), model expects (7, 7, 3, 8)" in message


def test_save_and_load_round_trip(tmp_path):
    variables, _ = _load_fixture(FIXTURES, "resnet_small")
    pretrained.save(variables, str(tmp_path / "weights.npz"))
    loaded = pretrained.load(str(tmp_path / "weights.npz"))
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_a_pth_file_without_torch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"lln_jax\[torch\]"):
        pretrained.read_state_dict(str(tmp_path / "resnet50-0676ba61.pth"))
    with pytest.raises(ValueError, match=r"expected a \.pth"):
        pretrained.read_state_dict(str(tmp_path / "weights.bin"))


def test_the_conversion_command(tmp_path):
    import subprocess

    source = FIXTURES / "resnet_small_state_dict.safetensors"
    target = tmp_path / "converted.npz"
    subprocess.run(
        [sys.executable, "-m", "lln_jax.models.pretrained", f"--source={source}",
         f"--target={target}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    expected = pretrained.convert(pretrained.read_state_dict(str(source)))
    jax.tree.map(np.testing.assert_array_equal, pretrained.load(str(target)), expected)


def test_a_weights_file_is_checked_without_unpickling(tmp_path):
    from lln_jax.models import pretrained

    with pytest.raises(ValueError, match=r"init_from=.*missing\.npz does not exist"):
        pretrained.check_file(str(tmp_path / "missing.npz"))
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"noise\.npz is not a \.npz of weights"):
        pretrained.check_file(str(noise))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, weights=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"'weights\.npy' holds Python objects"):
        pretrained.check_file(str(pickled))
    good = tmp_path / "good.npz"
    np.savez(good, **{"params/fc/kernel": np.zeros((2, 3), np.float32)})
    pretrained.check_file(str(good))
