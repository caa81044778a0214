"""Mixed-precision bit allocation on tables: sensitivity and energy per layer and width.

Nothing here touches a model. The inputs are two tables, both keyed by layer and then by
candidate width:

- ``sensitivity[layer][width] = S_l(width)``, the relative output error with only that
  layer quantized (``quantsim.mixed.sensitivity`` measures it);
- ``energy[layer][width]`` in pJ, that layer's energy at that width on the chosen
  accelerator (``hwmodel.energy`` computes it).

A *width* is either an int ``b`` (weights and input activation both at b bits) or a pair
``(w_bits, a_bits)``; both kinds may be mixed freely, the code only uses them as keys
(and, for the threshold rule, orders them: see ``width_order``).

Two policies:

- ``allocate_threshold``: the seed's rule. Rank layers by their sensitivity at the lowest
  candidate width; the most sensitive third gets the widest width, the middle third the
  middle one, the least sensitive third the narrowest (tertiles by default, or absolute
  thresholds).
- ``allocate_budget``: minimise sum_l S_l(b_l) subject to sum_l E_l(b_l) <= budget, solved
  exactly. This is a multiple-choice knapsack; solver ``"dp"`` keeps, layer after layer,
  the Pareto set of (energy, cost) partial solutions, which is exact with no
  discretisation of the energy axis; solver ``"milp"`` hands the same problem to HiGHS
  through ``scipy.optimize.milp`` with a zero relative gap and checks its answer against
  the true constraint. HiGHS still stops within its absolute gap (1e-6 in the objective,
  which scipy does not expose), so "milp" may miss an improvement of total sensitivity
  smaller than that; "dp" has no such tolerance and is the default.

Tied layers: some layers must share one width because of how the hardware handles them.
The usual case is a residual add: its two inputs (the output of the block's last conv and
the shortcut) are summed element-wise by one adder that reads both operands from one
buffer in one format, so both producers must be quantized to the same width (otherwise
the adder needs a re-quantization step the accelerator does not have). ``tied`` lists such
groups; a group is allocated as one item whose cost and energy are the sums over its
members, restricted to the widths every member has. Groups that share a layer are merged.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from quantsim.errors import QuantsimError

Width = Any  # int | tuple[int, int]
Table = Mapping[Hashable, Mapping[Width, float]]

__all__ = [
    "Allocation",
    "InfeasibleBudget",
    "allocate_threshold",
    "allocate_budget",
    "uniform_energy",
    "split_width",
    "width_order",
]

# Relative tolerance of the energy constraint, for float round-off only (a sum of the same
# per-layer energies taken in another order may differ in the last bits).
_RTOL = 1e-12


class InfeasibleBudget(QuantsimError, ValueError):
    """The energy budget is below the least energy any allocation can reach."""


# --------------------------------------------------------------------------- widths


def _norm_width(b: Any) -> Width:
    """An int width or a (w_bits, a_bits) pair, validated; numpy ints become ints."""
    if isinstance(b, numbers.Integral) and not isinstance(b, bool):
        if int(b) <= 0:
            raise ValueError(f"bit width must be positive, got {b!r}")
        return int(b)
    if isinstance(b, tuple) and len(b) == 2 and all(
        isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in b
    ):
        if min(b) <= 0:
            raise ValueError(f"bit widths must be positive, got {b!r}")
        return (int(b[0]), int(b[1]))
    raise ValueError(f"a width is an int or a (w_bits, a_bits) pair, got {b!r}")


def split_width(b: Width) -> tuple[int, int]:
    """(w_bits, a_bits) of a width: an int b means (b, b)."""
    b = _norm_width(b)
    return (b, b) if isinstance(b, int) else b


def width_order(b: Width) -> tuple[int, int, int, int]:
    """Sort key, narrowest first: by the larger of the two widths (it dominates the
    multiplier), then by their sum, then weights, then activations. 8 and (8, 8) tie."""
    w, a = split_width(b)
    return (max(w, a), w + a, w, a)


def _width_json(b: Width) -> Any:
    return list(b) if isinstance(b, tuple) else b


# --------------------------------------------------------------------------- tables


def _check_table(name: str, table: Table) -> dict[Hashable, dict[Width, float]]:
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"{name} must be a non-empty dict layer -> {{width: value}}")
    out: dict[Hashable, dict[Width, float]] = {}
    for layer, row in table.items():
        if not isinstance(row, Mapping) or not row:
            raise ValueError(f"{name}[{layer!r}] must be a non-empty dict width -> value")
        clean: dict[Width, float] = {}
        for b, v in row.items():
            nb = _norm_width(b)
            if nb in clean:
                raise ValueError(f"{name}[{layer!r}] names width {nb!r} twice")
            fv = float(v)
            if not math.isfinite(fv):
                raise ValueError(f"{name}[{layer!r}][{b!r}] is not finite: {v!r}")
            clean[nb] = fv
        out[layer] = clean
    return out


def merge_groups(layers: Sequence[Hashable], tied: Iterable[Iterable[Hashable]] | None) -> list[list[Hashable]]:
    """Partition the layers into allocation items: tied groups merged where they overlap
    (union-find), every other layer alone. Items follow the layers' order."""
    parent = {l: l for l in layers}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for group in tied or ():
        group = list(group)
        for l in group:
            if l not in parent:
                raise ValueError(f"tied layer {l!r} is not in the sensitivity table")
        for a, b in zip(group, group[1:]):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra
    items: dict[Hashable, list[Hashable]] = {}
    for l in layers:
        items.setdefault(find(l), []).append(l)
    return list(items.values())


def _common_widths(group: list[Hashable], sens: dict) -> list[Width]:
    common = set(sens[group[0]])
    for l in group[1:]:
        common &= set(sens[l])
    if not common:
        raise ValueError(f"tied layers {group!r} share no candidate width")
    return sorted(common, key=width_order)


def uniform_energy(energy: Table, width: Width = 8) -> float:
    """Energy of the whole network with every layer at ``width`` (e.g. the W8A8 reference
    a budget ratio multiplies). Every layer must have that width."""
    e = _check_table("energy", energy)
    w = _norm_width(width)
    missing = [l for l, row in e.items() if w not in row]
    if missing:
        raise ValueError(f"energy has no width {w!r} for layers {missing!r}")
    return math.fsum(row[w] for row in e.values())


# --------------------------------------------------------------------------- result


@dataclass
class Allocation:
    """A chosen width per layer and what it costs.

    ``binding`` (budget policy only) is True when the energy constraint is active: the
    allocation that minimises sensitivity with no budget (lowest energy among ties) would
    exceed the budget, so the budget made the result less accurate than it could be.
    ``slack_pj`` = budget - total_energy is reported beside it.
    """

    policy: str                      # "threshold" or "budget"
    bits: dict                       # layer -> width (int or (w_bits, a_bits))
    total_sensitivity: float
    total_energy: float | None       # pJ; None when no energy table was given
    budget: float | None = None      # pJ
    binding: bool | None = None
    solver: str = ""
    optimal: bool = False
    status: str = ""
    gap: float | None = None         # relative optimality gap reported by the solver
    min_energy: float | None = None  # least achievable energy (every item at its cheapest)
    unconstrained_energy: float | None = None  # energy of the best allocation without a budget
    groups: list = field(default_factory=list)  # allocation items (tied groups), in order

    @property
    def slack_pj(self) -> float | None:
        if self.budget is None or self.total_energy is None:
            return None
        return self.budget - self.total_energy

    @property
    def w_bits(self) -> dict:
        return {l: split_width(b)[0] for l, b in self.bits.items()}

    @property
    def a_bits(self) -> dict:
        return {l: split_width(b)[1] for l, b in self.bits.items()}

    def layer_bits(self) -> dict[str, list[int]]:
        """{layer name: [w_bits, a_bits]}: the shape of ``QuantConfig.layer_bits``."""
        return {str(l): list(split_width(b)) for l, b in self.bits.items()}

    def widths(self) -> list:
        """Chosen widths in layer order, JSON-ready (pairs as lists)."""
        return [_width_json(b) for b in self.bits.values()]

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "solver": self.solver,
            "optimal": bool(self.optimal),
            "status": self.status,
            "gap": self.gap,
            "budget_pj": self.budget,
            "total_energy_pj": self.total_energy,
            "slack_pj": self.slack_pj,
            "binding": self.binding,
            "min_energy_pj": self.min_energy,
            "unconstrained_energy_pj": self.unconstrained_energy,
            "total_sensitivity": self.total_sensitivity,
            "layers": [
                {"layer": str(l), "width": _width_json(b),
                 "w_bits": split_width(b)[0], "a_bits": split_width(b)[1]}
                for l, b in self.bits.items()
            ],
            "tied": [[str(l) for l in g] for g in self.groups if len(g) > 1],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _totals(bits: dict, sens: dict, energy: dict | None) -> tuple[float, float | None]:
    s = math.fsum(sens[l][b] for l, b in bits.items())
    e = None if energy is None else math.fsum(energy[l][b] for l, b in bits.items())
    return s, e


# --------------------------------------------------------------------------- threshold


def allocate_threshold(
    sensitivity: Table,
    ref_bits: Width | None = None,
    low: float | None = None,
    high: float | None = None,
    widths: Sequence[Width] = (4, 6, 8),
    energy: Table | None = None,
    tied: Iterable[Iterable[Hashable]] | None = None,
) -> Allocation:
    """The seed's rule: high sensitivity -> widest width, moderate -> middle, low -> narrowest.

    The score of a layer is S_l(ref_bits); ``ref_bits`` defaults to the narrowest of
    ``widths`` (the width where layers differ most). By default layers are split by rank
    into ``len(widths)`` equal groups (tertiles for three widths; when the count does not
    divide, the more sensitive groups get the extra layer, and layers with equal scores
    always share the wider group). With ``low`` and ``high`` (three widths only) the split is
    absolute: score >= high -> widths[2], low <= score < high -> widths[1], else widths[0].

    Layers whose table has a single width are pinned to it and not ranked. Tied groups get
    the widest width any member was given (the conservative choice). ``energy`` is optional
    and only used to report the total.
    """
    sens = _check_table("sensitivity", sensitivity)
    ens = _check_table("energy", energy) if energy is not None else None
    ws = sorted({_norm_width(w) for w in widths}, key=width_order)
    if len(ws) != len(list(widths)):
        raise ValueError(f"widths must be distinct, got {list(widths)!r}")
    ref = ws[0] if ref_bits is None else _norm_width(ref_bits)
    if (low is None) != (high is None):
        raise ValueError("give both thresholds (low and high) or neither")
    if low is not None:
        if len(ws) != 3:
            raise ValueError("absolute thresholds need exactly three widths")
        if not low <= high:
            raise ValueError(f"threshold low={low} must not exceed high={high}")

    bits: dict = {}
    ranked = []
    for l, row in sens.items():
        if len(row) == 1:
            bits[l] = next(iter(row))
            continue
        missing = [w for w in ws + [ref] if w not in row]
        if missing:
            raise ValueError(f"sensitivity[{l!r}] has no entry for widths {missing!r}")
        ranked.append(l)

    if low is not None:
        for l in ranked:
            s = sens[l][ref]
            bits[l] = ws[2] if s >= high else ws[1] if s >= low else ws[0]
        how = f"absolute thresholds low={low:g} high={high:g}"
    else:
        order = sorted(ranked, key=lambda l: -sens[l][ref])  # stable: table order on ties
        k, n = len(ws), len(order)
        group_of_score: dict[float, int] = {}
        for i, l in enumerate(order):
            g = group_of_score.setdefault(sens[l][ref], (i * k) // n)
            bits[l] = ws[k - 1 - g]
        how = f"rank groups of {k} ({'tertiles' if k == 3 else 'quantiles'})"

    items = merge_groups(list(sens), tied)
    for g in items:
        if len(g) > 1:
            common = _common_widths(g, sens)
            best = max((bits[l] for l in g), key=width_order)
            wider = [w for w in common if width_order(w) >= width_order(best)]
            bits[g[0]] = wider[0] if wider else common[-1]
            for l in g[1:]:
                bits[l] = bits[g[0]]
    if ens is not None:
        for l, b in bits.items():
            if l not in ens or b not in ens[l]:
                raise ValueError(f"energy has no entry for layer {l!r} at width {b!r}")
    bits = {l: bits[l] for l in sens}  # table order
    s, e = _totals(bits, sens, ens)
    return Allocation(
        policy="threshold", bits=bits, total_sensitivity=s, total_energy=e,
        solver="threshold", optimal=False,
        status=f"threshold rule on S_l({_width_json(ref)}), {how}",
        groups=items,
    )


# --------------------------------------------------------------------------- budget


def _items(sens, ens, tied):
    """Allocation items: (layers, widths, cost array, energy array) per group."""
    layers = list(sens)
    extra = [l for l in ens if l not in sens]
    if extra:
        raise ValueError(f"energy names layers the sensitivity table lacks: {extra!r}")
    for l in layers:
        if l not in ens:
            raise ValueError(f"energy has no entry for layer {l!r}")
        missing = [b for b in sens[l] if b not in ens[l]]
        if missing:
            raise ValueError(f"energy[{l!r}] has no entry for widths {missing!r}")
    out = []
    for g in merge_groups(layers, tied):
        ws = _common_widths(g, sens) if len(g) > 1 else sorted(sens[g[0]], key=width_order)
        cost = np.array([math.fsum(sens[l][b] for l in g) for b in ws])
        en = np.array([math.fsum(ens[l][b] for l in g) for b in ws])
        out.append((g, ws, cost, en))
    return out


def _feasible(e: float, budget: float) -> bool:
    return e <= budget + _RTOL * max(abs(budget), 1e-300)


def _solve_dp(items, budget, n_best: int = 1):
    """Exact multiple-choice knapsack by Pareto lists.

    After item i, keep every partial choice that is not dominated (no other partial choice
    with energy <= and cost <=, one strictly) and that can still meet the budget with the
    cheapest widths for the remaining items. The optimum's prefix is never dominated,
    so the optimum survives. Returns (choice index per item, number of states at most);
    with ``n_best`` > 1, a list of up to ``n_best`` feasible choices, least cost first (the
    proxy-best allocations: the budget end of the final Pareto list).
    """
    min_rest = np.concatenate([np.cumsum([it[3].min() for it in items][::-1])[::-1][1:], [0.0]])
    limit = budget + _RTOL * max(abs(budget), 1e-300)
    E = np.zeros(1)
    C = np.zeros(1)
    back = []  # per item: (parent index, option index) arrays
    peak = 1
    for i, (_, _, cost, en) in enumerate(items):
        k = len(cost)
        E2 = (E[:, None] + en[None, :]).ravel()
        C2 = (C[:, None] + cost[None, :]).ravel()
        parent = np.repeat(np.arange(len(E)), k)
        opt = np.tile(np.arange(k), len(E))
        ok = E2 + min_rest[i] <= limit
        E2, C2, parent, opt = E2[ok], C2[ok], parent[ok], opt[ok]
        order = np.lexsort((C2, E2))  # by energy, then cost
        E2, C2, parent, opt = E2[order], C2[order], parent[order], opt[order]
        prev_min = np.minimum.accumulate(np.concatenate([[np.inf], C2[:-1]]))
        keep = C2 < prev_min
        E, C = E2[keep], C2[keep]
        back.append((parent[keep], opt[keep]))
        peak = max(peak, len(E))
        if len(E) == 0:  # cannot happen once feasibility was checked; guard anyway
            raise InfeasibleBudget("no allocation meets the energy budget")
    # The last list is sorted by energy with strictly decreasing cost: the best is last
    # among those that really meet the budget once summed exactly.
    found = []
    for j in range(len(E) - 1, -1, -1):
        choice = [0] * len(items)
        idx = j
        for i in range(len(items) - 1, -1, -1):
            p, o = back[i]
            choice[i] = int(o[idx])
            idx = int(p[idx])
        e = math.fsum(items[i][3][c] for i, c in enumerate(choice))
        if _feasible(e, budget):
            if n_best == 1:
                return choice, peak
            found.append(choice)
            if len(found) == n_best:
                break
    if found:
        return found, peak
    raise InfeasibleBudget("no allocation meets the energy budget")


def budget_frontier(sensitivity: Table, energy: Table, budget_pj: float, tied=None, k: int = 8) -> list[dict]:
    """Up to ``k`` allocations (layer -> width) meeting the budget, least total sensitivity
    first: the exact optimum, then the next points of the Pareto list below the budget
    (each of less energy and more total sensitivity). The candidates a measured re-ranking
    chooses among (quantsim.mixed.plan)."""
    sens = _check_table("sensitivity", sensitivity)
    ens = _check_table("energy", energy)
    items = _items(sens, ens, tied)
    choices, _ = _solve_dp(items, float(budget_pj), n_best=max(2, int(k)))
    out = []
    for choice in choices[:k]:
        by_layer = {l: ws[c] for (g, ws, _, _), c in zip(items, choice) for l in g}
        out.append({l: by_layer[l] for l in sens})
    return out


def _solve_milp(items, budget, time_limit):
    from scipy.optimize import Bounds, LinearConstraint, milp  # deferred: only the MILP solver path needs scipy
    from scipy.sparse import lil_matrix  # deferred: only the MILP solver path needs scipy

    cost = np.concatenate([it[2] for it in items])
    en = np.concatenate([it[3] for it in items])
    n, m = len(cost), len(items)
    pick = lil_matrix((m, n))
    start = 0
    for g, it in enumerate(items):
        pick[g, start:start + len(it[2])] = 1.0
        start += len(it[2])
    scale = float(np.max(np.abs(en))) or 1.0  # energy row scaled to O(1) for HiGHS
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    rhs = budget / scale
    res = None
    for _ in range(8):
        res = milp(
            c=cost,
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            constraints=[LinearConstraint(pick.tocsr(), 1, 1),
                         LinearConstraint(en[None, :] / scale, -np.inf, rhs)],
            options=options,
        )
        if res.x is None:
            return None, res
        x = np.asarray(res.x)
        choice = []
        start = 0
        for it in items:
            k = len(it[2])
            choice.append(int(np.argmax(x[start:start + k])))
            start += k
        e = math.fsum(items[i][3][c] for i, c in enumerate(choice))
        if _feasible(e, budget):
            return choice, res
        # HiGHS met the row within its feasibility tolerance but not exactly: tighten the
        # row by the violation and solve again.
        rhs -= (e - budget) / scale + 1e-9
    return None, res


def allocate_budget(
    sensitivity: Table,
    energy: Table,
    budget_pj: float,
    tied: Iterable[Iterable[Hashable]] | None = None,
    solver: str = "dp",
    time_limit: float | None = None,
) -> Allocation:
    """Minimise sum_l S_l(b_l) subject to sum_l E_l(b_l) <= budget_pj, exactly.

    Each layer (or tied group) picks one of its candidate widths. ``solver="dp"`` is the
    exact Pareto-list dynamic programme; ``"milp"`` uses scipy.optimize.milp (HiGHS) with
    binary x_{item,width}, one-hot per item, and reports HiGHS's status and gap. Among
    allocations of equal total sensitivity the DP returns the one of least energy.

    Raises ``InfeasibleBudget`` (a ValueError) when even the cheapest allocation exceeds the
    budget, with the minimum achievable energy in the message.
    """
    if solver not in ("dp", "milp"):
        raise ValueError(f"solver must be 'dp' or 'milp', got {solver!r}")
    budget = float(budget_pj)
    if not math.isfinite(budget):
        raise ValueError(f"energy budget must be finite, got {budget_pj!r}")
    sens = _check_table("sensitivity", sensitivity)
    ens = _check_table("energy", energy)
    items = _items(sens, ens, tied)

    min_e = math.fsum(float(it[3].min()) for it in items)
    if not _feasible(min_e, budget):
        raise InfeasibleBudget(
            f"energy budget {budget:.6g} pJ is infeasible: the minimum achievable energy "
            f"is {min_e:.6g} pJ (every layer at its lowest-energy width)"
        )
    # Best allocation with no budget: least cost per item, least energy among ties.
    free = [int(np.lexsort((it[3], it[2]))[0]) for it in items]
    free_e = math.fsum(items[i][3][c] for i, c in enumerate(free))

    gap = None
    if solver == "dp":
        choice, peak = _solve_dp(items, budget)
        optimal = True
        status = f"optimal (exact Pareto-list DP, at most {peak} partial solutions kept)"
        gap = 0.0
    else:
        choice, res = _solve_milp(items, budget, time_limit)
        gap = getattr(res, "mip_gap", None)
        gap = None if gap is None else float(gap)
        if choice is None:
            raise RuntimeError(f"MILP solver found no allocation: status {res.status}, {res.message}")
        optimal = res.status == 0
        status = f"HiGHS status {res.status}: {res.message}" + (
            f"; relative gap {gap:.3g}" if gap is not None else "")

    bits_by_layer = {}
    for (g, ws, _, _), c in zip(items, choice):
        for l in g:
            bits_by_layer[l] = ws[c]
    bits = {l: bits_by_layer[l] for l in sens}
    s, e = _totals(bits, sens, ens)
    return Allocation(
        policy="budget", bits=bits, total_sensitivity=s, total_energy=e, budget=budget,
        binding=not _feasible(free_e, budget), solver=solver, optimal=bool(optimal),
        status=status, gap=gap, min_energy=min_e, unconstrained_energy=free_e,
        groups=[it[0] for it in items],
    )
