"""One quantization run as plain functions: calibrate, lower, evaluate, validate bit-exactness.

simulate.py (the command line) and the benchmarks call these; nothing here parses
arguments or writes files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from integer_ref import executor as int_exec
from integer_ref.ir import Graph

from quantsim.emulate import executor as emulate
from quantsim.quant.calibrate import TensorStats, collect_stats
from quantsim.graph.capture import FloatGraph, capture, run_float
from quantsim.quant.config import QuantConfig
from quantsim.quant import adaround, equalize as cle, gptq, reconstruct, reparam_ln as repq, scale_search
from quantsim.errors import QuantsimError
from quantsim.quant.lower import lower
from quantsim.zoo.metrics import hits, top_indices

CAPTURE_TOLERANCE = 1e-3  # relative: the captured graph must compute what the model computes


@dataclass
class Prepared:
    """A captured model with its calibration statistics: reused across bit widths."""

    fgraph: FloatGraph
    stats: dict[str, TensorStats]
    calib_seconds: float
    # the calibration batches (the scale search and bias correction run on them) and the
    # searched (graph, stats, config) per config, so that e.g. both nonlinear modes share a search
    calib: list[torch.Tensor] = field(default_factory=list, repr=False)
    searched: dict = field(default_factory=dict, repr=False)
    # cross-layer equalization applied to fgraph before the statistics were taken (None: none);
    # quantize refuses a config whose equalize setting differs
    equalized: cle.Equalized | None = field(default=None, repr=False)
    # RepQ-ViT post-LayerNorm reparameterization applied before the statistics (None: none)
    reparam: repq.Reparameterized | None = field(default=None, repr=False)
    # a folder keeping learned codes (GPTQ, AdaRound, reconstruction) across runs
    # (quant/rounding_cache.py); None: kept in `searched` for this process only
    rounding_cache: Path | None = None

    @property
    def equalize_key(self) -> tuple:
        return equalize_key(self.equalized is not None, self.equalized.relu6 if self.equalized else "skip")


def equalize_key(equalize: bool, relu6: str) -> tuple:
    return (True, relu6) if equalize else (False,)


def prepare(model: torch.nn.Module, input_shape, calib_batches: list[torch.Tensor], seed: int = 0,
            progress: bool = True, equalize: bool = False, equalize_relu6: str = "skip",
            reparam_ln: bool = False, softmax_quant: str = "uniform") -> Prepared:
    """Capture, check, [equalize (quant/equalize.py)], [reparameterize the LayerNorms
    (quant/reparam_ln.py)], then calibration statistics: both change the activation ranges, so
    the statistics are taken on the rewritten graph. softmax_quant is only checked here (a log2
    softmax needs a softmax), before the statistics cost anything."""
    t0 = time.perf_counter()
    g = capture(model, tuple(input_shape))
    check_capture(model, g, calib_batches[0][:4])
    check_softmax_quant(g, softmax_quant)
    eq = None
    if equalize:
        eq = cle.equalize(g, equalize_relu6)
        g = eq.graph
        if not eq.relu6_replaced:  # exact equalization: still the model's function
            check_capture(model, g, calib_batches[0][:4])
    rp = None
    if reparam_ln:
        rp = repq.reparameterize(g, calib_batches)
        g = rp.graph
        check_capture(model, g, calib_batches[0][:4])  # exact: still the model's function
    stats = collect_stats(g, calib_batches, seed=seed, progress=progress)
    return Prepared(g, stats, time.perf_counter() - t0, list(calib_batches), equalized=eq, reparam=rp)


def check_softmax_quant(g: FloatGraph, softmax_quant: str) -> None:
    if softmax_quant == "log2" and not any(n.op == "softmax" for n in g.nodes):
        raise QuantsimError("--softmax-quant log2 quantizes attention probabilities: the model has no softmax")


@torch.no_grad()
def check_capture(model: torch.nn.Module, g: FloatGraph, x: torch.Tensor) -> None:
    ref = model(x)
    got = run_float(g, x)
    err = float((ref - got).abs().max() / ref.abs().max().clamp(min=1e-12))
    if not err < CAPTURE_TOLERANCE:
        raise QuantsimError(f"the captured graph does not reproduce the model (relative error {err:.2e}): "
                            "an op was traced in a way quantsim cannot follow")


def quantize(prep: Prepared, cfg: QuantConfig, progress: bool = False) -> Graph:
    g, stats = prep.fgraph, prep.stats
    want = equalize_key(cfg.equalize, cfg.equalize_relu6)
    if want != prep.equalize_key:
        raise QuantsimError(f"the config asks for equalize {want} but the model was prepared with {prep.equalize_key}: "
                            "prepare it again with the config's equalize setting")
    if cfg.reparam_ln != (prep.reparam is not None):
        raise QuantsimError(f"the config asks for reparam_ln={cfg.reparam_ln} but the model was prepared "
                            f"{'with' if prep.reparam is not None else 'without'} it: prepare it again")
    check_softmax_quant(g, cfg.softmax_quant)
    if scale_search.needs_search(cfg):  # similarity / ranking search, bias correction
        g, stats, cfg = scale_search.searched(g, stats, prep.calib, cfg, prep.searched)
    if cfg.rounding == "gptq":  # GPTQ codes at the scales lowering gives (cached per config)
        g = gptq.rounded(g, stats, prep.calib, cfg, prep.searched, progress, prep.rounding_cache)
    elif cfg.reconstruct != "none":  # block / layer reconstruction: codes and learned activation clips
        g, stats = reconstruct.reconstructed(g, stats, prep.calib, cfg, prep.searched, progress, prep.rounding_cache)
    elif cfg.rounding == "adaround":  # AdaRound codes at the same scales (cached per config)
        g = adaround.rounded(g, stats, prep.calib, cfg, prep.searched, progress, prep.rounding_cache)
    return lower(g, stats, cfg)


@dataclass
class Accuracy:
    n: int = 0
    n_labelled: int = 0
    top1: int = 0
    top5: int = 0
    top1_fp32: int = 0
    top5_fp32: int = 0
    agree: int = 0
    predictions: list[np.ndarray] = field(default_factory=list)
    top5_fp32_idx: list[np.ndarray] = field(default_factory=list)  # per batch: FP32's 5 best classes
    top5_idx: list[np.ndarray] = field(default_factory=list)       # and the program's
    labels: list[np.ndarray] = field(default_factory=list)

    def top5_overlap(self) -> np.ndarray:
        """Per image: how many of FP32's top-5 classes are among the program's top-5."""
        if not self.top5_idx:
            return np.zeros(0, np.int64)
        f, q = np.concatenate(self.top5_fp32_idx), np.concatenate(self.top5_idx)
        return (f[:, :, None] == q[:, None, :]).any(axis=2).sum(axis=1)

    def as_dict(self) -> dict:
        lab = max(self.n_labelled, 1)
        has = self.n_labelled > 0
        return {
            "n_eval": self.n, "n_labelled": self.n_labelled,
            "top1": 100.0 * self.top1 / lab if has else None,
            "top5": 100.0 * self.top5 / lab if has else None,
            "top1_fp32": 100.0 * self.top1_fp32 / lab if has else None,
            "top5_fp32": 100.0 * self.top5_fp32 / lab if has else None,
            "agreement_fp32": 100.0 * self.agree / max(self.n, 1),
            "top5_overlap_fp32": float(self.top5_overlap().mean()) if self.top5_idx else None,
        }


@torch.no_grad()
def evaluate(model: torch.nn.Module, graph: Graph | None, loader, progress: bool = True) -> Accuracy:
    """FP32 and quantized (emulated) accuracy in one pass over the evaluation data."""
    acc = Accuracy()
    qmodel = emulate.EmulatedModel(graph) if graph is not None else None
    for x, y in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        f = model(x)
        q = qmodel(x) if qmodel is not None else f
        pf, pq = f.argmax(1), q.argmax(1)
        acc.n += len(x)
        acc.agree += int((pf == pq).sum())
        acc.predictions.append(pq.numpy())
        acc.top5_fp32_idx.append(top_indices(f, 5))
        acc.top5_idx.append(top_indices(q, 5))
        acc.labels.append(np.asarray(y))
        mask = y >= 0
        if mask.any():
            acc.n_labelled += int(mask.sum())
            acc.top1 += hits(top_indices(q, 1), y, 1)
            acc.top5 += hits(top_indices(q, 5), y, 5)
            acc.top1_fp32 += hits(top_indices(f, 1), y, 1)
            acc.top5_fp32 += hits(top_indices(f, 5), y, 5)
    return acc


@dataclass
class BitExact:
    images: int
    mismatches: dict[str, int]  # per IR node
    acc_overflows: dict[str, int]
    ref_tensors: dict[str, np.ndarray]  # integer_ref's outputs (operand taps for hwmodel)
    seconds_ref: float
    # per accumulating node (integer_ref.executor.ExecResult): max |acc + bias| over the images, and
    # the narrowest signed accumulator that held every value
    acc_peaks: dict[str, int] = field(default_factory=dict)
    acc_bits_needed: dict[str, int] = field(default_factory=dict)

    @property
    def total_mismatches(self) -> int:
        return int(sum(self.mismatches.values()))

    @property
    def acc_bits_needed_max(self) -> int | None:
        """The narrowest accumulator for the whole program: the widest any layer needed."""
        return max(self.acc_bits_needed.values(), default=None)


def check_bitexact(graph: Graph, x: torch.Tensor) -> BitExact:
    """integer_ref against emulate on every node: zero differing elements expected."""
    emu = emulate.run(graph, x, keep="all")
    t0 = time.perf_counter()
    ref = int_exec.run(graph, x.numpy().astype(np.float32), keep="all")
    seconds = time.perf_counter() - t0
    mismatches = {}
    for node in graph.nodes:
        a = ref.tensors[node.name]
        b = emu.tensors[node.name].numpy()
        mismatches[node.name] = int(a.size) if a.shape != b.shape else int((a != b).sum())
    return BitExact(len(x), mismatches, dict(ref.acc_overflows), ref.tensors, seconds, ref.acc_peaks,
                    ref.acc_bits_needed)


@torch.no_grad()
def layer_sqnr(prep: Prepared, graph: Graph, x: torch.Tensor, ref_tensors: dict[str, np.ndarray]) -> dict[str, float]:
    """SQNR (dB) of each quantized tensor against the float model's tensor on the same images."""
    floats: dict[str, torch.Tensor] = {}
    run_float(prep.fgraph, x, observe=lambda n, y: floats.__setitem__(n.name, y))
    out = {}
    for node in graph.nodes:
        if node.name not in floats or node.name not in ref_tensors:
            continue
        if node.op == "softmax" and node.attrs["quant"] == "log2":  # codes are exponents, not values
            continue
        f = floats[node.name].double().numpy()
        q = int_exec.dequantize(ref_tensors[node.name], node.out)
        if f.shape != q.shape:
            continue
        noise = float(((f - q) ** 2).sum())
        sig = float((f**2).sum())
        out[node.name] = float("inf") if noise == 0 else 10.0 * np.log10(max(sig, 1e-30) / noise)
    return out


def integer_taps(graph: Graph, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every node's integer output from integer_ref (the operands hwmodel sees)."""
    return int_exec.run(graph, x.numpy().astype(np.float32), keep="all").tensors


def tensor_error(graph: Graph, fgraph: FloatGraph, x: torch.Tensor, tensor: str) -> float:
    """‖program − float‖² / ‖float‖² of one tensor on images x: the program's integers from
    integer_ref, dequantized, against the float graph's value (a reconstruction's quality measure)."""
    vals = {}
    run_float(fgraph, x, observe=lambda n, y: vals.__setitem__(n.name, y) if n.name == tensor else None)
    node = next(n for n in graph.nodes if n.name == tensor)
    q = int_exec.dequantize(integer_taps(graph, x)[tensor], node.out)
    f = vals[tensor].double().numpy()
    return float(((q - f) ** 2).sum() / (f ** 2).sum())
