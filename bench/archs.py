"""The networks of issue 12's targets, written in plain torch (no torchvision here),
with seeded random weights: ResNet-18/50 and VGG-11 at 3x224x224, and MLPs.

BatchNorm statistics are randomised (running mean ~ N(0, 1), variance in [0.5, 2]) so
that folding them into the convolutions is not the identity.
"""
from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return bn


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, c: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, c, 3, stride, 1, bias=False), _bn(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), _bn(c))
        self.short = _shortcut(cin, c, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, c: int, stride: int) -> None:
        super().__init__()
        out = 4 * c
        self.body = nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), _bn(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, stride, 1, bias=False), _bn(c), nn.ReLU(),
                                  nn.Conv2d(c, out, 1, bias=False), _bn(out))
        self.short = _shortcut(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))


def resnet(block: type, counts: list[int], classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), _bn(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (c, n) in enumerate(zip((64, 128, 256, 512), counts, strict=False)):
        for j in range(n):
            layers.append(block(cin, c, 2 if (i > 0 and j == 0) else 1))
            cin = c * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers).eval()


def resnet18() -> nn.Module:
    return resnet(Basic, [2, 2, 2, 2])


def resnet50() -> nn.Module:
    return resnet(Bottleneck, [3, 4, 6, 3])


def vgg11(classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 3
    for c in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if c == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
            cin = c
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
               nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, classes)]
    return nn.Sequential(*layers).eval()


def mlp(widths: list[int], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


NETS = {
    "resnet18": (resnet18, (1, 3, 224, 224)),
    "resnet50": (resnet50, (1, 3, 224, 224)),
    "vgg11": (vgg11, (1, 3, 224, 224)),
    "mlp-784-50-10": (lambda: mlp([784, 50, 10]), (1, 784)),
    "mlp-2-10-30-20-2": (lambda: mlp([2, 10, 30, 20, 2]), (1, 2)),
    "mlp-784-500-500-10": (lambda: mlp([784, 500, 500, 10]), (1, 784)),
}
