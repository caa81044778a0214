"""predictions.csv: per evaluation image, FP32's and the integer program's five best classes
(indices and names) and how many of them they share, so "agreement" has a face; for a few
images (the demo's photos) a thumbnail of each image as the model sees it."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Subset

from quantsim.run.stages import Accuracy
from quantsim.zoo.preprocess import Preprocess

__all__ = ["THUMBNAILS_UP_TO", "image_names", "predictions_table", "thumbnails"]

THUMBNAILS_UP_TO = 16  # evaluation sets this small get a thumbnail per image


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
        paths = [samples[i][0] for i in idx]
        short = [p.name for p in paths]
        if len(set(short)) == len(short):
            return short
        return [f"{p.parent.name}/{p.name}" for p in paths]  # class folders may repeat file names
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


def thumbnails(eval_ds, preprocess: Preprocess, size: int = 112) -> list[bytes] | None:
    """PNG bytes per evaluation image (the model's input, normalisation undone, at most `size`
    pixels a side), for sets of up to THUMBNAILS_UP_TO images; None for larger sets."""
    if len(eval_ds) > THUMBNAILS_UP_TO:
        return None
    mean = np.asarray(preprocess.mean, np.float32)[:, None, None]
    std = np.asarray(preprocess.std, np.float32)[:, None, None]
    out = []
    for i in range(len(eval_ds)):
        x = np.asarray(eval_ds[i][0], np.float32) * std + mean
        rgb = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        img = Image.fromarray(rgb if rgb.shape[2] == 3 else rgb[:, :, 0])
        if max(img.size) > size:
            img.thumbnail((size, size))
        elif max(img.size) < size // 2:  # CIFAR's 32x32: enlarge, pixels kept sharp
            k = size // max(img.size)
            img = img.resize((img.size[0] * k, img.size[1] * k), Image.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        out.append(buf.getvalue())
    return out
