"""quantsim: energy-aware post-training quantization with the hardware in the loop.

The rooms follow the pipeline (DESIGN.md): zoo -> graph -> quant -> mixed -> emulate / integer_ref
-> hwmodel, orchestrated by run, driven by cli; interop talks to other engines."""
from quantsim.api import Program, Report, quantize
from quantsim.errors import QuantsimError
from quantsim.quant.config import QuantConfig
from quantsim.run.options import RunOptions, SweepOptions
from quantsim.run.single import run
from quantsim.zoo.models import load_model

__version__ = "0.1.0"
__all__ = ["Program", "QuantConfig", "QuantsimError", "Report", "RunOptions", "SweepOptions", "load_model",
           "quantize", "run"]
