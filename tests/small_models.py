"""Small models and real-image batches the tests share."""
from __future__ import annotations

from pathlib import Path

import torch

from quantsim.run import stages
from quantsim.zoo import datasets
from quantsim.zoo.models import load_model
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


def resnet20_prepared(checkpoint: Path, cifar10_dir: Path, n_calib: int, calib_batch: int, n_eval: int = 16):
    """CIFAR-10 ResNet-20 prepared on n_calib real training images, and n_eval real test images."""
    lm = load_model(str(checkpoint), arch="cifar_resnet20")
    data = f"cifar10:{cifar10_dir}"
    calib = datasets.deterministic_subset(datasets.build_dataset(data, lm.preprocess, role="calib"), n_calib, 0)
    held = datasets.deterministic_subset(datasets.build_dataset(data, lm.preprocess, role="eval"), n_eval, 1)
    cal = [x for x, _ in datasets.make_loader(calib, batch_size=calib_batch)]
    x_eval = torch.cat([x for x, _ in datasets.make_loader(held, batch_size=n_eval)])
    return stages.prepare(lm.model, lm.preprocess.input_size, cal, progress=False), x_eval


def assert_bitexact(graph, x: torch.Tensor, label: str):
    """integer_ref against the torch twin on every node of x: zero differing elements anywhere.
    Returns the check (its reference tensors, per-node counts) for further assertions."""
    be = stages.check_bitexact(graph, x)
    bad = {k: v for k, v in be.mismatches.items() if v}
    assert not bad, f"{label}: differing elements per node: {bad}"
    return be


def program_error(graph, fgraph, x: torch.Tensor, tensor: str) -> float:
    """‖program − float‖² / ‖float‖² of one tensor on images x, the program's integers from integer_ref."""
    return stages.tensor_error(graph, fgraph, x, tensor)
