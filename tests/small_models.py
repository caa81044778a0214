"""Small models and real-image batches the tests share."""
from __future__ import annotations

from pathlib import Path

import torch

from quantsim.zoo import datasets
from quantsim.zoo.preprocess import Preprocess

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SmallConvNet(torch.nn.Module):
    """conv -> depthwise (stride 2) -> grouped conv (optionally dilated) -> GAP -> linear, all ReLU:
    every MAC layer kind a rounding method must handle, at 12x12."""

    def __init__(self, dilation: int = 1):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, padding=dilation, dilation=dilation, groups=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.c2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def imagenet_images(directory: Path, size: int, resize: int, n: int = 2) -> torch.Tensor:
    """n real imagenet images (a deterministic subset), resized and centre-cropped to size x size."""
    pre = Preprocess((3, size, size), IMAGENET_MEAN, IMAGENET_STD, resize=resize)
    ds = datasets.deterministic_subset(datasets.build_dataset(f"imagenet:{directory}", pre), n, 0)
    return torch.stack([ds[i][0] for i in range(len(ds))])
