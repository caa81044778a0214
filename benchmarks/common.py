"""Shared pieces of the benchmark scripts: the real models and data in ../shared, loaded once."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from quantsim.zoo import datasets, models  # noqa: E402


@dataclass
class Workload:
    name: str
    loaded: models.LoadedModel
    calib: list[torch.Tensor]  # calibration batches
    x_eval: torch.Tensor
    y_eval: torch.Tensor


def _r(name: str) -> Path:
    return next((SHARED / "models" / "cifar10-resnet").glob(f"{name}-*.th"))


WORKLOADS = {
    "resnet20": lambda: (str(_r("resnet20")), "cifar_resnet20", f"cifar10:{SHARED}/data/cifar10", None),
    "resnet56": lambda: (str(_r("resnet56")), "cifar_resnet56", f"cifar10:{SHARED}/data/cifar10", None),
    "lite0": lambda: ("tf_efficientnet_lite0", None, f"imagenet:{SHARED}/data/imagenet-val",
                      f"imagenet:{SHARED}/data/imagenet-calib"),
}


def stack(ds, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in datasets.make_loader(ds, batch_size=batch_size):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def load_workload(name: str, n_eval: int | None = None, n_calib: int = 256, seed: int = 0,
                  batch_size: int = 64) -> Workload:
    if not SHARED.exists():
        sys.exit(f"{SHARED} is absent: the benchmarks need the real models and data")
    spec, arch, data, calib_data = WORKLOADS[name]()
    loaded = models.load_model(spec, arch=arch)
    pre = loaded.preprocess
    eval_ds = datasets.deterministic_subset(datasets.build_dataset(data, pre, role="eval"), n_eval, seed + 1)
    calib_ds = datasets.deterministic_subset(datasets.build_dataset(calib_data or data, pre, role="calib"),
                                             n_calib, seed)
    x_cal, _ = stack(calib_ds)
    x_eval, y_eval = stack(eval_ds)
    return Workload(name, loaded, list(x_cal.split(batch_size)), x_eval, y_eval)


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    return torch.cat([fn(b) for b in x.split(batch_size)])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


# the PTQ benchmarks' layer conventions: 'all' every MAC layer at the width; 'first-last-8' the
# first conv and the classifier at W8A8 (their inputs, the image and the pooled features, included)
CONVENTIONS = ("all", "first-last-8")


def convention_layer_bits(prep, convention: str) -> dict[str, list[int]]:
    """QuantConfig.layer_bits of a convention on a prepared model."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r}: choose from {', '.join(CONVENTIONS)}")
    if convention == "all":
        return {}
    macs = [n.name for n in prep.fgraph.mac_nodes()]
    return {macs[0]: [8, 8], macs[-1]: [8, 8]}


def replace_section(path: Path, key: str, body: str) -> None:
    """Rewrite the part of a markdown file between <!-- key:begin --> and <!-- key:end -->."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Results\n\nMeasured on the project's 2-core CPU machine unless a section says otherwise.\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    from reports.io import write_text_atomic

    write_text_atomic(path, text)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


# The project's build pins (Makefile PINS): installed into every peer venv with the peer, so a
# peer that asks for another torch fails to install instead of replacing it.
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")


@dataclass(frozen=True)
class PeerVenv:
    """A peer tool in its own venv (ignored by git: .venv*/, .cache/), created with pip on first use."""
    path: Path
    packages: tuple[str, ...]
    check: str  # python source that runs without error once the peer is installed
    pins: tuple[str, ...] = TORCH_PINS

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def _probe(self) -> dict | None:
        """The pinned packages' versions in the venv, or None where the peer does not import (one interpreter start)."""
        if not self.python.exists():
            return None
        names = [pin.split("==")[0] for pin in self.pins]
        code = f"{self.check}\nimport json\n" + "".join(f"import {n}\n" for n in names) + \
            "print(json.dumps({" + ", ".join(f"{n!r}: {n}.__version__" for n in names) + "}))"
        r = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True)
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None

    def ensure(self) -> Path:
        """The venv's python; the venv is made (pip, the pins beside the peer) where it is absent or broken,
        and a venv whose torch is not the pinned one is refused."""
        versions = self._probe()
        if versions is None:
            print(f"creating {self.path} ({' '.join(self.packages + self.pins)})", flush=True)
            base = getattr(sys, "_base_executable", sys.executable)  # never the project venv's own pip
            subprocess.run([base, "-m", "venv", str(self.path)], check=True)
            r = subprocess.run([str(self.python), "-m", "pip", "install", "-q", *self.pins, *self.packages])
            versions = None if r.returncode else self._probe()
            if versions is None:
                sys.exit(f"error: could not install {' '.join(self.packages)} into {self.path}")
        for pin in self.pins:
            name, version = pin.split("==")
            if versions[name].split("+")[0] != version:
                sys.exit(f"error: {self.path} has {name} {versions[name]}, not the pinned {version}: remove the venv")
        return self.python


MCT = PeerVenv(ROOT / ".venv-mct", ("model-compression-toolkit==2.6.1",), "import model_compression_toolkit")
AIMET = PeerVenv(ROOT / ".venv-aimet", ("aimet-torch==2.42.0",), "import aimet_torch")


def save_tensors(path: Path, tensors: dict) -> Path:
    """One torch.save file, written atomically (a peer subprocess reads it with weights_only=True)."""
    from reports.io import atomic_target

    with atomic_target(path) as tmp:
        torch.save(tensors, tmp)
    return Path(path)


def read_rows(path: str | Path | None) -> list[dict]:
    """The rows of a JSON-lines log (none when there is no log yet): a long benchmark resumes from them."""
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def append_row(path: str | Path | None, row: dict) -> None:
    """Append one finished row to a JSON-lines log (one line, flushed: a crash loses at most the row in progress)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
