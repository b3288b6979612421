"""Model registry: name -> constructor. `create(name, num_classes=..., **kwargs)`."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from lln_jax.models import resnet

HEAD_NAME = "fc"  # The classification head's module name, trained at a higher LR.

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet.ResNet50,
    "resnet_small": resnet.ResNetSmall,
    "resnet_tiny": resnet.ResNetTiny,
}


def create(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds the model `name` with a head of `num_classes` outputs.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid models: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)
