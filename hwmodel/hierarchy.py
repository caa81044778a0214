"""The memory hierarchy as data: a preset's storage levels, innermost first, Timeloop/ZigZag style.

Instead of the [sram] and [dram] sections and the e_sram_bit_pj / e_gb_bit_pj / e_dram_bit_pj
energy keys, a preset may list its memories as levels::

    [[memory]]                 # optional: the PE registers (priced inside e_mac8_pj)
    kind = "registers"
    size_bytes = 3             # per PE: one weight, one activation, one partial sum word
    word_bits = 8

    [[memory]]                 # one per operand: ifmap, filter, ofmap (double-buffered)
    kind = "sram"
    operand = "ifmap"
    size_bytes = 65536
    word_bits = 64             # access width (the energy figure's)
    e_bit_pj = 0.3125
    e_bit_source = "..."

    [[memory]]                 # optional: a global buffer for activations between layers
    kind = "global"
    size_bytes = 262144
    word_bits = 64
    e_bit_pj = 0.82
    e_bit_source = "..."
    residency = true           # optional

    [[memory]]                 # the outermost level
    kind = "dram"
    word_bits = 64             # the bus width
    burst_bytes = 64
    e_bit_pj = 20.0
    e_bit_source = "..."
    transfer_mts = 3200        # optional: the bandwidth, with transfer_source; stalls, model optional

`levels_to_flat` turns the levels into the [sram] / [dram] sections that hwmodel.arch reads,
so a preset written either way is the same Accelerator and gives the same numbers
(tests/test_hw_hierarchy.py converts every shipped preset, `flat_to_levels`). The model
behind them is fixed, and a level list outside it is refused: registers, then one SRAM per
operand (priced alike: one e_sram_bit_pj), then at most one global buffer, then DRAM; only
DRAM has a bandwidth (the on-chip levels keep up with the array); word widths other than
DRAM's bus are descriptive (each figure's access width), not used by the counts.
"""
from __future__ import annotations

import copy

KINDS = ("registers", "sram", "global", "dram")
OPERANDS = ("ifmap", "filter", "ofmap")
# keys each kind may carry (required ones first, then optional), and where they land in the flat form
_KEYS = {
    "registers": (("size_bytes", "word_bits"), ()),
    "sram": (("operand", "size_bytes", "word_bits", "e_bit_pj", "e_bit_source"), ()),
    "global": (("size_bytes", "word_bits", "e_bit_pj", "e_bit_source"), ("residency",)),
    "dram": (("word_bits", "burst_bytes", "e_bit_pj", "e_bit_source"),
             ("transfer_mts", "transfer_source", "stalls", "model")),
}
FLAT_ENERGY = {"sram": "e_sram_bit", "global": "e_gb_bit", "dram": "e_dram_bit"}
# a default word width for the descriptive keys when a flat preset is written as levels
SRAM_WORD_BITS = 64
REGISTER_WORDS = 3


def _err(where: str, msg: str) -> ValueError:
    return ValueError(f"accelerator file {where}: {msg}")


def levels_to_flat(doc: dict, where: str = "<toml>") -> dict:
    """The same preset with its [[memory]] levels written as [sram], [dram] and the energy keys."""
    levels = doc["memory"]
    if not isinstance(levels, list) or not all(isinstance(lv, dict) for lv in levels):
        raise _err(where, "memory must be a list of [[memory]] tables")
    for section in ("sram", "dram"):
        if section in doc:
            raise _err(where, f"[{section}] and [[memory]] both given: describe the memories one way")
    energy = doc.get("energy", {})
    for k in FLAT_ENERGY.values():
        if f"{k}_pj" in energy:
            raise _err(where, f"energy.{k}_pj and [[memory]] both given: a level's e_bit_pj prices it")
    rank = []
    sram, dram, energy = {}, {}, dict(energy)
    sram_e = {}
    for i, lv in enumerate(levels):
        kind = lv.get("kind")
        at = f"memory[{i}]"
        if kind not in KINDS:
            raise _err(where, f"{at}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        required, optional = _KEYS[kind]
        missing = [k for k in required if k not in lv]
        if missing:
            raise _err(where, f"{at} ({kind}) is missing {', '.join(missing)}")
        extra = sorted(set(lv) - set(required) - set(optional) - {"kind", "name"})
        if extra:
            why = (" (only the dram level has a bandwidth: transfer_mts)"
                   if kind != "dram" and any("transfer" in k or "bandwidth" in k for k in extra) else "")
            raise _err(where, f"{at} ({kind}) has unknown key(s) {', '.join(extra)}{why}")
        rank.append(KINDS.index(kind))
        if kind == "sram":
            op = lv["operand"]
            if op not in OPERANDS or op in sram_e:
                raise _err(where, f"{at}.operand must be one of {', '.join(OPERANDS)}, each once; got {op!r}")
            sram[f"{op}_bytes"] = lv["size_bytes"]
            sram_e[op] = (lv["e_bit_pj"], lv["e_bit_source"])
        elif kind == "global":
            if "global_bytes" in sram:
                raise _err(where, f"{at}: at most one global buffer")
            sram["global_bytes"] = lv["size_bytes"]
            if "residency" in lv:
                sram["residency"] = lv["residency"]
            energy["e_gb_bit_pj"], energy["e_gb_bit_source"] = lv["e_bit_pj"], lv["e_bit_source"]
        elif kind == "dram":
            if dram:
                raise _err(where, f"{at}: one DRAM level only")
            dram = {"bus_bits": lv["word_bits"], "burst_bytes": lv["burst_bytes"],
                    **{k: lv[k] for k in optional if k in lv}}
            energy["e_dram_bit_pj"], energy["e_dram_bit_source"] = lv["e_bit_pj"], lv["e_bit_source"]
    if rank != sorted(rank):
        raise _err(where, "memory levels must run innermost first: registers, sram, global, dram")
    if set(sram_e) != set(OPERANDS):
        raise _err(where, f"memory needs one sram level per operand ({', '.join(OPERANDS)}), got "
                          f"{', '.join(sram_e) or 'none'}")
    if len({e for e, _ in sram_e.values()}) != 1:
        raise _err(where, "the operand SRAM levels must share one e_bit_pj (this model prices them alike)")
    if not dram:
        raise _err(where, "memory needs a dram level (the outermost)")
    energy["e_sram_bit_pj"], energy["e_sram_bit_source"] = sram_e["ifmap"]
    flat = {k: v for k, v in doc.items() if k != "memory"}
    flat.update(sram=sram, dram=dram, energy=energy)
    return flat


def flat_to_levels(doc: dict) -> dict:
    """A preset of the [sram] / [dram] form written as [[memory]] levels (descriptive word widths:
    SRAM_WORD_BITS for the on-chip levels, the accumulator / operand widths for the registers)."""
    flat = copy.deepcopy(doc)
    sram, dram, energy = flat.pop("sram"), flat.pop("dram"), flat["energy"]
    levels = [{"kind": "registers", "size_bytes": REGISTER_WORDS, "word_bits": 8}]
    e_sram, src_sram = energy.pop("e_sram_bit_pj"), energy.pop("e_sram_bit_source")
    for op in OPERANDS:
        levels.append({"kind": "sram", "operand": op, "size_bytes": sram[f"{op}_bytes"],
                       "word_bits": SRAM_WORD_BITS, "e_bit_pj": e_sram, "e_bit_source": src_sram})
    if "global_bytes" in sram:
        gb = {"kind": "global", "size_bytes": sram["global_bytes"], "word_bits": SRAM_WORD_BITS,
              "e_bit_pj": energy.pop("e_gb_bit_pj"), "e_bit_source": energy.pop("e_gb_bit_source")}
        if "residency" in sram:
            gb["residency"] = sram["residency"]
        levels.append(gb)
    levels.append({"kind": "dram", "word_bits": dram.pop("bus_bits"), "burst_bytes": dram.pop("burst_bytes"),
                   "e_bit_pj": energy.pop("e_dram_bit_pj"), "e_bit_source": energy.pop("e_dram_bit_source"),
                   **dram})
    flat["memory"] = levels
    return flat
