"""Shared pieces of the benchmark scripts: the real models and data in ../shared, loaded once."""
from __future__ import annotations

import re
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
