"""The model zoo: ResNet-18/50 and DenseNet-121 in plain PyTorch, with torchvision's exact state-dict names.

torchvision is not importable here (its reachable wheels are CUDA builds), so the networks are written out;
their parameter names and shapes are torchvision's (`conv1`, `layer1.0.downsample.0`, `fc`;
`features.denseblock1.denselayer1.norm1`, `classifier`), so an ImageNet checkpoint loads key for key
(learner.checkpoints). Each factory takes the model's input spec like `small_cnn`: the stem convolution is
built for `channels` and the head (the last nn.Linear) has `classes` outputs.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.learner.errors import ModelFactoryError

DENSENET_MIN_SIDE = 29  # smaller images shrink to nothing before the last transition's 2x2 pooling


def _init(model: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal convolutions (fan out), BatchNorm 1/0, zero linear biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0)


def _conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return cast(Tensor, self.relu(out + identity))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, as torchvision's ResNet v1.5) -> 1x1 x4 with a shortcut (ResNet-50 and up)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return cast(Tensor, self.relu(out + identity))


class ResNet(nn.Module):
    """torchvision's ResNet: stem (conv1, bn1, max-pool), four stages layer1..layer4, average pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int], channels: int,
                 classes: int, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, classes)
        _init(self)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last is not None:
                    nn.init.constant_(last.weight, 0)

    def _stage(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return cast(Tensor, self.fc(torch.flatten(self.avgpool(x), 1)))


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size x growth) then BN-ReLU-3x3 conv (growth): its output joins the block's input."""

    def __init__(self, c_in: int, growth: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv1(c_in, bn_size * growth)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3(bn_size * growth, growth)
        self.drop_rate = drop_rate

    def forward(self, features: list[Tensor]) -> Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        out = self.conv2(self.relu2(self.norm2(bottleneck)))
        return F.dropout(out, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else out


class _DenseBlock(nn.ModuleDict):
    """`layers` dense layers named denselayer1..N, each fed every earlier output."""

    def __init__(self, layers: int, c_in: int, growth: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(c_in + i * growth, growth, bn_size, drop_rate))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-1x1 conv halving the channels, then 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.conv = _conv1(c_in, c_out)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's DenseNet: `features` (conv0, norm0, pool0, dense blocks and transitions, norm5), classifier."""

    def __init__(self, channels: int, classes: int, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16),
                 init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(channels, init_features, 7, stride=2, padding=3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        width = init_features
        for i, layers in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, width, growth, bn_size, drop_rate))
            width += layers * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(width, width // 2))
                width //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(width))
        self.classifier = nn.Linear(width, classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
        return cast(Tensor, self.classifier(torch.flatten(out, 1)))


def resnet18(channels: int, height: int, width: int, classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-18 (11.7 M parameters at 3 channels, 1000 classes), stem built for `channels`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), channels, classes, zero_init_residual)


def resnet50(channels: int, height: int, width: int, classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-50 (25.6 M parameters at 3 channels, 1000 classes), stem built for `channels`."""
    return ResNet(Bottleneck, (3, 4, 6, 3), channels, classes, zero_init_residual)


def densenet121(channels: int, height: int, width: int, classes: int, drop_rate: float = 0.0) -> nn.Module:
    """DenseNet-121 (growth 32, blocks 6/12/24/16, bn_size 4, 64 initial features; 8.0 M parameters at 3
    channels, 1000 classes), stem built for `channels`.

    Raises:
        ModelFactoryError: the images are smaller than DENSENET_MIN_SIDE on a side (they would pool to nothing).
    """
    if min(height, width) < DENSENET_MIN_SIDE:
        raise ModelFactoryError(f"densenet121 needs images of at least {DENSENET_MIN_SIDE}x{DENSENET_MIN_SIDE} "
                                f"pixels, got {height}x{width}")
    return DenseNet(channels, classes, drop_rate=drop_rate)
