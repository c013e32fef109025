"""ResNet-10 / 50 / 152 and ResNeXt-50 for the large image datasets (ImageNet-LT, Places-LT, iNat).

Built on torchvision's ``ResNet`` (He et al., CVPR 2016), so the parameter names are torchvision's
(``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.weight``) and torchvision / ImageNet checkpoints
load with ``longtail.nets.load_weights``. ResNet-50 and ResNet-152 are exactly what torchvision's
``resnet50`` / ``resnet152`` builders make with ``weights=None``. ResNet-10 is the BasicBlock
network with one block per stage used by OLTR (Liu et al., CVPR 2019) and classifier-balancing
(Kang et al., ICLR 2020) on ImageNet-LT; it has a 512-d feature, the others a 2048-d one.
ResNeXt-50 (Xie et al., CVPR 2017) is torchvision's ``resnext50_32x4d`` (Bottleneck, [3, 4, 6, 3],
32 groups of width 4), the backbone of Kang et al.'s ImageNet-LT tables (classifier-balancing's
``ResNext50Feature.py`` builds the same network: ``groups=32, width_per_group=4``).

The subclass only adds the project's interface: ``forward`` returns ``(logits, feature)``,
``forward_features`` returns the pooled feature and ``feature_dim`` its size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

_STEM_WIDTH = 64  # torchvision's ResNet stem


class TorchvisionResNet(ResNet):
    """torchvision's ResNet returning ``(logits, feature)``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Blocks per stage.
        num_classes: Size of the classifier output.
        in_channels: Input channels; the stem convolution is replaced only when it is not 3.
        groups, width_per_group: ResNeXt's cardinality and group width (1 and 64: ResNet).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int,
        in_channels: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__(
            block, layers, num_classes=num_classes, groups=groups, width_per_group=width_per_group
        )
        self.feature_dim = self.fc.in_features
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, _STEM_WIDTH, 7, stride=2, padding=3, bias=False)
            # same initialisation torchvision gives its stem
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the pooled penultimate feature, shape ``(B, feature_dim)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D, H/32, W/32)
        return torch.flatten(self.avgpool(x), 1)  # (B, D)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits (B, num_classes), feature (B, feature_dim))``."""
        feature = self.forward_features(x)
        return self.fc(feature), feature


def resnet10(num_classes: int, *, in_channels: int = 3) -> TorchvisionResNet:
    """ResNet-10: BasicBlock, [1, 1, 1, 1], 512-d feature (OLTR / classifier-balancing)."""
    return TorchvisionResNet(BasicBlock, [1, 1, 1, 1], num_classes, in_channels)


def resnet50(num_classes: int, *, in_channels: int = 3) -> TorchvisionResNet:
    """ResNet-50: Bottleneck, [3, 4, 6, 3], 2048-d feature (torchvision's ``resnet50``)."""
    return TorchvisionResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def resnet152(num_classes: int, *, in_channels: int = 3) -> TorchvisionResNet:
    """ResNet-152: Bottleneck, [3, 8, 36, 3], 2048-d feature (torchvision's ``resnet152``)."""
    return TorchvisionResNet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels)


def resnext50(num_classes: int, *, in_channels: int = 3) -> TorchvisionResNet:
    """ResNeXt-50 32x4d: 2048-d feature (torchvision's ``resnext50_32x4d``)."""
    return TorchvisionResNet(
        Bottleneck, [3, 4, 6, 3], num_classes, in_channels, groups=32, width_per_group=4
    )
