"""hwmodel: MAC-array accelerator and DRAM model fed by the integer program. No torch here."""

from .arch import Accelerator, list_presets, load_accelerator  # noqa: E402,F401
from .simulate import HwResult, fp32_reference, simulate_graph  # noqa: E402,F401
