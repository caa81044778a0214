"""The Python API: quantize a torch classifier into an integer program, evaluate it, check it
bit-exactly, simulate it on an accelerator. The command line does the same through quantsim.run.

    import torch, quantsim
    prog = quantsim.quantize(model, quantsim.QuantConfig(w_bits=4, a_bits=8), calib_images)
    prog.evaluate(loader)                    # {'top1': ..., 'top1_fp32': ..., 'agreement_fp32': ...}
    prog.check_bitexact(x).total_mismatches  # 0: integer_ref computes what the torch twin computes
    report = prog.simulate("scalesim-32x32-os")
    report.layers                            # pandas DataFrame, the columns of layers.csv
    report.save("runs/mine")                 # summary.json/.csv, layers.csv, energy plot (atomic)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from integer_ref.ir import Graph
from quantsim.emulate.executor import EmulatedModel
from quantsim.errors import QuantsimError
from quantsim.quant.config import QuantConfig
from quantsim.run import hardware, stages
from quantsim.run.inputs import load_accel
from quantsim.run.layer_table import layer_table, merge_rows, write_reports
from quantsim.run.single import w8a8_reference

__all__ = ["Program", "Report", "quantize"]


def _image_batches(data) -> list[torch.Tensor]:
    """Images from a tensor (N, C, H, W), a list of tensors, or (x, y) batches / a DataLoader."""
    if isinstance(data, torch.Tensor):
        return [data]
    out = []
    for b in data:
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise QuantsimError("calibration data: give a (N, C, H, W) tensor or batches of them")
        out.append(x)
    if not out:
        raise QuantsimError("calibration data holds no images")
    return out


def _labelled_batches(data):
    """(x, y) batches: a DataLoader / list of pairs, or a Dataset of (image, label) items."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=64)
    return data


@dataclass
class Report:
    """The hardware model's answer for one program: per-layer rows and the run's totals."""

    layers: pd.DataFrame
    summary: dict
    hw: object = field(repr=False)
    title: str = ""

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        write_reports(out, self.summary, self.layers,
                      extra=lambda rd: hardware.plot_energy(self.hw, rd.path("energy_breakdown"), self.title))
        return out


@dataclass
class Program:
    """A quantized model: the integer program (integer_ref IR) with the float model it came from."""

    graph: Graph
    config: QuantConfig
    model: torch.nn.Module = field(repr=False)
    prepared: stages.Prepared = field(repr=False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The program's logits on x (the emulated integer program, dequantized at the output)."""
        return EmulatedModel(self.graph)(x)

    def evaluate(self, data, progress: bool = False) -> dict:
        """Top-1/top-5 of the program and of the float model, and their agreement, in one pass."""
        return stages.evaluate(self.model, self.graph, _labelled_batches(data), progress).as_dict()

    def check_bitexact(self, x: torch.Tensor) -> stages.BitExact:
        """integer_ref against the torch twin on every node of x; zero differing elements expected."""
        return stages.check_bitexact(self.graph, x)

    def simulate(self, accel: str = "scalesim-32x32-ws", images: torch.Tensor | None = None,
                 toggle_images: int = 1, mac_form: str = "max", dram_model: str | None = None,
                 residency: str | None = None, dram_stalls: str | None = None) -> Report:
        """Cycles, memory traffic, toggles and energy per layer on the accelerator (a preset name or
        a TOML file); the operands are integer_ref's on `images` (default: calibration images)."""
        acc = load_accel(accel, dram_model, residency, dram_stalls)
        x = images if images is not None else self.prepared.calib[0]
        x = x[:max(toggle_images, 1)]
        bitexact = stages.check_bitexact(self.graph, x)
        hw = hardware.simulate(self.graph, bitexact.ref_tensors, acc, toggle_images, mac_form)
        w8 = w8a8_reference(self.prepared, self.config, hw, acc, x, toggle_images, mac_form)
        summary = {"bits": self.config.label, "config": self.config.to_json(),
                   "bitexact_mismatches": bitexact.total_mismatches, **hardware.energy_summary(hw, w8)}
        layers = merge_rows(layer_table(self.graph, bitexact, {}), hw)
        return Report(layers, summary, hw, title=f"{self.config.label} on {acc.name}")


def quantize(model: torch.nn.Module, config: QuantConfig, calib, seed: int = 0, progress: bool = False,
             rounding_cache: str | Path | None = None) -> Program:
    """Capture `model`, calibrate on `calib` (images: a tensor, batches, or a DataLoader of (x, y)),
    and lower it with `config` to an integer program. rounding_cache: a folder where learned codes
    (gptq / adaround / reconstruction) are kept and reused by later calls on the same inputs."""
    model = model.float().eval()
    calib_batches = _image_batches(calib)
    torch.manual_seed(seed)
    prep = stages.prepare(model, tuple(calib_batches[0].shape[1:]), calib_batches, seed, progress,
                          equalize=config.equalize, equalize_relu6=config.equalize_relu6,
                          reparam_ln=config.reparam_ln, softmax_quant=config.softmax_quant)
    prep.rounding_cache = Path(rounding_cache) if rounding_cache is not None else None
    return Program(stages.quantize(prep, config), config, model, prep)
