"""The options of one run and of a sweep, as data: the command line fills them, the Python API
and the benchmarks build them directly, the orchestrator reads only these fields."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

__all__ = ["DEFAULT_MODEL", "DEFAULT_ACCEL", "RunOptions", "SweepOptions"]

DEFAULT_MODEL = "tf_efficientnet_lite0"
DEFAULT_ACCEL = "scalesim-32x32-ws"


@dataclass
class RunOptions:
    """Everything `python -m quantsim.simulate` accepts (defaults equal the command line's)."""

    # model and data
    model: str | None = None
    arch: str | None = None
    trust_model: bool = False
    pretrained: bool = False
    weights: str | None = None
    data: str | None = None
    calib_data: str | None = None
    download: bool = False
    calib: int = 256
    eval: int | None = None
    seed: int = 0
    batch_size: int = 64
    # quantization
    bits: str = "8"
    granularity: str = "per-channel"
    calib_method: str = "minmax"
    percentile: float = 99.99
    search_steps: int = 100
    bias_correction: bool = False
    rounding: str = "nearest"
    gptq_inputs: str = "sequential"
    recon_iters: int = 500
    reconstruct: str = "none"
    qdrop: float = 0.5
    recon_crop: int = 0
    rounding_cache: str | None = None
    equalize: bool = False
    equalize_relu6: str = "skip"
    reparam_ln: bool = False
    softmax_quant: str = "uniform"
    requant: str = "dyadic"
    acc_overflow: str = "count"
    bitexact_images: int = 8
    allow_mismatch: bool = False
    # hardware
    accel: str = DEFAULT_ACCEL
    toggle_images: int = 1
    mac_form: str = "max"
    dram_model: str | None = None
    residency: str | None = None
    dram_stalls: str | None = None
    # mixed precision
    energy_budget: float | None = None
    candidates: str = "4,6,8"
    sensitivity_at: str = "layer"
    sensitivity_weighting: str = "none"
    sensitivity_cache: str | None = None
    rerank: int = 0
    rerank_by: str = "joint"
    rerank_images: int = 2000
    mixed_unit: str = "layer"
    # outputs
    out: str = "runs/latest"
    save_ir: bool = False
    export_onnx: str | None = None
    oracle: str | None = None
    no_progress: bool = False
    quiet: bool = False   # nothing on stdout, no progress bars
    json: bool = False    # summary.json on stdout as one line instead of the human summary

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace):
        """The fields of this class from a parsed command line; a flag the class lacks is a bug."""
        names = {f.name for f in fields(cls)}
        extra = set(vars(ns)) - names
        if extra:
            raise TypeError(f"{cls.__name__} has no field for the flags {sorted(extra)}")
        return cls(**{k: v for k, v in vars(ns).items()})

    @property
    def progress(self) -> bool:
        return not (self.no_progress or self.quiet)


@dataclass
class SweepOptions(RunOptions):
    """A Pareto sweep: every option of a run (each point is a run) plus the sweep's own."""

    out: str = "runs/pareto"
    budgets: str = "0.4,0.5,0.6,0.7,0.8"
    no_uniform: bool = False
    uniform_granularity: str = "per-tensor,per-channel"
    resume: bool = False
    ray: str | None = None
    ray_retries: int = 2
    sweep: str | None = None   # a sweep file (quantsim.run.sweep_file): its runs instead of one model
    reference: str | None = None        # an earlier sweep's folder, drawn beside this one in the plots
    reference_label: str | None = None  # its legend label (default: the method it recorded, or its folder's name)
    replot: str | None = None  # a finished sweep's folder: its plots and report drawn again, nothing measured
