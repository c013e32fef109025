"""ResNet-32 for CIFAR-sized inputs.

The CIFAR ResNet of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016, §4.2), as
used by LDAM-DRW (kaidic/LDAM-DRW, ``models/resnet_cifar.py``), Balanced Meta-Softmax and CDB-CE:
a 3×3 stem with 16 channels, three stages of five BasicBlocks with 16 / 32 / 64 channels,
option-A shortcuts (stride-2 subsampling plus zero channel padding: no parameters), kaiming-normal
initialisation of convolutions and classifier, global average pooling and a 64-d feature.

Two departures from the reference, neither of which changes the parameters: the pooling is
adaptive, so 8×8 inputs (the bundled digits) run without resizing, and the classifier is called
``fc`` (LDAM names it ``linear``) so that every network in ``longtail.nets`` shares one interface.
ResNet-32 for 10 classes has 464,154 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _PadShortcut(nn.Module):
    """Option-A shortcut: keep every second pixel, zero-pad the new channels on both sides."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        assert extra_channels % 2 == 0, "option A pads the same number of channels on each side"
        self.pad = extra_channels // 2

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, ::2, ::2]  # (B, C, ceil(H/2), ceil(W/2)), as a stride-2, padding-1 3×3 conv
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))  # (B, C + 2·pad, H', W')


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = _PadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with ``6n + 2`` layers that returns ``(logits, feature)``.

    Args:
        num_blocks: BasicBlocks per stage (5 for ResNet-32).
        num_classes: Size of the classifier output.
        in_channels: Channels of the input images (1 for grayscale digits).
        widths: Channels of the three stages.
    """

    def __init__(
        self,
        num_blocks: int,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_stage(widths[0], widths[0], num_blocks, stride=1)
        self.layer2 = self._make_stage(widths[0], widths[1], num_blocks, stride=2)
        self.layer3 = self._make_stage(widths[1], widths[2], num_blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[2]
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # The reference applies kaiming_normal_ (fan_in, gain sqrt 2) to every conv and linear
        # weight; batch norm and the linear bias keep PyTorch's defaults.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the pooled penultimate feature, shape ``(B, feature_dim)``."""
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)
        return torch.flatten(self.avgpool(x), 1)  # (B, 64)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits (B, num_classes), feature (B, feature_dim))``."""
        feature = self.forward_features(x)
        return self.fc(feature), feature


def resnet32(num_classes: int, *, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (3 stages × 5 BasicBlocks, 16/32/64 channels, 64-d feature)."""
    return CifarResNet(5, num_classes, in_channels=in_channels)
