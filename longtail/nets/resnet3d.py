"""3D ResNets for video clips shaped ``(B, C, T, H, W)``.

``resnext101_3d`` is the 3D ResNeXt-101 of Hara, Kataoka and Satoh, "Can Spatiotemporal 3D CNNs
Retrace the History of 2D CNNs and ImageNet?" (CVPR 2018), the network of their 3D-ResNets-PyTorch
repository (kenshohara/3D-ResNets-PyTorch, ``models/resnext.py`` as released with
``resnext-101-kinetics.pth``) and of CDB-CE's EGTEA Gaze+ experiment (Sinha et al., ACCV 2020):

- stem: 7×7×7 convolution to 64 channels, stride (1, 2, 2), batch norm, ReLU, 3×3×3 max pool with
  stride 2;
- four stages of [3, 4, 23, 3] ResNeXt bottlenecks with ``planes`` 128 / 256 / 512 / 1024: a 1×1×1
  convolution to ``cardinality * (planes // 32)`` channels, a grouped 3×3×3 convolution (32 groups,
  carrying the stage's stride), a 1×1×1 convolution to ``2 * planes`` channels;
- shortcut type B: a 1×1×1 strided convolution plus batch norm where the shape changes;
- global average pooling to a 2048-d feature and a linear classifier ``fc``.

Parameter names and shapes are those of the published state dict (``conv1.weight``,
``layer1.0.downsample.0.weight``, ``fc.weight``, ...), so the Kinetics checkpoint loads with
``longtail.nets.load_weights``, which also strips the ``module.`` prefix its DataParallel
training left. For 400 Kinetics classes the network has 48,340,816 parameters. The pooling is
adaptive instead of a fixed ``AvgPool3d`` sized from the clip length, so any T, H, W run.

``resnet3d_small`` is a narrow 3D ResNet of the same family (BasicBlocks, [1, 1, 1, 1], 16 / 32 / 64
/ 128 channels, no max pool) for the moving-digits video default: 0.12 GFLOP per 8×32×32 clip,
quick on a two-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Triple = tuple[int, int, int]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Shortcut type B: identity, or a strided 1×1×1 projection where the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()  # no parameters, so no ``downsample.*`` keys, as in the reference
    return nn.Sequential(
        nn.Conv3d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm3d(out_planes),
    )


class BasicBlock3d(nn.Module):
    """Two 3×3×3 convolutions with batch norm and a type-B shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = _shortcut(in_planes, planes, stride)
        self.out_planes = planes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class ResNeXtBottleneck3d(nn.Module):
    """Hara's ResNeXt bottleneck: 1×1×1, grouped 3×3×3 (strided), 1×1×1 to ``2 * planes``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, cardinality: int = 32) -> None:
        super().__init__()
        mid_planes = cardinality * (planes // 32)
        out_planes = 2 * planes
        self.conv1 = nn.Conv3d(in_planes, mid_planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(mid_planes)
        self.conv2 = nn.Conv3d(
            mid_planes, mid_planes, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn2 = nn.BatchNorm3d(mid_planes)
        self.conv3 = nn.Conv3d(mid_planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_planes)
        self.downsample = _shortcut(in_planes, out_planes, stride)
        self.out_planes = out_planes

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


def _make_stage(
    block: Callable[[int, int, int], nn.Module],
    in_planes: int,
    planes: int,
    num_blocks: int,
    stride: int,
) -> nn.Sequential:
    """``num_blocks`` blocks; the first carries the stride and the change of width."""
    first = block(in_planes, planes, stride)
    rest = (block(first.out_planes, planes, 1) for _ in range(num_blocks - 1))
    return nn.Sequential(first, *rest)


def _out_planes(stage: nn.Sequential) -> int:
    return stage[-1].out_planes


class ResNet3d(nn.Module):
    """A four-stage 3D ResNet returning ``(logits, feature)``.

    Args:
        block: Block constructor ``block(in_planes, planes, stride)``; a block has ``out_planes``.
        layers: Blocks per stage.
        planes: ``planes`` of each stage; stages 2 to 4 halve T, H and W.
        num_classes: Size of the classifier output.
        in_channels: Channels of the input clip.
        stem_width: Output channels of the stem convolution.
        stem_kernel: Kernel (t, h, w) of the stem convolution (stride (1, 2, 2), "same" padding).
        max_pool: Whether the stem ends in a 3×3×3, stride-2 max pool.
    """

    def __init__(
        self,
        block: Callable[[int, int, int], nn.Module],
        layers: tuple[int, int, int, int],
        planes: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
        stem_width: int = 64,
        stem_kernel: Triple = (7, 7, 7),
        max_pool: bool = True,
    ) -> None:
        super().__init__()
        padding = tuple(k // 2 for k in stem_kernel)
        self.conv1 = nn.Conv3d(
            in_channels, stem_width, stem_kernel, stride=(1, 2, 2), padding=padding, bias=False
        )
        self.bn1 = nn.BatchNorm3d(stem_width)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1) if max_pool else nn.Identity()
        self.layer1 = _make_stage(block, stem_width, planes[0], layers[0], stride=1)
        self.layer2 = _make_stage(block, _out_planes(self.layer1), planes[1], layers[1], stride=2)
        self.layer3 = _make_stage(block, _out_planes(self.layer2), planes[2], layers[2], stride=2)
        self.layer4 = _make_stage(block, _out_planes(self.layer3), planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = _out_planes(self.layer4)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the reference: kaiming-normal (fan_out) convolutions, unit-scale batch norm,
        # PyTorch's default for the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the pooled penultimate feature of clips ``(B, C, T, H, W)``, ``(B, D)``."""
        # (B, stem, T/2, H/4, W/4) with the max pool, (B, stem, T, H/2, W/2) without
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D, t, h, w)
        return torch.flatten(self.avgpool(x), 1)  # (B, D)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits (B, num_classes), feature (B, feature_dim))``."""
        feature = self.forward_features(x)
        return self.fc(feature), feature


def resnext101_3d(num_classes: int, *, in_channels: int = 3) -> ResNet3d:
    """Hara et al.'s 3D ResNeXt-101 (cardinality 32, shortcut B), 2048-d feature."""
    block = partial(ResNeXtBottleneck3d, cardinality=32)
    return ResNet3d(
        block,
        layers=(3, 4, 23, 3),
        planes=(128, 256, 512, 1024),
        num_classes=num_classes,
        in_channels=in_channels,
    )


def resnet3d_small(
    num_classes: int, *, in_channels: int = 3, widths: tuple[int, int, int, int] = (16, 32, 64, 128)
) -> ResNet3d:
    """A narrow 3D ResNet (BasicBlocks, [1, 1, 1, 1], 128-d feature by default) for small clips."""
    return ResNet3d(
        BasicBlock3d,
        layers=(1, 1, 1, 1),
        planes=widths,
        num_classes=num_classes,
        in_channels=in_channels,
        stem_width=widths[0],
        stem_kernel=(3, 7, 7),
        max_pool=False,
    )
