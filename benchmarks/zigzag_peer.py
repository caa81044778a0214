"""Run ZigZag (pip zigzag-dse 3.9.1) on a JSON job and write its per-layer counts as JSON.

Runs ONLY in ZigZag's own venv (benchmarks/zigzag_compare.py creates it and calls this file
as a subprocess); it imports nothing from quantsim or hwmodel:

    .cache/venv-zigzag/bin/python benchmarks/zigzag_peer.py JOB.json OUT.json

JOB: {"arch": {...}, "layers": [{name, C, O, H, W, kh, kw, stride, pad, OH, OW, w_bits,
x_bits, out_bits, acc_bits, pad_h, pad_w}, ...], "workdir": DIR, "lpf_limit": int}. The accelerator is
written as ZigZag YAML (see accelerator_yaml), each layer is a ZigZag Conv with a fixed
spatial mapping (mapping_yaml); the temporal mapping (loop order and tiling over the
memory levels) is ZigZag's own LOMA search, minimising energy.

OUT: per layer, accesses per operand and memory level in bits (ZigZag's word accesses
times the port's max bandwidth) in ZigZag's four directions, MAC and memory energy (pJ),
the temporal mapping found, and the seconds ZigZag took.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import yaml

from zigzag.api import get_hardware_performance_zigzag
from zigzag.hardware.architecture.memory_port import DataDirection

DIRS = ("rd_out_to_low", "wr_in_by_low", "rd_out_to_high", "wr_in_by_high")  # ZigZag's DataDirection
# ZigZag's memory operands: I1 the activations, I2 the weights, O the outputs
LINKS = {"O": "O", "W": "I2", "I": "I1"}


def _port(name, kind, bw_min, bw_max, alloc):
    return {"name": name, "type": kind, "bandwidth_min": bw_min, "bandwidth_max": bw_max, "allocation": alloc}


def accelerator_yaml(arch: dict) -> dict:
    """The matched accelerator: a rows x cols array (D1 the columns, output channels; D2 the
    rows, the reduction), per-PE weight registers (weight stationary, free: hwmodel has no
    register energy), one SRAM buffer per operand and a DRAM. Each port's energy per access
    is e_bit times its max bandwidth (ZigZag prices an access at max bandwidth); min
    bandwidth = one element, so accesses round to elements, not words."""
    e_s, e_d = arch["e_sram_bit_pj"], arch["e_dram_bit_pj"]
    bw_in = arch["rows"] * 8  # one element per array row per cycle
    bw_w = arch["rows"] * arch["cols"] * 8
    bw_o = arch["cols"] * arch["acc_bits"]
    bus = arch["dram_bus_bits"]

    def sram(size_bytes, op, bw):
        return {"size": size_bytes * 8, "r_cost": e_s * bw, "w_cost": e_s * bw, "area": 0, "latency": 1,
                "operands": [op], "served_dimensions": ["D1", "D2"],
                "ports": ([_port("r_port_1", "read", 8, bw, [f"{op}, tl"]),
                           _port("w_port_1", "write", 8, bw, [f"{op}, fh"])] if op != "O" else
                          [_port("r_port_1", "read", 8, bw, ["O, tl", "O, th"]),
                           _port("w_port_1", "write", 8, bw, ["O, fh", "O, fl"])])}

    return {
        "name": arch["name"],
        "memories": {
            "w_reg": {"size": 8, "r_cost": 0.0, "w_cost": 0.0, "area": 0, "latency": 1, "operands": ["I2"],
                      "ports": [_port("r_port_1", "read", 8, 8, ["I2, tl"]),
                                _port("w_port_1", "write", 8, 8, ["I2, fh"])],
                      "served_dimensions": []},
            "sram_ifmap": sram(arch["sram_ifmap_bytes"], "I1", bw_in),
            "sram_filter": sram(arch["sram_filter_bytes"], "I2", bw_w),
            "sram_ofmap": sram(arch["sram_ofmap_bytes"], "O", bw_o),
            "dram": {"size": 10 ** 10, "r_cost": e_d * bus, "w_cost": e_d * bus, "area": 0, "latency": 1,
                     "operands": ["I1", "I2", "O"], "served_dimensions": ["D1", "D2"],
                     "ports": [_port("rw_port_1", "read_write", 8, bus,
                                     ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"])]},
        },
        "operational_array": {"unit_energy": arch["e_mac8_pj"], "unit_area": 1, "dimensions": ["D1", "D2"],
                              "sizes": [arch["cols"], arch["rows"]]},
    }


def spatial_d2(layer: dict, rows: int) -> list[str]:
    """The reduction loops on the array rows: as many input channels as fit, and, where all
    of them fit, whole kernel rows/columns too (conv1: C3 x FX3 x FY3 = 27 of 32, the
    rows hwmodel's im2col K of 27 fills)."""
    c = min(layer["C"], rows)
    out = [f"C, {c}"]
    if c == layer["C"]:
        left = rows // c
        if layer["kw"] <= left:
            out.append(f"FX, {layer['kw']}")
            left //= layer["kw"]
            if layer["kh"] <= left:
                out.append(f"FY, {layer['kh']}")
    return out


def workload_and_mapping(layers: list[dict], arch: dict) -> tuple[list[dict], list[dict]]:
    work, maps = [], []
    for i, L in enumerate(layers):
        s = L["stride"]
        work.append({
            "id": i, "name": L["name"], "operator_type": "Conv",
            "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
            "dimension_relations": [f"ix={s}*ox+1*fx", f"iy={s}*oy+1*fy"],
            "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"],
            "loop_sizes": [1, L["O"], L["C"], L["OH"], L["OW"], L["kh"], L["kw"]],
            "operand_precision": {"W": L["w_bits"], "I": L["x_bits"], "O": L["acc_bits"], "O_final": L["out_bits"]},
            "operand_source": {"I": max(i - 1, 0), "W": i} if i else {"I": 0, "W": 0},
            "pr_loop_dims": ["IX", "IY"],
            "padding": [list(L["pad_w"]), list(L["pad_h"])],  # (before, after) per IX, IY
        })
        maps.append({"name": L["name"],
                     "spatial_mapping": {"D1": [f"K, {min(L['O'], arch['cols'])}"], "D2": spatial_d2(L, arch["rows"])},
                     "memory_operand_links": dict(LINKS)})
    maps.append({"name": "default", "spatial_mapping": {"D1": [f"K, {arch['cols']}"], "D2": [f"C, {arch['rows']}"]},
                 "memory_operand_links": dict(LINKS)})
    return work, maps


def _bits(cme, op, lvl: int, direction: str) -> float:
    """Bits moved in one direction at one memory level: ZigZag's (fractional) accesses at the
    port's max bandwidth times that bandwidth."""
    mem_op = cme.memory_operand_links.layer_to_mem_op(op)
    dd = DataDirection(direction)
    n = cme.memory_word_access[op][lvl].get(dd)
    return float(n) * cme.accelerator.get_memory_level(mem_op, lvl).get_max_bandwidth(mem_op, dd) if n else 0.0


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    arch, layers = job["arch"], job["layers"]
    wd = Path(job["workdir"])
    wd.mkdir(parents=True, exist_ok=True)
    work, maps = workload_and_mapping(layers, arch)
    (wd / "accelerator.yaml").write_text(yaml.safe_dump(accelerator_yaml(arch), sort_keys=False))
    (wd / "workload.yaml").write_text(yaml.safe_dump(work, sort_keys=False))
    (wd / "mapping.yaml").write_text(yaml.safe_dump(maps, sort_keys=False))
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    _, _, cmes = get_hardware_performance_zigzag(
        str(wd / "workload.yaml"), str(wd / "accelerator.yaml"), str(wd / "mapping.yaml"),
        opt="energy", dump_folder=str(wd / "out"), lpf_limit=int(job.get("lpf_limit", 6)),
        loma_show_progress_bar=False)
    seconds = time.perf_counter() - t0
    out = []
    for cme, _ in cmes[0][1]:
        ops = {}
        for op in cme.layer.layer_operands:
            name = str(op)
            ops[name] = [{d: _bits(cme, op, lvl, d) for d in DIRS} for lvl in range(len(cme.memory_word_access[op]))]
            ops[name + "_energy"] = [float(e) for e in cme.mem_energy_breakdown[op]]
        out.append({"name": cme.layer.name, "mac_energy_pj": float(cme.mac_energy),
                    "mem_energy_pj": float(cme.mem_energy), "energy_pj": float(cme.energy_total),
                    "n_mac": int(cme.layer.total_mac_count), "latency_cycles": float(cme.latency_total2),
                    "temporal_mapping": str(cme.temporal_mapping), "operands": ops})
    Path(sys.argv[2]).write_text(json.dumps({"seconds": seconds, "layers": out}, indent=1))


if __name__ == "__main__":
    main()
