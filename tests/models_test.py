"""The ResNet: torchvision's ResNet-50 layout and sizes, head initialisation, registry."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lln_jax import models


def _shapes(model, size=64):
    init = functools.partial(model.init, train=False)
    return jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.uint8))


def test_resnet50_has_torchvisions_parameter_count():
    variables = _shapes(models.create("resnet50", num_classes=1000))
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    assert count == 25_557_032  # torchvision.models.resnet50().parameters()


def test_resnet101_has_torchvisions_parameter_count_and_names():
    variables = _shapes(models.create("resnet101", num_classes=1000))
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    assert count == 44_549_160  # torchvision.models.resnet101().parameters()
    params = flax.traverse_util.flatten_dict(variables["params"], sep=".")
    assert params["layer3_22.conv3.kernel"].shape == (1, 1, 256, 1024)
    assert "layer3_23.conv1.kernel" not in params and "layer4_2.bn3.scale" in params


def test_resnet50_names_follow_torchvision():
    params = flax.traverse_util.flatten_dict(
        _shapes(models.create("resnet50", num_classes=20))["params"], sep="."
    )
    assert params["conv1.kernel"].shape == (7, 7, 3, 64)
    assert params["layer1_0.downsample_conv.kernel"].shape == (1, 1, 64, 256)
    assert params["layer2_0.conv2.kernel"].shape == (3, 3, 128, 128)  # The strided conv.
    assert "layer2_0.conv1" not in {k.rsplit(".", 1)[0] for k in params if "stride" in k}
    assert params["layer4_2.bn3.scale"].shape == (2048,)
    assert params["fc.kernel"].shape == (2048, 20)


def test_v1_5_strides_on_the_3x3_conv():
    model = models.create("resnet_small", num_classes=3)
    x = jnp.zeros((1, 32, 32, 3), jnp.uint8)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, inter = model.apply(variables, x, train=False, capture_intermediates=True)
    block = inter["intermediates"]["layer2_0"]
    assert block["conv1"]["__call__"][0].shape[1:3] == (8, 8)  # 1x1 keeps the resolution.
    assert block["conv2"]["__call__"][0].shape[1:3] == (4, 4)  # 3x3 halves it.


def test_head_is_initialised_like_torch_linear():
    model = models.create("resnet50", num_classes=80)

    @jax.jit  # Only the head is returned, so XLA initialises nothing else (seconds, not 20).
    def head(rng):
        return model.init(rng, jnp.zeros((1, 64, 64, 3), jnp.uint8), train=False)["params"]["fc"]

    fc = head(jax.random.PRNGKey(0))
    bound = 1 / np.sqrt(2048)
    for leaf in (fc["kernel"], fc["bias"]):
        assert np.abs(leaf).max() <= bound
        assert np.abs(leaf).max() > 0.9 * bound  # Uniform over the whole range.


def test_train_mode_updates_batch_stats_and_eval_mode_uses_them():
    model = models.create("resnet_tiny", num_classes=4)
    x = jax.random.randint(jax.random.PRNGKey(1), (4, 32, 32, 3), 0, 256).astype(jnp.uint8)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["bn1"]["mean"]
    after = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(before, after)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (4, 4) and logits.dtype == jnp.float32


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'resnet51'.*resnet50"):
        models.create("resnet51", num_classes=3)


def test_batchnorm_ignores_padding_rows_and_keeps_pytorchs_running_variance():
    model = models.create("resnet_tiny", num_classes=4)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    padded = np.concatenate([real, real[:1], real[:1]])  # Two padding rows repeat row 0.
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(real), train=False)
    logits, stats = model.apply(variables, real, train=True, mutable=["batch_stats"])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    padded_logits, padded_stats = model.apply(
        variables, padded, train=True, mask=mask, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(padded_logits[:3], logits, rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), padded_stats, stats
    )
    # The stem's running variance moves towards the *unbiased* batch variance (PyTorch).
    x = np.asarray(
        jax.lax.conv_general_dilated(
            models.resnet.normalize(jnp.asarray(real)),
            variables["params"]["conv1"]["kernel"], (2, 2), ((3, 3), (3, 3)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    )  # fmt: skip
    unbiased = x.reshape(-1, x.shape[-1]).var(axis=0, ddof=1)
    np.testing.assert_allclose(
        stats["batch_stats"]["bn1"]["var"], 0.9 * 1.0 + 0.1 * unbiased, rtol=1e-4
    )


@pytest.mark.slow  # Two compiles of a whole ResNet: kept out of the 4-minute default tier.
def test_mixed_precision_keeps_float32_params_and_changes_little():
    """bfloat16 compute: float32 parameters and logits; results within bf16's precision."""
    x = jax.random.randint(jax.random.PRNGKey(1), (8, 32, 32, 3), 0, 256).astype(jnp.uint8)
    full = models.create("resnet_small", num_classes=5)
    mixed = models.create("resnet_small", num_classes=5, dtype="bfloat16")
    variables = full.init(jax.random.PRNGKey(0), x, train=False)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(mixed.init(
        jax.random.PRNGKey(0), x, train=False)))  # fmt: skip
    for train in (False, True):
        apply = functools.partial(full.apply, train=train, mutable=["batch_stats"])
        reference, _ = apply(variables, x)
        got, _ = functools.partial(mixed.apply, train=train, mutable=["batch_stats"])(variables, x)
        assert got.dtype == jnp.float32
        scale = float(jnp.abs(reference).max())
        np.testing.assert_allclose(got, reference, atol=0.05 * scale)
    with pytest.raises(ValueError, match="dtype 'float16'"):
        models.create("resnet_tiny", num_classes=3, dtype="float16")


@pytest.mark.parametrize("size", [7, 8, 31, 112])
def test_max_pool_equals_the_windowed_reduction_with_its_gradient(size):
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(size), (2, size, size, 3))

    def reference(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    np.testing.assert_array_equal(models.resnet.max_pool_3x3_stride_2(x), reference(x))
    np.testing.assert_array_equal(
        jax.grad(lambda x: (models.resnet.max_pool_3x3_stride_2(x) ** 2).sum())(x),
        jax.grad(lambda x: (reference(x) ** 2).sum())(x),
    )
