"""Data set specs: every form, labels, splits, subsets and the error paths."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quantsim.zoo.datasets import (build_dataset, deterministic_subset, embedded_photos, imagenet_synsets, make_loader)
from quantsim.errors import QuantsimError
from quantsim.zoo.preprocess import Preprocess

SMALL = Preprocess((3, 32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CROP = Preprocess((3, 64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=73)


def _write_png(path: Path, color: tuple[int, int, int], size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


# ----------------------------------------------------------------------------- real shared data

def test_imagenet_calib_synset_file_labels(imagenet_calib_dir: Path):
    ds = build_dataset(f"imagenet:{imagenet_calib_dir}", CROP, role="calib")
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and synsets == sorted(synsets) and synsets[0] == "n01440764"
    assert len(ds) == 1000
    names = [p.name for p, _ in ds.samples]
    i = names.index("n01443537_goldfish.JPEG")
    assert ds.samples[i][1] == synsets.index("n01443537") == 1
    # every file's label is its synset's position in the sorted list
    assert all(y == synsets.index(p.name[:9]) for p, y in ds.samples)
    assert sorted(ds.labels) == list(range(1000))
    x, y = ds[i]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 1


def test_imagenet_val_labels_txt(imagenet_val_dir: Path):
    ds = build_dataset(f"imagenet:{imagenet_val_dir}", CROP)
    lines = (imagenet_val_dir / "labels.txt").read_text().split("\n")
    first_file, first_label = lines[0].split()
    assert ds.samples[0] == (imagenet_val_dir / first_file, int(first_label))
    assert len(ds) == sum(1 for ln in lines if ln.strip())
    sub = deterministic_subset(ds, 4, seed=3)
    xb, yb = next(iter(make_loader(sub, batch_size=4)))
    assert xb.shape == (4, 3, 64, 64) and yb.dtype == torch.int64
    assert yb.tolist() == [ds.samples[i][1] for i in sub.indices]


def test_cifar10_image_folders(cifar10_dir: Path):
    ev = build_dataset(f"cifar10:{cifar10_dir}", SMALL, role="eval")
    ca = build_dataset(f"cifar10:{cifar10_dir}", SMALL, role="calib")
    assert ev.classes[:3] == ["airplane", "automobile", "bird"] and ev.classes[9] == "truck"
    assert all(p.parent.parent.name == "test" for p, _ in ev.samples[:5])
    assert all(p.parent.parent.name == "train" for p, _ in ca.samples[:5])
    assert len(ev) == 10000 and len(ca) == 50000
    assert not {p for p, _ in ev.samples} & {p for p, _ in ca.samples}  # calibration never sees eval images
    assert all(ev.classes[y] == p.parent.name for p, y in ev.samples[::997])
    x, y = ev[0]
    assert x.shape == (3, 32, 32) and y == 0  # first image lies in test/airplane


# ----------------------------------------------------------------------------- synthetic, offline

def _cifar100_pickles(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        entry = {b"filenames": [f"{name}_{i}.png".encode() for i in range(n)], b"batch_label": name.encode(),
                 b"fine_labels": [int(v) for v in (np.arange(n) * 7) % 100],
                 b"coarse_labels": [0] * n, b"data": data}
        (d / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"fine_label_names": [f"class{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [b"c"] * 20}
    (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def test_cifar100_torchvision_pickle_format(tmp_path: Path):
    d = _cifar100_pickles(tmp_path)
    raw = pickle.loads((d / "test").read_bytes())
    ev = build_dataset(f"cifar100:{tmp_path}", SMALL, role="eval")
    ca = build_dataset(f"cifar100:{tmp_path}", SMALL, role="calib")
    assert len(ev) == 4 and len(ca) == 6
    assert ev.labels == [0, 7, 14, 21] and ev.classes[7] == "class07"
    x, y = ev[1]
    # pixel (row 0, col 0) of image 1: red, green, blue planes of the 3072-byte row, normalised
    rgb = raw[b"data"][1][[0, 1024, 2048]].astype(np.float32) / 255.0
    assert y == 7 and torch.allclose(x[:, 0, 0], torch.from_numpy((rgb - 0.5) / 0.5), atol=1e-6)


def test_cifar_pickle_that_runs_code_is_refused(tmp_path: Path):
    d = _cifar100_pickles(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "test").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": []}))
    with pytest.raises(QuantsimError, match=r"not a readable CIFAR python pickle .*builtins\.print is not allowed"):
        build_dataset(f"cifar100:{tmp_path}", SMALL)


def test_cifar_image_folders_synthetic(tmp_path: Path):
    for split in ("train", "test"):
        _write_png(tmp_path / split / "truck" / "a.png", (0, 0, 255), (32, 32))
        _write_png(tmp_path / split / "airplane" / "b.png", (255, 0, 0), (32, 32))
    ds = build_dataset(f"cifar10:{tmp_path}", SMALL)
    assert sorted(ds.labels) == [0, 9]
    ds100 = build_dataset(f"cifar100:{tmp_path}", SMALL)  # CIFAR-100 folders: sorted names
    assert ds100.classes == ["airplane", "truck"]
    (tmp_path / "test" / "lorry").mkdir()
    with pytest.raises(QuantsimError, match="not CIFAR-10 classes: lorry"):
        build_dataset(f"cifar10:{tmp_path}", SMALL)


def test_cifar_missing_dir_says_download(tmp_path: Path):
    with pytest.raises(QuantsimError, match=r"cifar10 directory .*nothere is missing; pass --download"):
        build_dataset(f"cifar10:{tmp_path / 'nothere'}", SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantsimError, match=r"neither train/ and test/ .*cifar-100-python/; pass --download"):
        build_dataset(f"cifar100:{tmp_path / 'empty'}", SMALL)


def test_imagenet_synset_subfolders_and_unlabelled(tmp_path: Path):
    _write_png(tmp_path / "syn" / "n01443537" / "x.png", (1, 2, 3))
    _write_png(tmp_path / "syn" / "n15075141" / "y.png", (1, 2, 3))
    ds = build_dataset(f"imagenet:{tmp_path / 'syn'}", CROP)
    assert ds.labels == [1, 999]
    _write_png(tmp_path / "flat" / "holiday.png", (9, 9, 9))
    ds = build_dataset(f"imagenet:{tmp_path / 'flat'}", CROP)
    assert ds.labels == [-1] and ds[0][0].shape == (3, 64, 64)


def test_folder_spec(tmp_path: Path):
    _write_png(tmp_path / "cls" / "b_dogs" / "1.png", (0, 255, 0))
    _write_png(tmp_path / "cls" / "a_cats" / "1.png", (255, 0, 0))
    _write_png(tmp_path / "cls" / "a_cats" / "2.jpg", (255, 0, 0))
    ds = build_dataset(f"folder:{tmp_path / 'cls'}", SMALL)
    assert ds.classes == ["a_cats", "b_dogs"] and ds.labels == [0, 0, 1]
    x, _ = ds[2]
    assert torch.allclose(x[1], torch.ones(32, 32)) and torch.allclose(x[0], -torch.ones(32, 32))
    _write_png(tmp_path / "flat" / "p.png", (0, 0, 0))
    assert build_dataset(f"folder:{tmp_path / 'flat'}", SMALL).labels == [-1]


def test_spec_errors(tmp_path: Path):
    with pytest.raises(QuantsimError, match=r"image folder directory .*gone does not exist"):
        build_dataset(f"folder:{tmp_path / 'gone'}", SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantsimError, match=r"imagenet directory .*empty holds no images"):
        build_dataset(f"imagenet:{tmp_path / 'empty'}", SMALL)
    with pytest.raises(QuantsimError, match=r"unknown data spec prefix 'mnist'"):
        build_dataset(f"mnist:{tmp_path}", SMALL)
    with pytest.raises(QuantsimError, match=r"has no form prefix"):
        build_dataset(str(tmp_path), SMALL)
    with pytest.raises(QuantsimError, match=r"unknown data role 'train'"):
        build_dataset(f"folder:{tmp_path}", SMALL, role="train")
    bad = tmp_path / "lab"
    _write_png(bad / "a.png", (0, 0, 0))
    (bad / "labels.txt").write_text("a.png 3\nb.png 4\n")
    with pytest.raises(QuantsimError, match=r"labels.txt:2: image .*b\.png does not exist"):
        build_dataset(f"imagenet:{bad}", SMALL)


def test_deterministic_subset():
    ds = torch.utils.data.TensorDataset(torch.arange(100))
    a = deterministic_subset(ds, 10, seed=5)
    b = deterministic_subset(ds, 10, seed=5)
    c = deterministic_subset(ds, 10, seed=6)
    assert a.indices == b.indices and a.indices != c.indices
    assert a.indices == sorted(set(a.indices)) and len(a.indices) == 10
    assert all(0 <= i < 100 for i in a.indices)
    assert deterministic_subset(ds, None, seed=0).indices == list(range(100))
    assert deterministic_subset(ds, 1000, seed=0).indices == list(range(100))
    # a larger draw is a different, but equally fixed, sample
    assert deterministic_subset(ds, 50, seed=5).indices == deterministic_subset(ds, 50, seed=5).indices
    with pytest.raises(QuantsimError, match="subset size must be positive"):
        deterministic_subset(ds, 0, seed=0)


def test_embedded_photos():
    ds = embedded_photos(CROP)
    assert len(ds) >= 4 and {"astronaut", "chelsea", "coffee"} <= set(ds.names)
    xb, yb = next(iter(make_loader(ds, batch_size=len(ds))))
    assert xb.shape == (len(ds), 3, 64, 64) and xb.dtype == torch.float32
    assert yb.tolist() == [-1] * len(ds)
    assert xb.std() > 0.1  # real photos, not blank images
    assert len(build_dataset("embedded", CROP)) == len(ds)
