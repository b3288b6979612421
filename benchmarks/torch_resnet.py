"""torchvision's ResNet v1.5 with any number and width of stages, in PyTorch.

The PyTorch side of `pytorch_twin.py` and of the converter's test fixture
(`tests/fixtures/make_resnet_fixture.py`): torchvision's `Bottleneck` and module names
(conv1, bn1, layer<i>.<j>, downsample.0/1, fc), so that `lln_jax.models.pretrained.convert`
maps its state dict one to one, and torchvision's initialisation.
"""

import torch
from torch import nn
from torch.nn import functional
from torchvision.models import resnet as torchvision_resnet


class TorchResNet(nn.Module):
    """ResNet v1.5: 7x7 stem, max pool, bottleneck stages, global average pool, linear head."""

    def __init__(self, num_classes: int, *, stage_sizes, stage_widths, stem_width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stages, inplanes = [], stem_width
        for index, (blocks, width) in enumerate(zip(stage_sizes, stage_widths, strict=True)):
            stride, layers = (1 if index == 0 else 2), []
            for block in range(blocks):
                downsample = None
                if block == 0 and (stride != 1 or inplanes != width * 4):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, width * 4, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(width * 4),
                    )
                layers.append(
                    torchvision_resnet.Bottleneck(
                        inplanes, width, stride if block == 0 else 1, downsample
                    )
                )
                inplanes = width * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
            self.stages.append(f"layer{index + 1}")
        self.fc = nn.Linear(inplanes, num_classes)
        for module in self.modules():  # torchvision's ResNet initialisation.
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(functional.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = getattr(self, stage)(x)
        return self.fc(x.mean(dim=(2, 3)))
