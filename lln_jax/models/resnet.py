"""ResNet v1.5 in Flax Linen, laid out as torchvision builds it.

Stride 2 sits on the 3x3 convolution of a bottleneck ("v1.5"); module names follow
torchvision's state dict (`conv1`, `bn1`, `layer1_0`, `downsample_conv`, `fc`) so that
ImageNet weights map one to one. BatchNorm is PyTorch's (see `BatchNorm`). The head is
initialised like PyTorch's `nn.Linear` default: weight and bias uniform in +-1/sqrt(fan_in).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# The normalisation torchvision's ImageNet weights expect, applied inside the model so
# that the input pipeline ships uint8 pixels (a quarter of the bytes of float32).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HEAD_NAME = "fc"  # torchvision's name for the classification head.

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", relu).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int):
    """PyTorch's default `nn.Linear` initialisation: uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normalize(images: jax.Array) -> jax.Array:
    """Pixels in [0, 255] -> `(x / 255 - mean) / std` in float32, as ToTensor + Normalize."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class BatchNorm(nn.Module):
    """PyTorch's `BatchNorm2d` over the real rows of a (possibly padded) batch.

    Training normalises with the biased batch variance and updates the running variance
    with the unbiased one (`n / (n - 1)`), as PyTorch does (Flax's BatchNorm uses the biased
    one for both); momentum 0.1 in PyTorch's convention, eps 1e-5. Padding rows (`mask` 0)
    count in no statistic, so a padded last batch normalises like the reference's smaller
    one. Under `jit` over a batch-sharded array the statistics are global (synced).
    """

    use_running_average: bool
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var, count = _masked_moments(x, mask)
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
        y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


def _masked_moments(x: jax.Array, mask: jax.Array | None):
    """Per-channel mean, biased variance and element count over the rows where mask > 0."""
    weight = jnp.ones(x.shape[:1], jnp.float32) if mask is None else (mask > 0).astype(jnp.float32)
    weight = weight.reshape((-1,) + (1,) * (x.ndim - 1))
    axes = tuple(range(x.ndim - 1))
    count = jnp.sum(weight) * (x.size // (x.shape[0] * x.shape[-1]))
    mean = jnp.sum(x * weight, axes) / jnp.maximum(count, 1.0)
    var = jnp.sum(jnp.square(x - mean) * weight, axes) / jnp.maximum(count, 1.0)
    return mean, var, count


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    """PyTorch's `MaxPool2d(3, stride=2, padding=1)` as the maximum of 9 strided slices.

    The same values and, but for exactly tied maxima, the same gradients as a windowed
    reduction, whose backward pass (select-and-scatter) XLA's CPU backend runs about 4x
    slower (`benchmarks/conv_kernels.py`).
    """
    height, width = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    windows = [
        padded[:, i : i + 2 * height - 1 : 2, j : j + 2 * width - 1 : 2, :]
        for i in range(3)
        for j in range(3)
    ]
    return functools.reduce(jnp.maximum, windows)


class PointwiseConv(nn.Module):
    """A 1x1 convolution written as a matmul over channels (same `kernel` `[1, 1, in, out]`).

    XLA's CPU backend runs this form about 3x faster than the equivalent convolution
    (`benchmarks/conv_kernels.py`); on accelerators both lower to the same matmul.
    """

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        if self.strides > 1:  # A strided 1x1 convolution reads every `strides`-th pixel.
            x = x[:, :: self.strides, :: self.strides, :]
        return jnp.einsum("bhwc,cd->bhwd", x.astype(self.dtype), kernel[0, 0].astype(self.dtype))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with a projection shortcut where the shape changes."""

    width: int
    strides: int
    conv: functools.partial
    norm: functools.partial
    dtype: jnp.dtype = jnp.float32
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        out_features = self.width * self.expansion
        pointwise = functools.partial(PointwiseConv, dtype=self.dtype)
        y = pointwise(self.width, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y, mask))
        y = self.conv(
            self.width, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv2"
        )(y)
        y = nn.relu(self.norm(name="bn2")(y, mask))
        y = self.norm(name="bn3")(pointwise(out_features, name="conv3")(y), mask)
        if self.strides != 1 or x.shape[-1] != out_features:
            x = pointwise(out_features, self.strides, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x, mask)
        return nn.relu(x + y)


class BoostedHead(nn.Module):
    """The linear head over the last feature map, with BoostLU (SPEC.md section 9).

    The head is applied at every position (a 1x1 convolution, bias included), its positive
    class activations are multiplied by `alpha`, and the map is averaged:
    `mean_hw(where(cam > 0, alpha * cam, cam))`. With `alpha == 1` that is global average
    pooling followed by the head, computed in that order. The parameters are those of the
    plain linear head (`kernel` `[D, C]`, `bias` `[C]`, PyTorch's `nn.Linear` initialisation),
    so ImageNet weights and the head's initialisation do not depend on `alpha`.
    """

    num_classes: int
    alpha: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """`[B, H, W, D]` features -> `[B, C]` float32 logits."""
        fan_in = features.shape[-1]
        kernel = self.param("kernel", torch_linear_init(fan_in), (fan_in, self.num_classes))
        bias = self.param("bias", torch_linear_init(fan_in), (self.num_classes,))
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        if self.alpha == 1.0:
            pooled = jnp.mean(features, axis=(1, 2)).astype(self.dtype)
            return (jnp.dot(pooled, kernel) + bias).astype(jnp.float32)
        cam = jnp.einsum("bhwd,dc->bhwc", features.astype(self.dtype), kernel) + bias
        cam = cam.astype(jnp.float32)
        return jnp.mean(jnp.where(cam > 0, self.alpha * cam, cam), axis=(1, 2))


class ResNet(nn.Module):
    """ResNet v1.5 with bottleneck blocks, global average pooling and a linear head.

    Attributes:
      num_classes: C, the size of the head.
      stage_sizes: blocks per stage ((3, 4, 6, 3) for ResNet-50).
      stage_widths: bottleneck widths per stage ((64, 128, 256, 512) for ResNet-50).
      stem_width: channels of the 7x7 stem.
      boost_alpha: BoostLU's factor on positive class activations (1: the plain head).
      dtype: the computation dtype (parameters stay float32).
    """

    num_classes: int
    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    stem_width: int = 64
    boost_alpha: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        train: bool,
        mask: jax.Array | None = None,
        features_only: bool = False,
    ) -> jax.Array:
        """`[B, H, W, 3]` pixels in [0, 255] (uint8 or float) -> `[B, C]` float32 logits.

        `mask` `[B]` marks the real rows of a padded batch; BatchNorm ignores the others.
        With `features_only`, the `[B, D]` float32 globally pooled features instead (the
        head's input, for LinearInit).
        """
        conv = functools.partial(
            nn.Conv, use_bias=False, padding="VALID", kernel_init=conv_init, dtype=self.dtype
        )
        norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
        x = conv(self.stem_width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name="conv1")(
            normalize(images).astype(self.dtype)
        )
        x = nn.relu(norm(name="bn1")(x, mask))
        x = max_pool_3x3_stride_2(x)
        for stage, (num_blocks, width) in enumerate(
            zip(self.stage_sizes, self.stage_widths, strict=True)
        ):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                name = f"layer{stage + 1}_{block}"
                x = Bottleneck(width, strides, conv, norm, self.dtype, name=name)(x, mask)
        if features_only:
            return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
        head = BoostedHead(self.num_classes, self.boost_alpha, self.dtype, name=HEAD_NAME)
        return head(x)


ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), stage_widths=(64, 128, 256, 512))
# The paper's OpenImages backbone: torchvision's resnet101, the same blocks, more of them.
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), stage_widths=(64, 128, 256, 512))
# Small variants of the same architecture, for CPU work and tests.
ResNetSmall = functools.partial(
    ResNet, stage_sizes=(1, 1, 1), stage_widths=(16, 32, 64), stem_width=16
)
ResNetTiny = functools.partial(ResNet, stage_sizes=(1,), stage_widths=(8,), stem_width=8)
