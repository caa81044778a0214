"""quantsim: energy-aware post-training quantization with the hardware in the loop.

The rooms follow the pipeline (DESIGN.md): zoo -> graph -> quant -> mixed -> emulate / integer_ref
-> hwmodel, orchestrated by run, driven by cli; interop talks to other engines.

The public names are imported on first use (PEP 562), not with the package: every
`import quantsim.X` runs this file, and importing the whole API here (pandas, matplotlib,
torchvision, ...) cost each Ray worker and each `--help` seconds it did not need."""
from __future__ import annotations

import importlib

import quantsim.run  # the (light) subpackage, loaded now so that a later `import quantsim.run.X` keeps `run` below

__version__ = "0.1.0"
__all__ = ["Program", "QuantConfig", "QuantsimError", "Report", "RunOptions", "SweepOptions", "load_model",
           "quantize", "run"]

_HOME = {"Program": "quantsim.api", "Report": "quantsim.api", "quantize": "quantsim.api",
         "QuantsimError": "quantsim.errors", "QuantConfig": "quantsim.quant.config",
         "RunOptions": "quantsim.run.options", "SweepOptions": "quantsim.run.options",
         "load_model": "quantsim.zoo.models"}


def run(opts):
    """One command-line run from its RunOptions (quantsim.run.single.run)."""
    from quantsim.run.single import run as run_single
    return run_single(opts)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'quantsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
