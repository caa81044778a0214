"""CIFAR ResNets.

``cifar_resnet20/32/44/56``: the 3-stage 16/32/64-channel ResNets of He et al. (2016) in
the layout of akamaster/pytorch_resnet_cifar10, so its checkpoints load key for key
(after stripping their ``module.`` prefix): conv1, bn1, layer1..3 of BasicBlocks
(conv1/bn1/conv2/bn2), option-A shortcuts, linear.

Written for graph capture: every ReLU is its own ``nn.ReLU`` module (one per use site),
the option-A shortcut is a leaf module (:class:`OptionAShortcut`) that the lowering maps
onto a strided slice plus channel zero-pad, and the head is ``AdaptiveAvgPool2d(1)`` +
``torch.flatten`` + ``linear``.

``resnet18_cifar``: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max pool,
the usual CIFAR-100 ResNet-18.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: keep every second pixel, zero-pad the channels.

    y = pad(x[:, :, ::2, ::2], channels: pad_before zeros in front, pad_after behind).
    """

    def __init__(self, planes: int):
        super().__init__()
        self.planes = int(planes)
        self.stride = 2
        self.pad_before = self.planes // 4
        self.pad_after = self.planes // 4
        self.pad = (self.pad_before, self.pad_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_before={self.pad_before}, pad_after={self.pad_after}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if stride != 2 or planes != 2 * in_planes:
                raise ValueError("option-A shortcut needs stride 2 and doubled channels")
            self.shortcut: nn.Module = OptionAShortcut(planes)
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


def _depth_blocks(depth: int) -> int:
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return (depth - 2) // 6


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    n = _depth_blocks(depth)
    return CifarResNet([n, n, n], num_classes=num_classes)


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    return cifar_resnet(20, num_classes)


def cifar_resnet32(num_classes: int = 10) -> CifarResNet:
    return cifar_resnet(32, num_classes)


def cifar_resnet44(num_classes: int = 10) -> CifarResNet:
    return cifar_resnet(44, num_classes)


def cifar_resnet56(num_classes: int = 10) -> CifarResNet:
    return cifar_resnet(56, num_classes)


def resnet18_cifar(num_classes: int = 100) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem conv and no max pool (32x32 inputs)."""
    # imported here: the CIFAR ResNets above need no torchvision, and a Ray worker that unpickles
    # one would otherwise import it (over a second)
    from torchvision.models.resnet import BasicBlock as _TVBasicBlock, ResNet as _TVResNet

    model = _TVResNet(_TVBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    model.num_classes = num_classes
    return model
