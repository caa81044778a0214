"""Shared fixtures: where the real data and models live (../shared next to the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (real test assets live in ../shared next to the repo)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real data sets and trained models); tests skip when it is absent."""
    return _need(SHARED_DIR, "shared assets directory")


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    return _need(shared_dir / "data", "shared data directory")


@pytest.fixture(scope="session")
def shared_models(shared_dir: Path) -> Path:
    return _need(shared_dir / "models", "shared models directory")


@pytest.fixture(scope="session")
def cifar10_dir(shared_data: Path) -> Path:
    return _need(shared_data / "cifar10", "CIFAR-10 JPEG data set")


@pytest.fixture(scope="session")
def imagenet_val_dir(shared_data: Path) -> Path:
    return _need(shared_data / "imagenet-val", "ImageNet validation images")


@pytest.fixture(scope="session")
def imagenet_calib_dir(shared_data: Path) -> Path:
    return _need(shared_data / "imagenet-calib", "ImageNet calibration images")


@pytest.fixture(scope="session")
def resnet20_checkpoint(shared_models: Path) -> Path:
    found = sorted((shared_models / "cifar10-resnet").glob("resnet20-*.th"))
    if not found:
        pytest.skip(f"no resnet20-*.th checkpoint in {shared_models / 'cifar10-resnet'}")
    return found[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Our checkpoint format holding a random-init CIFAR ResNet-20."""
    import torch

    from quantsim.zoo.cifar_resnet import cifar_resnet20
    from quantsim.zoo.models import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "r20.pt"
    torch.manual_seed(0)
    save_checkpoint(path, cifar_resnet20(), "cifar_resnet20", {})
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A cifar10-style folder of a few random images (class subfolders, train and test)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("airplane", "automobile"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many small int64 ops (the ViT programs): one torch thread is faster than two on the busy
    2-core machine (measured 100x on LayerNorm while another process held a core). Test modules
    use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
