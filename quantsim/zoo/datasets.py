"""Data sets from a short spec string; every item is (float32 CHW tensor, int label).

Specs (``role`` 'eval' or 'calib' picks the split where the source has splits):

``imagenet:DIR``
    DIR/labels.txt (``<file> <index>`` lines) -> those files and labels; else class
    subfolders named by synset (n01440764 ...) -> index of the synset in the sorted list
    of the 1000 ImageNet synsets; else files named ``<synset>_<anything>.JPEG`` -> label
    from the synset prefix; else unlabelled images (label -1).
``cifar10:DIR`` / ``cifar100:DIR``
    DIR/train and DIR/test with one subfolder of images per class (CIFAR-10: standard
    class order; CIFAR-100: sorted folder names), or the python pickles of the official
    archive (DIR/cifar-10-batches-py, DIR/cifar-100-python; ``download=True`` fetches them
    with torchvision). 'eval' -> test split, 'calib' -> train split.
``folder:DIR``
    class subfolders (ImageFolder: label = sorted subfolder index) or a flat folder of
    images (label -1).
``embedded``
    the real photos bundled inside scikit-image (no download), label -1.

The CIFAR pickles are read with a restricted unpickler that can only rebuild numpy
arrays, lists, dicts and strings: a pickle in DIR cannot run code.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from quantsim.errors import QuantsimError
from quantsim.zoo.preprocess import Preprocess

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPEC_FORMS = "imagenet:DIR, cifar10:DIR, cifar100:DIR, folder:DIR, embedded"
_SYNSET_RE = re.compile(r"^(n\d{8})(?:_|$)")
ROLES = ("eval", "calib")


# ----------------------------------------------------------------------------- dataset classes

class ImageListDataset(Dataset):
    """Image files with labels; decoded and transformed on access."""

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable, classes: list[str] | None = None,
                 description: str = ""):
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform
        self.classes = classes
        self.description = description

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img.load()
                x = self.transform(img)
        except (OSError, ValueError) as e:
            raise QuantsimError(f"cannot read image {path} ({e})") from None
        return x, label

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.samples]


class ArrayImageDataset(Dataset):
    """uint8 HWC RGB images held in memory (CIFAR pickles, embedded photos)."""

    def __init__(self, images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[int], transform: Callable,
                 classes: list[str] | None = None, names: list[str] | None = None, description: str = ""):
        if len(images) != len(labels):
            raise QuantsimError(f"{description}: {len(images)} images but {len(labels)} labels")
        self.images = images
        self._labels = [int(y) for y in labels]
        self.transform = transform
        self.classes = classes
        self.names = names
        self.description = description

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(np.asarray(self.images[i]))), self._labels[i]

    @property
    def labels(self) -> list[int]:
        return list(self._labels)


# ----------------------------------------------------------------------------- helpers

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if _is_image(p))


def _images_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if _is_image(p))


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(d: Path, what: str) -> None:
    if not d.exists():
        raise QuantsimError(f"{what} directory {d} does not exist")
    if not d.is_dir():
        raise QuantsimError(f"{what} path {d} is not a directory")


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets in the standard (sorted) 0..999 order."""
    from timm.data import ImageNetInfo  # deferred: a heavy import that only timm-model paths need
    return list(ImageNetInfo().label_names())


def _nonempty(ds: Dataset, d: Path, what: str) -> Dataset:
    if len(ds) == 0:
        raise QuantsimError(f"{what} directory {d} holds no images")
    return ds


# ----------------------------------------------------------------------------- imagenet

def _imagenet(d: Path, tf: Callable) -> Dataset:
    _require_dir(d, "imagenet")
    synsets = imagenet_synsets()
    index = {s: i for i, s in enumerate(synsets)}
    labels_txt = d / "labels.txt"
    if labels_txt.is_file():
        samples = []
        for lineno, line in enumerate(labels_txt.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                name, label = " ".join(parts[:-1]), int(parts[-1])
            except (ValueError, IndexError):
                raise QuantsimError(f"{labels_txt}:{lineno}: expected '<file> <class index>', got {line!r}") from None
            if not 0 <= label < len(synsets):
                raise QuantsimError(f"{labels_txt}:{lineno}: class index {label} outside 0..{len(synsets) - 1}")
            p = d / name
            if not p.is_file():
                raise QuantsimError(f"{labels_txt}:{lineno}: image {p} does not exist")
            samples.append((p, label))
        return _nonempty(ImageListDataset(samples, tf, synsets, f"imagenet:{d} (labels.txt)"), d, "imagenet")
    subs = _subdirs(d)
    synset_subs = [s for s in subs if s.name in index]
    if synset_subs:
        samples = [(p, index[s.name]) for s in synset_subs for p in _images_under(s)]
        return _nonempty(ImageListDataset(samples, tf, synsets, f"imagenet:{d} (synset folders)"), d, "imagenet")
    files = _images_in(d)
    labelled = []
    any_synset = False
    for p in files:
        m = _SYNSET_RE.match(p.name)
        if m and m.group(1) in index:
            any_synset = True
            labelled.append((p, index[m.group(1)]))
        else:
            labelled.append((p, -1))
    desc = f"imagenet:{d} ({'synset file names' if any_synset else 'unlabelled'})"
    return _nonempty(ImageListDataset(labelled, tf, synsets, desc), d, "imagenet")


# ----------------------------------------------------------------------------- cifar

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR data file")
        if module == "_codecs":
            import codecs  # only the restricted CIFAR unpickler resolves these
            return codecs.encode
        if name in ("_reconstruct", "scalar"):
            try:
                from numpy._core import multiarray  # numpy >= 2
            except ImportError:  # pragma: no cover
                from numpy.core import multiarray  # type: ignore[no-redef]
            return getattr(multiarray, name)
        return getattr(np, name)


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except FileNotFoundError:
        raise QuantsimError(f"CIFAR data file {path} does not exist") from None
    except Exception as e:
        raise QuantsimError(f"{path} is not a readable CIFAR python pickle ({e})") from None
    if not isinstance(obj, dict):
        raise QuantsimError(f"{path} is not a CIFAR python pickle (holds a {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _decode_names(names: Sequence[Any]) -> list[str]:
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _cifar_pickle_split(root: Path, which: str, role: str) -> tuple[np.ndarray, list[int], list[str]]:
    train = role == "calib"
    if which == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        files = ["train"] if train else ["test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    datas, labels = [], []
    for fname in files:
        entry = _read_cifar_pickle(root / fname)
        if "data" not in entry or label_key not in entry:
            raise QuantsimError(f"{root / fname} lacks the 'data' or '{label_key}' entry of a {which} pickle")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise QuantsimError(f"{root / fname}: 'data' has shape {data.shape}, expected (N, 3072)")
        datas.append(data)
        labels.extend(int(v) for v in entry[label_key])
    images = np.concatenate(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    meta = root / meta_file
    classes = _decode_names(_read_cifar_pickle(meta)[names_key]) if meta.exists() else None
    if classes is None and which == "cifar10":
        classes = list(CIFAR10_CLASSES)
    return images, labels, classes or []


def _cifar(which: str, d: Path, tf: Callable, role: str, download: bool) -> Dataset:
    split = "train" if role == "calib" else "test"
    pickle_dir = d / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    if not d.exists() and not download:
        raise QuantsimError(f"{which} directory {d} is missing; pass --download to fetch {which} there")
    if d.exists() and not d.is_dir():
        raise QuantsimError(f"{which} path {d} is not a directory")
    split_dir = d / split
    if d.exists() and split_dir.is_dir():
        subs = _subdirs(split_dir)
        if not subs:
            raise QuantsimError(f"{which} split directory {split_dir} has no class subfolders")
        names = [s.name for s in subs]
        if which == "cifar10":
            unknown = [n for n in names if n not in CIFAR10_CLASSES]
            if unknown:
                raise QuantsimError(f"{split_dir} has folders that are not CIFAR-10 classes: {', '.join(unknown[:5])}")
            classes = list(CIFAR10_CLASSES)
        else:
            classes = names
        index = {c: i for i, c in enumerate(classes)}
        samples = [(p, index[s.name]) for s in subs for p in _images_in(s)]
        return _nonempty(ImageListDataset(samples, tf, classes, f"{which}:{d} ({split})"), split_dir, which)
    if d.exists() and (d / ("train" if split == "test" else "test")).is_dir() and not pickle_dir.is_dir():
        raise QuantsimError(f"{which} directory {d} has no '{split}' split (role {role!r} needs it)")
    if not pickle_dir.is_dir():
        if not download:
            raise QuantsimError(f"{which} directory {d} holds neither train/ and test/ image folders nor "
                                f"{pickle_dir.name}/; pass --download to fetch {which} there")
        _download_cifar(which, d)
    images, labels, classes = _cifar_pickle_split(pickle_dir, which, role)
    return ArrayImageDataset(images, labels, tf, classes=classes, description=f"{which}:{d} ({split})")


def _download_cifar(which: str, d: Path) -> None:  # pragma: no cover - needs the network
    import torchvision  # deferred: a heavy import that only torchvision paths need
    cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
    try:
        d.mkdir(parents=True, exist_ok=True)
        # torchvision verifies the archive's md5 before extracting; we then read the pickles ourselves.
        cls(root=str(d), train=False, download=True)
    except Exception as e:
        raise QuantsimError(f"could not download {which} into {d} ({e})") from None


# ----------------------------------------------------------------------------- folder / embedded

def _folder(d: Path, tf: Callable) -> Dataset:
    _require_dir(d, "image folder")
    subs = [s for s in _subdirs(d) if _images_under(s)]
    if subs:
        classes = [s.name for s in subs]
        samples = [(p, i) for i, s in enumerate(subs) for p in _images_under(s)]
        return ImageListDataset(samples, tf, classes, f"folder:{d} (class folders)")
    files = _images_in(d)
    return _nonempty(ImageListDataset([(p, -1) for p in files], tf, None, f"folder:{d} (unlabelled)"), d, "image")


# Real RGB photographs bundled in the scikit-image wheel (no pooch download needed).
EMBEDDED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field",
                   "immunohistochemistry", "retina")


def _embedded_image(name: str) -> np.ndarray:
    import skimage.data as skd  # deferred: only the embedded demo photos need scikit-image
    if name == "motorcycle":
        return skd.stereo_motorcycle()[0]
    return getattr(skd, name)()


def embedded_photos(preprocess: Preprocess) -> Dataset:
    """The real photos shipped inside scikit-image, transformed for the model; labels -1."""
    images, names = [], []
    for name in EMBEDDED_PHOTOS:
        try:
            img = _embedded_image(name)
        except Exception:  # not bundled in this scikit-image version (would need a download)
            continue
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            continue
        images.append(np.ascontiguousarray(img))
        names.append(name)
    if not images:
        raise QuantsimError("no embedded photos are available in the installed scikit-image")
    return ArrayImageDataset(images, [-1] * len(images), preprocess.transform(), names=names,
                             description="embedded scikit-image photos")


# ----------------------------------------------------------------------------- entry points

def _parse_spec(spec: str) -> tuple[str, Path]:
    """'kind:DIR' -> (kind, DIR), the kind one of SPEC_FORMS'."""
    spec = str(spec)
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise QuantsimError(f"data spec {spec!r} has no form prefix; use one of {SPEC_FORMS}")
    if kind not in ("imagenet", "cifar10", "cifar100", "folder"):
        raise QuantsimError(f"unknown data spec prefix {kind!r} in {spec!r}; use one of {SPEC_FORMS}")
    return kind, Path(rest).expanduser()


def check_data_spec(spec: str, download: bool = False) -> None:
    """What build_dataset would refuse first, without reading images: a spec without a known
    form, or a directory that is not there (cifar with --download may be created)."""
    if str(spec) == "embedded":
        return
    kind, d = _parse_spec(spec)
    if kind in ("cifar10", "cifar100") and download and not d.exists():
        return
    _require_dir(d, kind)


def build_dataset(spec: str, preprocess: Preprocess, role: str = "eval", download: bool = False) -> Dataset:
    """Data set for ``spec`` (see module docstring); items are (float32 CHW tensor, int label)."""
    if role not in ROLES:
        raise QuantsimError(f"unknown data role {role!r}; use one of {', '.join(ROLES)}")
    if str(spec) == "embedded":
        return embedded_photos(preprocess)
    kind, d = _parse_spec(spec)
    tf = preprocess.transform()
    if kind == "imagenet":
        return _imagenet(d, tf)
    if kind in ("cifar10", "cifar100"):
        return _cifar(kind, d, tf, role, download)
    return _folder(d, tf)


def deterministic_subset(ds: Dataset, n: int | None, seed: int) -> Subset:
    """n None or >= len(ds): the whole set in order; else n distinct indices drawn with
    numpy Generator(seed), sorted. The same (len, n, seed) always gives the same subset."""
    total = len(ds)  # type: ignore[arg-type]
    if n is None or n >= total:
        return Subset(ds, list(range(total)))
    if n <= 0:
        raise QuantsimError(f"subset size must be positive, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    return Subset(ds, [int(i) for i in idx])


def make_loader(ds: Dataset, batch_size: int = 64, workers: int = 0) -> DataLoader:
    """Batches in data set order (no shuffling), so runs are reproducible."""
    if batch_size <= 0:
        raise QuantsimError(f"batch size must be positive, got {batch_size}")
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False,
                      persistent_workers=False)
