"""Mixed precision for a prepared model: measure, allocate, lower, verify on the hardware model.

    tables = mixed_tables(prep, cfg, accel, calib_batches, toggle_x)     # once per model
    plan = plan_mixed(prep, cfg, accel, calib_batches, toggle_x, policy="budget", budget=0.6,
                      tables=tables)
    plan.cfg              # QuantConfig with layer_bits {layer: [b, b]}
    plan.achieved_ratio   # energy of the lowered mixed program / W8A8, from hwmodel

A candidate width b means W_b A_b for that MAC layer (weights and its input activation).

Per-layer energy E_l(b)
-----------------------
The uniform program at each candidate width is lowered (``pipeline.quantize``), run on
``toggle_x`` by integer_ref (real operands for the toggle-aware MAC energy) and simulated by
hwmodel; the detailed model's ``e_total_pj`` per IR node is then attributed:

- a MAC node's own energy goes to that layer;
- a non-MAC node (residual add, pooling, option-A shortcut slice/pad, the input quantizer)
  moves tensors whose width is decided by the ``a_bits`` of the MAC layers that consume
  them (``lower.tensor_bits``: a tensor is as wide as its widest reader, and an add or pool
  passes the demand of its own readers back to its inputs). Its energy goes to the tie group
  of those deciding layers (below), so it moves with the width that really sets it;
- a node whose width no MAC layer decides (e.g. one whose output is the network output,
  held at ``out_bits``) is *fixed*: its W8A8 energy is a constant part of the budget.

So Σ_l E_l(b) + fixed is exactly the uniform-b program's energy, and for a mixed program it
is exact except at boundaries between widths: a layer's output is written at its readers'
width, not its own, and operand toggles change with the widths. ``plan_mixed`` therefore
lowers and simulates the chosen program and reports the achieved energy beside the
planned one; with the budget policy it re-solves with the budget tightened by the
overshoot when the achieved energy exceeds the budget, and loosened by the slack when it leaves
more than 0.5% of the budget unused (``refinements``; the last plan that met the budget is kept).
With a learned method (GPTQ, AdaRound, block reconstruction) the refinements price each
allocation on its round-to-nearest program, as the tables do, and the method runs once, on the
plan chosen; only if that program overshoots the budget does the refinement go on with the
method's own programs.

Ties
----
One tensor has one format in the buffers and in DRAM: the array has no requantizer on its
read path, and the residual adder reads both operands and writes its output in the format
of the stream. So every MAC layer that reads one tensor (directly, or through adds and
pools that pass the demand on) reads it at one width. ``lower`` resolves disagreements by
taking the widest, which would silently raise the input width of a layer the allocator set
lower, and make planned energy and accuracy wrong. The allocator therefore ties those
layers: in a CIFAR ResNet the first conv of every block and the final linear layer read the
one residual stream, so they share a width; the second convs and the stem are free.
Weights are not tied (each layer holds its own), but a candidate width sets both, so
tied layers share weight widths too; untying the weight width is left for later.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from quantsim.graph.capture import PASSTHROUGH_OPS, FloatGraph
from quantsim.quant.config import QuantConfig
from quantsim.errors import QuantsimError
from quantsim.emulate.executor import EmulatedModel
from quantsim.mixed.allocate import (Allocation, InfeasibleBudget, _width_json, allocate_budget, allocate_threshold,
                                     budget_frontier, merge_groups, split_width, width_order)
from quantsim.mixed.sensitivity import JointError, layer_sensitivity
from quantsim.run import hardware, stages as pipeline
from quantsim.zoo.metrics import hits

FIXED = "<fixed>"  # owner of energy no MAC layer's width decides
MAX_REFINEMENTS = 4
LOOSEN_RTOL = 0.005  # budget left unused above this share of it makes the policy re-solve
ADMIT_RTOL = 1e-4  # planned vs achieved energy differ by ~1e-5 of the total at width boundaries (measured)


# --------------------------------------------------------------------------- structure


def _root(g: FloatGraph, name: str) -> str:
    n = g[name]
    while n.op in PASSTHROUGH_OPS:
        n = g[n.inputs[0]]
    return n.name


def fixed_demand(n, cfg: QuantConfig | None) -> int | None:
    """The input width a non-MAC reader asks for whatever the allocation (lower.tensor_bits):
    LayerNorm reads the residual stream at resid_bits, softmax and GELU read at
    nonlinear_in_bits, and the attention matmuls (not allocated: no weights) at the base
    a_bits. None for ops that pass their readers' demand on (adds, pools)."""
    if n.op == "layernorm":
        return cfg.resid_bits if cfg else 16
    if n.op in ("softmax", "gelu"):
        return cfg.nonlinear_in_bits if cfg else 16
    if n.op == "matmul":
        return cfg.a_bits if cfg else 8
    return None


def width_deciders(g: FloatGraph, cfg: QuantConfig | None = None, widest: int = 8) -> dict[str, frozenset]:
    """For each requantizing tensor (a root, in lower's sense): the MAC layers whose a_bits
    decide its width (empty when only out_bits decides it: the network output; or when a
    reader with a fixed demand of at least ``widest``, the widest candidate, holds it wider
    than any allocation could: a ViT's residual stream read by LayerNorm at 16 bits)."""
    readers: dict[str, list[str]] = {}
    for n in g.nodes:
        if n.op in PASSTHROUGH_OPS or n.op == "input":
            continue
        for i in n.inputs:
            readers.setdefault(_root(g, i), []).append(n.name)
    out_root = _root(g, g.output)
    memo: dict[str, frozenset] = {}

    def deciders(root: str) -> frozenset:
        if root in memo:
            return memo[root]
        memo[root] = frozenset()  # (graphs are acyclic; guard anyway)
        s: set = set()
        pinned = False
        for r in readers.get(root, []):
            fixed = None if g[r].is_mac else fixed_demand(g[r], cfg)
            if fixed is not None:
                pinned |= fixed >= widest
            else:
                s |= {r} if g[r].is_mac else deciders(r)
        if root == out_root or pinned:
            s = set()  # held at out_bits or a fixed width (wider than any candidate), whoever reads it
        memo[root] = frozenset(s)
        return memo[root]

    return {n.name: deciders(n.name) for n in g.nodes if n.op not in PASSTHROUGH_OPS}


def tie_groups(g: FloatGraph, cfg: QuantConfig | None = None, widest: int = 8) -> list[list[str]]:
    """MAC layers that must share a width (see the module doc), each group in graph order;
    groups overlap-merged; single layers are left out."""
    layers = [n.name for n in g.mac_nodes()]
    groups = merge_groups(layers, [sorted(ds, key=layers.index) for ds in width_deciders(g, cfg, widest).values()])
    return [m for m in groups if len(m) > 1]


def module_groups(g: FloatGraph) -> list[list[str]]:
    """MAC layers grouped by the module that holds them (the name less its last part):
    a ViT block's MSA (qkv, proj) and MLP (fc1, fc2), a ResNet's residual block. With
    ``unit='module'`` each group takes one width: per-module mixed precision (Liu et al. 2021
    allocate per MSA/MLP module by their nuclear-norm-weighted sensitivity)."""
    groups: dict[str, list[str]] = {}
    for n in g.mac_nodes():
        groups.setdefault(n.name.rpartition(".")[0] or n.name, []).append(n.name)
    return [v for v in groups.values() if len(v) > 1]


def energy_owners(g: FloatGraph, ir_names: list[str], tied: list[list[str]], cfg: QuantConfig | None = None,
                  widest: int = 8) -> dict[str, str]:
    """IR node -> the MAC layer its energy is attributed to (or FIXED). A non-MAC node goes
    to the first layer of the deciding group of the tensor it writes."""
    deciders = width_deciders(g, cfg, widest)
    lead = {l: grp[0] for grp in tied for l in grp}
    order = {n.name: i for i, n in enumerate(g.nodes)}
    owners = {}
    for name in ir_names:
        fname = name[: -len(".slice")] if name.endswith(".slice") and name not in g.index else name
        if fname not in g.index:
            owners[name] = FIXED
            continue
        fn = g[fname]
        if fn.is_mac:
            owners[name] = fname
            continue
        ds = deciders.get(_root(g, fname), frozenset())
        if not ds:
            owners[name] = FIXED
        else:
            first = min(ds, key=order.__getitem__)
            owners[name] = lead.get(first, first)
    return owners


# --------------------------------------------------------------------------- tables


@dataclass
class MixedTables:
    """Everything the allocation needs, measured once per model and reused across policies
    and budgets."""

    candidates: tuple[int, ...]
    layers: list[str]
    sensitivity: dict[str, dict[int, float]]
    energy: dict[str, dict[int, float]]        # attributed detailed energy, pJ per image
    seed_energy: dict[str, dict[int, float]]   # same attribution, seed model
    own_energy: dict[str, dict[int, float]]    # the MAC node's own e_total_pj only
    fixed_pj: float
    fixed_seed_pj: float
    w8a8_pj: float
    w8a8_seed_pj: float
    uniform_pj: dict[int, float]               # whole uniform-b program, pJ
    tied: list[list[str]]
    owners: dict[str, str]
    sens_at: str
    weighting: str
    mac_form: str
    seconds: dict[str, float] = field(default_factory=dict)
    unit: str = "layer"                        # layer | module (one width per module)
    joint: object = field(default=None, repr=False)  # sensitivity.JointError, made on first re-ranking


def _hw_for(prep, cfg: QuantConfig, accel, toggle_x: torch.Tensor, mac_form: str):
    graph = pipeline.quantize(prep, cfg)
    taps = pipeline.integer_taps(graph, toggle_x)
    return graph, hardware.simulate(graph, taps, accel, len(toggle_x), mac_form)


def _uniform_cfg(base: QuantConfig, b) -> QuantConfig:
    w, a = split_width(b)
    d = base.to_json()
    d.update(w_bits=w, a_bits=a, layer_bits={})
    return QuantConfig.from_json(d)


def _energy_table_cfg(base: QuantConfig) -> QuantConfig:
    """The config whose uniform programs price each width: base with round-to-nearest weights.
    A width's energy does not depend on how its weights were rounded beyond the operand toggles,
    and learned rounding (GPTQ, AdaRound, block reconstruction) at every candidate width would cost
    several reconstructions before the plan is made; the plan's own program (verified below) is
    quantized with base's rounding."""
    return base if base.rounding == "nearest" else base.round_to_nearest()


def mixed_tables(prep, base_cfg: QuantConfig, accel, calib_batches: list[torch.Tensor], toggle_x: torch.Tensor,
                 candidates=(4, 6, 8), sens_at: str = "layer", weighting: str = "none", mac_form: str = "max",
                 cache_dir: Path | None = None, progress: bool = True, tie: bool = True,
                 unit: str = "layer") -> MixedTables:
    # a candidate is b (W_b A_b) or a (w, a) pair; a pair with w == a is the int
    cands = tuple(sorted({w if w == a else (w, a) for w, a in map(split_width, candidates)}, key=width_order))
    if len(cands) < 1:
        raise QuantsimError("--candidates: give at least one width")
    for b in cands:
        _uniform_cfg(base_cfg, b)  # validates the width
    g = prep.fgraph
    layers = [n.name for n in g.mac_nodes()]
    t0 = time.perf_counter()
    sens = layer_sensitivity(g, prep.stats, calib_batches, base_cfg, cands, at=sens_at, weighting=weighting,
                             progress=progress, cache_dir=cache_dir)
    t1 = time.perf_counter()
    if unit not in ("layer", "module"):
        raise QuantsimError(f"--mixed-unit {unit!r}: choose layer or module")
    tied = tie_groups(g, base_cfg, max(split_width(b)[1] for b in cands)) if tie else []
    if unit == "module":  # one width per module, merged with the hardware ties
        layers_all = [n.name for n in g.mac_nodes()]
        tied = [m for m in merge_groups(layers_all, tied + module_groups(g)) if len(m) > 1]
    widths = sorted(set(cands) | {8}, key=width_order)
    hw = {}
    table_cfg = _energy_table_cfg(base_cfg)
    for b in widths:
        _, hw[b] = _hw_for(prep, _uniform_cfg(table_cfg, b), accel, toggle_x, mac_form)
    t2 = time.perf_counter()
    ir_names = [r["layer"] for r in hw[widths[0]].rows]
    owners = energy_owners(g, ir_names, tied, base_cfg, max(split_width(b)[1] for b in cands))
    energy = {l: {} for l in layers}
    seed = {l: {} for l in layers}
    own = {l: {} for l in layers}
    for b in cands:
        for l in layers:
            energy[l][b] = seed[l][b] = 0.0
        for r in hw[b].rows:
            o = owners[r["layer"]]
            if o == FIXED:
                continue
            energy[o][b] += float(r["e_total_pj"])
            seed[o][b] += float(r["e_seed_pj"])
            if r["layer"] == o:
                own[o][b] = float(r["e_total_pj"])
    fixed = math.fsum(float(r["e_total_pj"]) for r in hw[8].rows if owners[r["layer"]] == FIXED)
    fixed_seed = math.fsum(float(r["e_seed_pj"]) for r in hw[8].rows if owners[r["layer"]] == FIXED)
    return MixedTables(
        candidates=cands, layers=layers, sensitivity=sens, energy=energy, seed_energy=seed, own_energy=own,
        fixed_pj=fixed, fixed_seed_pj=fixed_seed,
        w8a8_pj=float(hw[8].totals["e_total_pj"]), w8a8_seed_pj=float(hw[8].totals["e_seed_pj"]),
        uniform_pj={b: float(hw[b].totals["e_total_pj"]) for b in widths}, tied=tied, owners=owners,
        sens_at=sens_at, weighting=weighting, mac_form=mac_form,
        seconds={"sensitivity": t1 - t0, "energy_tables": t2 - t1}, unit=unit)


# --------------------------------------------------------------------------- plan


@dataclass
class MixedPlan:
    cfg: QuantConfig
    allocation: Allocation
    tables: MixedTables
    policy: str
    budget: float | None          # ratio of W8A8 energy (budget policy)
    planned_pj: float             # Σ_l E_l(b_l) + fixed
    achieved_pj: float | None     # hwmodel on the lowered mixed program
    achieved_seed_pj: float | None
    refinements: int = 0
    graph: object = None
    hw: object = None
    rerank: dict | None = None    # the measured re-ranking of the budget policy's candidates

    @property
    def sensitivity(self):
        return self.tables.sensitivity

    @property
    def energy(self):
        return self.tables.energy

    @property
    def w8a8_pj(self) -> float:
        return self.tables.w8a8_pj

    @property
    def planned_ratio(self) -> float:
        return self.planned_pj / self.tables.w8a8_pj

    @property
    def achieved_ratio(self) -> float | None:
        return None if self.achieved_pj is None else self.achieved_pj / self.tables.w8a8_pj

    @property
    def widths(self) -> list:
        """Chosen width per layer, in layer order: b, or [w, a] for a pair."""
        return [_width_json(self.allocation.bits[l]) for l in self.tables.layers]

    def summary(self) -> dict:
        a = self.allocation
        return {
            "policy": self.policy,
            "budget": self.budget,
            "candidates": [_width_json(b) for b in self.tables.candidates],
            "sensitivity_at": self.tables.sens_at,
            "sensitivity_weighting": self.tables.weighting,
            "mixed_unit": self.tables.unit,
            "planned_energy_pj": self.planned_pj,
            "planned_energy_ratio": self.planned_ratio,
            "achieved_energy_pj": self.achieved_pj,
            "achieved_energy_ratio": self.achieved_ratio,
            "achieved_seed_ratio": (None if self.achieved_seed_pj is None
                                    else self.achieved_seed_pj / self.tables.w8a8_seed_pj),
            "fixed_energy_pj": self.tables.fixed_pj,
            "binding": a.binding,
            "budget_met": (None if self.budget is None or self.achieved_ratio is None
                           else self.achieved_ratio <= self.budget * (1 + 1e-9)),
            "solver": a.solver,
            "optimal": a.optimal,
            "solver_status": a.status,
            "refinements": self.refinements,
            "rerank": self.rerank,
            "total_sensitivity": a.total_sensitivity,
            "tied": self.tables.tied,
            "chosen_widths": self.widths,
            "layer_widths": {l: _width_json(self.allocation.bits[l]) for l in self.tables.layers},
        }


def _allocate(t: MixedTables, policy: str, budget_pj: float | None, thresholds) -> Allocation:
    if policy == "threshold":
        low, high = thresholds if thresholds else (None, None)
        return allocate_threshold(t.sensitivity, widths=t.candidates, energy=t.energy, tied=t.tied,
                                  low=low, high=high)
    try:
        return allocate_budget(t.sensitivity, t.energy, budget_pj, tied=t.tied, solver="dp")
    except InfeasibleBudget as exc:
        lowest = math.fsum(min(row.values()) for row in t.energy.values())
        raise QuantsimError(
            f"--energy-budget {(budget_pj + t.fixed_pj) / t.w8a8_pj:.4g} is infeasible: the least energy any "
            f"allocation of widths {','.join(map(str, map(_width_json, t.candidates)))} reaches is "
            f"{(lowest + t.fixed_pj) / t.w8a8_pj:.4f} of W8A8") from exc


def config_for(base_cfg: QuantConfig, bits: dict) -> QuantConfig:
    """The base config with one width (b or a (w, a) pair) per MAC layer."""
    d = base_cfg.to_json()
    d["layer_bits"] = {str(l): list(split_width(b)) for l, b in bits.items()}
    return QuantConfig.from_json(d)


def heldout_top1(prep, base_cfg: QuantConfig, bits: dict, labelled) -> float:
    """Top-1 (%) of the integer program of an allocation (lowered, run by emulate: what will be
    deployed, residual stream and all) on labelled (x, y) batches."""
    model = EmulatedModel(pipeline.quantize(prep, config_for(base_cfg, bits)))
    n_hits = total = 0
    with torch.no_grad():
        for x, y in labelled:
            n_hits += hits(model(x).argmax(1)[:, None], y, 1)
            total += len(y)
    return 100.0 * n_hits / max(total, 1)


def _rerank(prep, base_cfg: QuantConfig, t: MixedTables, alloc: Allocation, budget_pj: float, k: int,
            calib_batches, labelled=None, scored: dict | None = None) -> tuple[Allocation, dict]:
    """Choose among the allocations that meet the budget by a measurement of the whole
    allocation: without ``labelled``, the network-output error with all layers quantized at
    once (sensitivity.JointError on the calibration images); with ``labelled`` (x, y)
    batches held out from calibration, the top-1 of each allocation's integer program on them.

    Σ S_l is an additive proxy: per-layer errors do interact (a 4-bit stem feeds a 4-bit
    block). So the candidates are the k proxy-best allocations of the exact knapsack (its
    optimum first), the threshold rule's allocation and every uniform width, each only if
    its planned energy meets the budget; the one measuring best is kept. The knapsack's own
    optimum is the choice whenever it measures best (ties included). Held-out top-1 exists
    because on the CIFAR ResNets every output-error measure, joint error included, prefers an
    allocation that loses top-1 on held-out images (docs/pareto/notes.md)."""
    pool: list[tuple[str, dict]] = [(f"knapsack #{i + 1}", bits) for i, bits in
                                    enumerate(budget_frontier(t.sensitivity, t.energy, budget_pj, t.tied, k))]
    extra = [("threshold rule", allocate_threshold(t.sensitivity, widths=t.candidates, energy=t.energy,
                                                   tied=t.tied).bits)]
    extra += [("uniform W{}A{}".format(*split_width(b)), {l: b for l in t.layers}) for b in t.candidates]
    for src, bits in extra:
        # planned (attributed) energy may sit a hair above what the program achieves, e.g. the
        # threshold allocation at its own achieved energy: admit within ADMIT_RTOL and let
        # plan_mixed's verification of the achieved energy decide
        if math.fsum(t.energy[l][b] for l, b in bits.items()) <= budget_pj * (1 + ADMIT_RTOL):
            pool.append((src, bits))
    keyed: dict[tuple, tuple[str, dict]] = {}  # widths in layer order -> (source, bits), first source kept
    for src, bits in pool:
        keyed.setdefault(tuple(bits[l] for l in t.layers), (src, bits))
    uniq = list(keyed.values())
    if labelled is not None:
        metric = "heldout_top1"
        scored = {} if scored is None else scored  # widths -> held-out top-1, kept across re-solves
        for key, (_, bits) in keyed.items():
            if key not in scored:
                scored[key] = heldout_top1(prep, base_cfg, bits, labelled)
        scores = [scored[key] for key in keyed]
        best = max(range(len(uniq)), key=lambda i: (scores[i], -i))  # first of the best: the optimum on ties
    else:
        metric = "joint_error"
        if t.joint is None:
            t.joint = JointError(prep.fgraph, prep.stats, calib_batches, base_cfg)
        scores = [t.joint(bits) for _, bits in uniq]
        best = min(range(len(uniq)), key=scores.__getitem__)
    src, bits = uniq[best]
    info = {"candidates": len(uniq), "chosen": src, "metric": metric, metric: scores[best],
            f"knapsack_optimum_{metric}": scores[0],
            "all": [{"source": s_, metric: e_, "widths": [bits_[l] for l in t.layers]}
                    for (s_, bits_), e_ in zip(uniq, scores)]}
    if best == 0:
        return alloc, info
    total_s = math.fsum(t.sensitivity[l][b] for l, b in bits.items())
    total_e = math.fsum(t.energy[l][b] for l, b in bits.items())
    return replace(alloc, bits=dict(bits), total_sensitivity=total_s, total_energy=total_e,
                   status=alloc.status + f"; re-ranked by {metric.replace('_', ' ')}: {src}"), info


def plan_mixed(prep, base_cfg: QuantConfig, accel, calib_batches, toggle_x: torch.Tensor, candidates=(4, 6, 8),
               policy: str = "threshold", budget: float | None = None, sens_at: str = "layer",
               weighting: str = "none", mac_form: str = "max", cache_dir: Path | None = None,
               progress: bool = True, tables: MixedTables | None = None, thresholds=None,
               verify: bool = True, tie: bool = True, unit: str = "layer", rerank: int = 0,
               rerank_data=None) -> MixedPlan:
    """Choose a width per MAC layer (threshold rule, or least Σ S_l under an energy budget
    given as a ratio of W8A8 energy; with ``rerank`` k > 0 the budget policy then keeps, of
    the k proxy-best allocations and the threshold/uniform ones within the budget, the one
    of least measured output error, or of best top-1 on ``rerank_data``, labelled (x, y)
    batches held out from calibration: see _rerank), then lower and simulate the choice
    (``verify``)."""
    if policy not in ("threshold", "budget"):
        raise QuantsimError(f"mixed policy {policy!r}: choose threshold or budget")
    if policy == "budget":
        if budget is None or not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise QuantsimError(f"--energy-budget {budget!r}: give a positive ratio of W8A8 energy, e.g. 0.6")
    if not isinstance(rerank, int) or rerank < 0:
        raise QuantsimError(f"--rerank {rerank!r}: give a count of candidates (0 keeps the knapsack optimum)")
    if tables is None:
        tables = mixed_tables(prep, base_cfg, accel, calib_batches, toggle_x, candidates, sens_at, weighting,
                              mac_form, cache_dir, progress, tie, unit)
    t = tables
    target = None if policy == "threshold" else budget * t.w8a8_pj
    scored: dict = {}  # held-out top-1 of each allocation re-ranked so far (re-solves meet them again)

    def price(plan: MixedPlan, cfg: QuantConfig) -> None:
        """Lower the plan's widths with cfg and keep the program, its simulation and energies on the plan."""
        plan.graph, plan.hw = _hw_for(prep, cfg, accel, toggle_x, mac_form)
        plan.achieved_pj = float(plan.hw.totals["e_total_pj"])
        plan.achieved_seed_pj = float(plan.hw.totals["e_seed_pj"])

    def refine(price_cfg: QuantConfig, knap: float | None, refinements: int) -> tuple[MixedPlan, float | None]:
        """Solve, lower with price_cfg's rounding and simulate, re-solving while the program's
        energy misses the budget: (the plan, the knapsack budget it was solved for)."""
        best_fit = None  # the last verified plan that met the budget (loosening may overshoot)
        while True:
            alloc = _allocate(t, policy, knap, thresholds)
            info = None
            if policy == "budget" and rerank > 0:
                alloc, info = _rerank(prep, base_cfg, t, alloc, knap, rerank, calib_batches, rerank_data, scored)
            planned = math.fsum(t.energy[l][b] for l, b in alloc.bits.items()) + t.fixed_pj
            plan = MixedPlan(config_for(base_cfg, alloc.bits), alloc, t, policy, budget, planned, None, None,
                             refinements, rerank=info)
            if not verify:
                return plan, knap
            price(plan, config_for(price_cfg, alloc.bits))
            if target is None:
                return plan, knap
            over = plan.achieved_pj - target
            fits = over <= 1e-9 * abs(target)
            if fits:
                if best_fit is not None and plan.allocation.bits == best_fit[0].allocation.bits:
                    return best_fit
                best_fit = plan, knap
            elif best_fit is not None:
                return best_fit  # loosening overshot: keep the last plan that met the budget
            if refinements >= MAX_REFINEMENTS or (fits and -over <= LOOSEN_RTOL * target):
                return plan, knap
            # planned and achieved energy differ at width boundaries: the program costs more than
            # planned (tighten by the overshoot) or leaves budget unused (loosen by the slack,
            # so the allocation spends what it is given); re-solve and verify again
            moved = knap - over * (1.0001 if over > 0 else 0.9999)
            try:
                _allocate(t, policy, moved, thresholds)
            except QuantsimError:
                return plan, knap  # nothing cheaper exists: report the overshoot (budget_met false)
            knap = moved
            refinements += 1

    knap = None if target is None else target - t.fixed_pj
    nearest_cfg = _energy_table_cfg(base_cfg)
    if nearest_cfg is base_cfg or not verify:
        return refine(base_cfg, knap, 0)[0]
    # a learned method (GPTQ, AdaRound, a reconstruction per program): the refinements price each
    # allocation on its round-to-nearest program, as the tables price the widths, and the method
    # runs on the plan chosen; should that program cost more than the budget (learned clips and
    # codes move the operand toggles), the refinement goes on with the method's own programs
    plan, knap = refine(nearest_cfg, knap, 0)
    price(plan, plan.cfg)
    if target is None or plan.achieved_pj <= target * (1 + 1e-9) or plan.refinements >= MAX_REFINEMENTS:
        return plan
    moved = knap - (plan.achieved_pj - target) * 1.0001
    try:
        _allocate(t, policy, moved, thresholds)
    except QuantsimError:
        return plan  # nothing cheaper exists: report the overshoot (budget_met false)
    return refine(base_cfg, moved, plan.refinements + 1)[0]


def layer_columns(plan: MixedPlan) -> pd.DataFrame:
    """Per MAC layer: sensitivity per candidate, chosen width, tie group, planned energy."""
    t = plan.tables
    group_of = {l: i for i, grp in enumerate(t.tied) for l in grp}
    rows = []
    for l in t.layers:
        b = plan.allocation.bits[l]
        row = {"layer": l}
        for c in t.candidates:
            row[f"sens_w{c}" if isinstance(c, int) else f"sens_W{c[0]}A{c[1]}"] = t.sensitivity[l][c]
        row.update({"chosen_bits": b if isinstance(b, int) else f"W{b[0]}A{b[1]}", "tie_group": group_of.get(l),
                    "planned_e_pj": t.energy[l][b]})
        rows.append(row)
    return pd.DataFrame(rows)


def energy_share(hw) -> dict[str, float]:
    """Each IR node's share of the program's detailed energy."""
    tot = float(hw.totals["e_total_pj"]) or 1.0
    return {r["layer"]: float(r["e_total_pj"]) / tot for r in hw.rows}


def widths_table(plan: MixedPlan, hw) -> pd.DataFrame:
    """Per MAC layer: the plan's columns, the widths the program runs at, its energy and share."""
    rows = {r["layer"]: r for r in hw.rows}
    share = energy_share(hw)
    df = layer_columns(plan)
    df["w_bits"] = [int(rows[l]["w_bits"]) for l in df["layer"]]
    df["a_bits"] = [int(rows[l]["x_bits"]) for l in df["layer"]]
    df["e_total_pj"] = [float(rows[l]["e_total_pj"]) for l in df["layer"]]
    df["energy_share"] = [share[l] for l in df["layer"]]
    return df
