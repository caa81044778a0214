"""Accelerator descriptions: a MAC array, its SRAM buffers, DRAM and energy table, from TOML.

Presets live in hwmodel/presets/NAME.toml; a user may pass any file of the same
schema. The architecture and the energy table are separate sections, and every energy
constant carries the source it came from (``<key>_source`` next to ``<key>``).

TOML schema (all keys required; sizes are positive integers)::

    name = "scalesim-32x32-ws"        # string
    description = "..."                # string (optional)

    [array]
    rows = 32                          # PE rows
    cols = 32                          # PE columns
    dataflow = "ws"                    # "ws" weight-, "os" output-, "is" input-stationary
    acc_bits = 32                      # accumulator (partial sum) width in bits
    clock_mhz = 1000                   # optional: clock, only for latency = cycles / clock
    precision = "bit-parallel"         # optional: "bit-parallel" (default) or "bit-serial", see below
    serial_bits = 1                    # optional, bit-serial only: activation bits a PE takes per cycle

    [sram]                             # bytes per operand buffer, double-buffered
    ifmap_bytes = 65536
    filter_bytes = 65536
    ofmap_bytes = 65536
    global_bytes = 262144              # optional: a global buffer that holds activations between layers
    residency = true                   # optional (needs global_bytes): keep activations on chip, see below

    [dram]
    bus_bits = 64                      # DRAM interface width
    burst_bytes = 64                   # bytes per DRAM transaction (burst)
    model = "reuse"                    # optional: "reuse" (default) or "scalesim", see below
    transfer_mts = 3200                # optional (needs array.clock_mhz): transfers per second per pin, millions
    transfer_source = "..."            # where that data rate comes from (required with it)
    stalls = true                      # optional (needs transfer_mts; default true with it): see below

    [energy]                           # picojoules, each with a *_source string
    e_mac8_pj = 0.23                   # 8x8-bit multiply + add (b^2 law scales it)
    e_add32_pj = 0.1                   # 32-bit add (pool sums, residual adds)
    e_fp32_mult_pj = 3.7               # FP32 reference
    e_fp32_add_pj = 0.9
    e_sram_bit_pj = 0.3125             # per bit read or written
    e_dram_bit_pj = 20.0               # per bit moved over the DRAM interface
    e_mac8_source = "..."              # and likewise for every constant above

dram.model chooses how DRAM reads of ifmap and filter are counted (hwmodel.mapping):
"reuse" (the default) fetches each operand tile once per reuse window given the SRAM
sizes: an operand that fits its buffer is fetched once; one that does not is tiled into
tiles (bands of output rows, channel slices, output-channel tiles) and re-fetched once per
iteration of the loops outside it, in whichever tiling and loop order moves fewest bits
(partial sums go to DRAM only where that is cheaper). "scalesim" replays SCALE-Sim 3.0.0's read buffer, which
forgets its whole active half each time it fills: it reproduces SCALE-Sim's DRAM counts
exactly (tests/test_hw_scalesim.py) and is pessimistic where a layer's ifmap would fit.

sram.global_bytes is a global buffer beside the operand buffers. With residency on
(sram.residency = true, or --residency on), hwmodel.residency keeps each activation tensor
there from the layer that writes it to the last layer that reads it whenever it fits beside
the tensors already held (first come, first kept): its DRAM write and its later DRAM reads
become global-buffer writes and reads (energy.e_gb_bit_pj per bit, a required key then).
Weights, the input image and the network's output always cross DRAM. With residency off
every count is that of the accelerator without a global buffer.

array.precision = "bit-serial" is a precision-scalable array in the manner of Stripes (Judd et
al., MICRO 2016): weights held bit-parallel, activations fed serial_bits bits per cycle, so
every step of the array's schedule (fill, stream, drain) takes ceil(b_a / serial_bits) cycles
and a layer's cycles scale with its activation width: W4A4 takes half the cycles of W8A8 on
the same array. Traffic and the energy terms are those of the bit-parallel array.

array.precision = "bit-fusion" is a fusible array in the manner of Bit Fusion (Sharma et al.,
ISCA 2018): each PE is a fusion unit of (fusion_bits / brick_bits)^2 BitBricks (2-bit x 2-bit
multipliers by default) that fuse into one fusion_bits x fusion_bits multiplier, or into
(fusion_bits / b_w') * (fusion_bits / b_a') narrower ones, b' the operand width rounded up to a
power of two of at least brick_bits: those products are terms of the same dot product, so a
PE consumes that many elements of the reduction dimension K per cycle (cycles and folds of the
GEMM with K / lanes; W4A4 on an 8-bit fusion array: 4 lanes). Wider operands than fusion_bits
take (b' / fusion_bits) steps each (temporal fusion). Traffic and energy terms are those of the
bit-parallel array (a simplification, as for bit-serial).

dram.transfer_mts is the DRAM data rate: the interface moves bus_bits/8 bytes per transfer, so
bus_bits/8 * transfer_mts / clock_mhz bytes per array cycle (DDR4-3200 on a 64-bit bus at 1 GHz:
25.6). With dram.stalls on (hwmodel.bandwidth) a layer takes max(its compute cycles, the cycles
its DRAM bursts need on the bus): compute and DRAM transfers overlap (double-buffered SRAM), and
what the bus needs beyond the compute is stall_cycles. dram.stalls = false, or a file without
transfer_mts, gives cycles that ignore DRAM bandwidth (the model before stalls were counted).

The memories may instead be given as [[memory]] levels, innermost first (registers, one SRAM
per operand, a global buffer, DRAM: size, word width, energy per bit, DRAM's bandwidth):
hwmodel.hierarchy, which writes them as the sections above.

A bad file raises ValueError with one line naming the file and the key.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

from .dataflow import DATAFLOWS
from .hierarchy import levels_to_flat

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DRAM_MODELS = ("reuse", "scalesim")
DEFAULT_DRAM_MODEL = "reuse"
PRECISIONS = ("bit-parallel", "bit-serial", "bit-fusion")
ENERGY_KEYS = ("e_mac8_pj", "e_add32_pj", "e_fp32_mult_pj", "e_fp32_add_pj",
               "e_sram_bit_pj", "e_dram_bit_pj")


@dataclass(frozen=True)
class EnergyTable:
    e_mac8_pj: float
    e_add32_pj: float
    e_fp32_mult_pj: float
    e_fp32_add_pj: float
    e_sram_bit_pj: float
    e_dram_bit_pj: float
    sources: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Accelerator:
    name: str
    rows: int
    cols: int
    dataflow: str
    sram_ifmap_bytes: int
    sram_filter_bytes: int
    sram_ofmap_bytes: int
    dram_bus_bits: int
    burst_bytes: int
    acc_bits: int
    energy: EnergyTable
    description: str = ""
    path: str = ""
    dram_model: str = DEFAULT_DRAM_MODEL
    clock_mhz: float | None = None  # optional [array] clock_mhz: latency = cycles / clock

    def latency_us(self, cycles: int) -> float | None:
        """Microseconds for `cycles` at the array's clock; None when the file names no clock."""
        return cycles / self.clock_mhz if self.clock_mhz else None
    precision: str = "bit-parallel"
    serial_bits: int = 1
    fusion_bits: int = 8   # bit-fusion: the width one fused PE multiplies
    brick_bits: int = 2    # bit-fusion: the width of one BitBrick
    sram_global_bytes: int = 0
    residency: bool = False
    e_gb_bit_pj: float = 0.0
    e_gb_bit_source: str = ""
    dram_transfer_mts: float | None = None  # optional [dram] transfer_mts: the DRAM data rate
    dram_transfer_source: str = ""
    dram_stalls: bool = False  # [dram] stalls: cycles wait for DRAM bandwidth (hwmodel.bandwidth)

    def dram_bytes_per_cycle(self) -> float | None:
        """DRAM bandwidth in bytes per array cycle; None when the file names no data rate."""
        if not self.dram_transfer_mts:
            return None
        return self.dram_bus_bits / 8 * self.dram_transfer_mts / self.clock_mhz

    def dram_cycles(self, nbytes: int) -> int:
        """Array cycles the DRAM interface needs to move nbytes: ceil(nbytes / bytes per cycle), in
        exact rational arithmetic so that a test can derive the same integer (0 without a data rate)."""
        if not self.dram_transfer_mts or not nbytes:
            return 0
        per_cycle = Fraction(self.dram_bus_bits, 8) * Fraction(self.dram_transfer_mts) / Fraction(self.clock_mhz)
        return math.ceil(Fraction(int(nbytes)) / per_cycle)

    def with_stalls(self, on: bool) -> "Accelerator":
        """The same accelerator with DRAM bandwidth stalls counted in its cycles, or not."""
        if on and not self.dram_transfer_mts:
            raise ValueError(f"accelerator {self.name} names no DRAM data rate (dram.transfer_mts): stalls need one")
        return replace(self, dram_stalls=bool(on))

    def cycle_steps(self, x_bits: int, w_bits: int = 8) -> int:
        """Array cycles per step of the schedule (1 when bit-parallel): bit-serial ceil(b_a / serial_bits),
        bit-fusion the temporal steps of operands wider than fusion_bits."""
        if self.precision == "bit-serial":
            return -(-int(x_bits) // self.serial_bits)
        if self.precision == "bit-fusion":
            return math.prod(max(1, self._fused_width(b) // self.fusion_bits) for b in (x_bits, w_bits))
        return 1

    def fusion_lanes(self, x_bits: int, w_bits: int) -> int:
        """Products per PE per cycle along the reduction dimension: (fusion_bits / b_w')(fusion_bits /
        b_a') on a bit-fusion array (operands at most fusion_bits wide count), 1 otherwise."""
        if self.precision != "bit-fusion":
            return 1
        return math.prod(max(1, self.fusion_bits // self._fused_width(b)) for b in (x_bits, w_bits))

    def _fused_width(self, bits: int) -> int:
        """An operand's width on the BitBricks: the next power of two, at least brick_bits."""
        return max(self.brick_bits, 1 << max(int(bits) - 1, 0).bit_length())

    def with_residency(self, on: bool) -> "Accelerator":
        """The same accelerator with activation residency in its global buffer on or off."""
        if on and not self.sram_global_bytes:
            raise ValueError(f"accelerator {self.name} has no global buffer (sram.global_bytes): residency needs one")
        return replace(self, residency=bool(on))

    def with_dataflow(self, dataflow: str) -> "Accelerator":
        if dataflow not in DATAFLOWS:
            raise ValueError(f"unknown dataflow {dataflow!r} (expected one of {', '.join(DATAFLOWS)})")
        return replace(self, dataflow=dataflow, name=f"{self.name}[{dataflow}]")

    def with_dram_model(self, dram_model: str) -> "Accelerator":
        """The same accelerator with DRAM traffic counted by another model (name kept)."""
        if dram_model not in DRAM_MODELS:
            raise ValueError(f"unknown DRAM model {dram_model!r} (expected one of {DRAM_MODELS})")
        return replace(self, dram_model=dram_model)


def list_presets() -> list[str]:
    """Names of the accelerator presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _has(doc: dict, section: str, key: str) -> bool:
    return isinstance(doc.get(section), dict) and key in doc[section]


def _choice(doc: dict, section: str, key: str, choices: tuple, default: str, where: str) -> str:
    """An optional string key that must be one of `choices`."""
    if not _has(doc, section, key):
        return default
    v = _get(doc, section, key, str, where)
    if v not in choices:
        raise ValueError(f"accelerator file {where}: key {section}.{key} must be one of {', '.join(choices)}, got {v!r}")
    return v


def _get(doc: dict, section: str | None, key: str, typ, where: str, positive: bool = True):
    table = doc if section is None else doc.get(section)
    full = key if section is None else f"{section}.{key}"
    if not isinstance(table, dict):
        raise ValueError(f"accelerator file {where}: missing section [{section}] (needed for {full})")
    if key not in table:
        raise ValueError(f"accelerator file {where}: missing key {full}")
    v = table[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool):
        raise ValueError(f"accelerator file {where}: key {full} must be {typ.__name__}, "
                         f"got {type(v).__name__} {v!r}")
    if typ in (int, float) and positive and not v > 0:
        raise ValueError(f"accelerator file {where}: key {full} must be positive, got {v!r}")
    return v


def parse_accelerator(doc: dict, where: str = "<toml>") -> Accelerator:
    if "memory" in doc:  # the memories as [[memory]] levels (hwmodel.hierarchy): the same Accelerator
        doc = levels_to_flat(doc, where)
    name = _get(doc, None, "name", str, where)
    df = _get(doc, "array", "dataflow", str, where)
    if df not in DATAFLOWS:
        raise ValueError(f"accelerator file {where}: key array.dataflow must be one of "
                         f"{', '.join(DATAFLOWS)}, got {df!r}")
    energy = {k: _get(doc, "energy", k, float, where) for k in ENERGY_KEYS}
    sources = {k: _get(doc, "energy", k.removesuffix("_pj") + "_source", str, where)
               for k in ENERGY_KEYS}
    acc = _get(doc, "array", "acc_bits", int, where)
    dram_model = _choice(doc, "dram", "model", DRAM_MODELS, DEFAULT_DRAM_MODEL, where)
    clock = _get(doc, "array", "clock_mhz", float, where) if _has(doc, "array", "clock_mhz") else None
    precision = _choice(doc, "array", "precision", PRECISIONS, "bit-parallel", where)
    serial_bits = 1
    if _has(doc, "array", "serial_bits"):
        serial_bits = _get(doc, "array", "serial_bits", int, where)
        if precision != "bit-serial":
            raise ValueError(f"accelerator file {where}: key array.serial_bits needs array.precision = \"bit-serial\"")
    fusion = {"fusion_bits": 8, "brick_bits": 2}
    for key in fusion:
        if _has(doc, "array", key):
            if precision != "bit-fusion":
                raise ValueError(f"accelerator file {where}: key array.{key} needs array.precision = \"bit-fusion\"")
            fusion[key] = _get(doc, "array", key, int, where)
    fb, bb = fusion["fusion_bits"], fusion["brick_bits"]
    if precision == "bit-fusion" and not (bb >= 1 and fb >= bb and fb & (fb - 1) == 0 and bb & (bb - 1) == 0):
        raise ValueError(f"accelerator file {where}: keys array.fusion_bits and array.brick_bits must be powers "
                         f"of two with brick_bits <= fusion_bits, got {fb} and {bb}")
    gb, residency, e_gb, e_gb_src = 0, False, 0.0, ""
    if _has(doc, "sram", "global_bytes"):
        gb = _get(doc, "sram", "global_bytes", int, where)
        e_gb = _get(doc, "energy", "e_gb_bit_pj", float, where)
        e_gb_src = _get(doc, "energy", "e_gb_bit_source", str, where)
    if _has(doc, "sram", "residency"):
        residency = doc["sram"]["residency"]
        if not isinstance(residency, bool):
            raise ValueError(f"accelerator file {where}: key sram.residency must be true or false, got {residency!r}")
        if residency and not gb:
            raise ValueError(f"accelerator file {where}: key sram.residency needs sram.global_bytes")
    mts, mts_src, stalls = None, "", False
    if _has(doc, "dram", "transfer_mts"):
        mts = _get(doc, "dram", "transfer_mts", float, where)
        mts_src = _get(doc, "dram", "transfer_source", str, where)
        if clock is None:
            raise ValueError(f"accelerator file {where}: key dram.transfer_mts needs array.clock_mhz "
                             "(DRAM bytes per array cycle)")
        stalls = True
    if _has(doc, "dram", "stalls"):
        stalls = doc["dram"]["stalls"]
        if not isinstance(stalls, bool):
            raise ValueError(f"accelerator file {where}: key dram.stalls must be true or false, got {stalls!r}")
        if stalls and mts is None:
            raise ValueError(f"accelerator file {where}: key dram.stalls needs dram.transfer_mts")
    if not 8 <= acc <= 64:
        raise ValueError(f"accelerator file {where}: key array.acc_bits must be in 8..64, got {acc}")
    return Accelerator(
        name=name,
        rows=_get(doc, "array", "rows", int, where),
        cols=_get(doc, "array", "cols", int, where),
        dataflow=df,
        sram_ifmap_bytes=_get(doc, "sram", "ifmap_bytes", int, where),
        sram_filter_bytes=_get(doc, "sram", "filter_bytes", int, where),
        sram_ofmap_bytes=_get(doc, "sram", "ofmap_bytes", int, where),
        dram_bus_bits=_get(doc, "dram", "bus_bits", int, where),
        burst_bytes=_get(doc, "dram", "burst_bytes", int, where),
        acc_bits=acc,
        energy=EnergyTable(**energy, sources=sources),
        description=str(doc.get("description", "")),
        path=where,
        dram_model=dram_model,
        clock_mhz=clock,
        precision=precision,
        serial_bits=serial_bits,
        fusion_bits=fb,
        brick_bits=bb,
        sram_global_bytes=gb,
        residency=residency,
        e_gb_bit_pj=e_gb,
        e_gb_bit_source=e_gb_src,
        dram_transfer_mts=mts,
        dram_transfer_source=mts_src,
        dram_stalls=stalls,
    )


def load_accelerator(name_or_path: str | Path) -> Accelerator:
    """A preset by name (see list_presets()) or a TOML file of the schema above."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        path = p
    else:
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ValueError(f"unknown accelerator preset {str(name_or_path)!r}; presets: "
                             f"{', '.join(list_presets())}; or pass a .toml file")
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"accelerator file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"accelerator file {path}: not valid TOML ({e})") from None
    return parse_accelerator(doc, str(path))
