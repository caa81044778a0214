"""Learned weight codes (GPTQ, AdaRound, layer / block reconstruction) kept on disk.

A file is keyed by everything the codes were learned from: the method, the float graph (its
nodes and every weight), the calibration statistics, the calibration images and the config.
So a Pareto sweep's points, a re-run with --resume and Ray workers in other processes reuse one
learned result instead of learning it again, and a changed image, weight or option is a new key,
never a stale hit. Files are .npz read with allow_pickle=False (loading runs no code) and are
written atomically (a temporary file renamed into place), so an interrupted run leaves no half
file behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from quantsim.graph.capture import FloatGraph
from quantsim.quant.calibrate import TensorStats
from quantsim.quant.config import QuantConfig
from quantsim.quant.layer_codes import LayerCodes

# bump when what a method learns from the same inputs changes (a new loss, schedule, ...): old
# files then miss instead of answering for the new code
FORMAT = 1

# what reading a truncated, foreign or older-format file raises
DAMAGED = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)

Learned = tuple[dict[str, LayerCodes], dict[str, float]]  # codes per MAC layer, learned clips per tensor


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Hash obj's value (not its identity or memory layout) into h."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().contiguous().numpy()
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        h.update(f"array{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.view(np.uint8).reshape(-1) if arr.size else b"")
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}".encode())
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, TensorStats):
        _feed(h, [obj.min, obj.max, obj.n_sampled, obj.clip_override, obj.samples])
    else:  # str, int, float, bool, None
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def fingerprint(method: str, g: FloatGraph, stats: dict[str, TensorStats], batches: list[torch.Tensor],
                cfg: QuantConfig) -> str:
    """The cache key of `method`'s codes learned on g with these statistics, images and config."""
    h = hashlib.sha256(f"quantsim-rounding-cache/{FORMAT}/{method}".encode())
    _feed(h, [list(g.input_shape), g.output])
    for n in g.nodes:
        _feed(h, [n.name, n.op, n.inputs, n.act, n.attrs, n.weight, n.bias])
    _feed(h, stats)
    _feed(h, batches)
    _feed(h, json.dumps(cfg.to_json(), sort_keys=True))
    return h.hexdigest()[:32]


def path_of(folder: str | Path, method: str, key: str) -> Path:
    return Path(folder) / f"rounding-{method}-{key}.npz"


def save(path: Path, codes: dict[str, LayerCodes], clips: dict[str, float]) -> None:
    """Write the learned codes and clips to path atomically."""
    names = list(codes)
    header = {"format": FORMAT, "layers": [{"name": k, "bits": int(codes[k].bits), "seconds": float(codes[k].seconds)}
                                           for k in names],
              "clips": {k: float(v) for k, v in clips.items()}}
    arrays = {"header": np.array(json.dumps(header))}
    for i, k in enumerate(names):
        arrays[f"codes{i}"] = np.asarray(codes[k].codes, np.int64)
        arrays[f"scale{i}"] = np.asarray(codes[k].scale, np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> Learned:
    """The codes and clips saved at path (one of DAMAGED when it is not a whole file of ours)."""
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')} (this quantsim writes {FORMAT})")
        codes = {layer["name"]: LayerCodes(z[f"codes{i}"].astype(np.int64), z[f"scale{i}"].astype(np.float64),
                                           int(layer["bits"]), float(layer["seconds"]))
                 for i, layer in enumerate(header["layers"])}
    return codes, {k: float(v) for k, v in header["clips"].items()}


def cached(folder: str | Path | None, method: str, g: FloatGraph, stats: dict[str, TensorStats],
           batches: list[torch.Tensor], cfg: QuantConfig, learn: Callable[[], Learned]) -> Learned:
    """learn()'s result, read from folder when an earlier run saved it for the same inputs,
    else learned and saved there (folder None: learned, nothing kept)."""
    if folder is None:
        return learn()
    path = path_of(folder, method, fingerprint(method, g, stats, batches, cfg))
    if path.is_file():
        try:
            return load(path)
        except DAMAGED as exc:  # a damaged file: learn again and replace it
            print(f"warning: {path}: unreadable ({exc}); learning the {method} codes again", file=sys.stderr)
    learned = learn()
    save(path, *learned)
    return learned
