"""predictions.csv: per evaluation image, FP32's and the integer program's five best classes
(indices and names) and how many of them they share, so "agreement" has a face."""
from __future__ import annotations

import numpy as np
import pandas as pd
from torch.utils.data import Subset

from quantsim.run.stages import Accuracy

__all__ = ["image_names", "predictions_table"]


def image_names(ds) -> list[str]:
    """A readable name per image of a data set (a Subset of one): the photo's name, the file's
    name, else its index in the source."""
    idx = list(range(len(ds)))
    while isinstance(ds, Subset):
        idx = [ds.indices[i] for i in idx]
        ds = ds.dataset
    names = getattr(ds, "names", None)
    samples = getattr(ds, "samples", None)
    if names:
        return [str(names[i]) for i in idx]
    if samples:
        return [str(samples[i][0].name) for i in idx]
    return [f"#{i}" for i in idx]


def _name(classes: list[str] | None, i: int) -> str:
    """The short class name (timm's descriptions list synonyms after a comma)."""
    if classes is None or not 0 <= i < len(classes):
        return str(i)
    return classes[i].split(",")[0].strip()


def predictions_table(acc: Accuracy, eval_ds, class_names: list[str] | None) -> pd.DataFrame:
    """One row per evaluation image, in evaluation order."""
    f, q = np.concatenate(acc.top5_fp32_idx), np.concatenate(acc.top5_idx)
    labels = np.concatenate(acc.labels)
    overlap = acc.top5_overlap()
    rows = []
    for i, name in enumerate(image_names(eval_ds)):
        y = int(labels[i])
        rows.append({
            "image": name, "label": y if y >= 0 else None,
            "label_name": _name(class_names, y) if y >= 0 else None,
            "fp32_top5": "|".join(_name(class_names, int(c)) for c in f[i]),
            "quant_top5": "|".join(_name(class_names, int(c)) for c in q[i]),
            "fp32_top5_idx": " ".join(map(str, f[i])), "quant_top5_idx": " ".join(map(str, q[i])),
            "top1_agrees": bool(f[i, 0] == q[i, 0]), "top5_overlap": int(overlap[i]),
        })
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    return df
