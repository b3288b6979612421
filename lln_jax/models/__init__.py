"""Model registry: name -> constructor. `create(name, num_classes=..., **kwargs)`."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lln_jax.models import resnet

HEAD_NAME = resnet.HEAD_NAME  # The classification head's module name (own learning rate).

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet_small": resnet.ResNetSmall,
    "resnet_tiny": resnet.ResNetTiny,
}


DTYPES = ("float32", "bfloat16")


def output_stride(name: str) -> int:
    """How many input pixels one cell of the last feature map spans: the stem's 4 (a stride-2
    convolution and a stride-2 pool), doubled by every stage after the first; 1 for a model
    that is not one of the ResNets (nothing to check)."""
    stage_sizes = getattr(MODELS[name], "keywords", {}).get("stage_sizes")
    return 1 if stage_sizes is None else 4 * 2 ** (len(stage_sizes) - 1)


def create(
    name: str, *, num_classes: int, dtype: str = "float32", boost_alpha: float = 1.0, **kwargs: Any
) -> nn.Module:
    """Builds the model `name` with a head of `num_classes` outputs.

    `dtype` is the computation dtype: "bfloat16" is mixed precision (bf16 convolutions and
    matmuls on accelerators; float32 parameters, BatchNorm statistics, logits and loss).
    `boost_alpha` is BoostLU's factor on positive class activations (1: the plain head).

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid models: {sorted(MODELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"Unknown model dtype {dtype!r}; valid: {list(DTYPES)}")
    if boost_alpha < 1.0:
        raise ValueError(f"model.boost_alpha must be >= 1 (1 is the plain head), got {boost_alpha}")
    return MODELS[name](
        num_classes=num_classes, dtype=jnp.dtype(dtype), boost_alpha=boost_alpha, **kwargs
    )
