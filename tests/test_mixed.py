"""quantsim.mixed.allocate: bit allocation on sensitivity/energy tables, checked against brute force."""
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantsim.errors import QuantsimError
from quantsim.mixed.allocate import (budget_frontier, Allocation, InfeasibleBudget, allocate_budget, allocate_threshold, split_width, uniform_energy, width_order)

SOLVERS = ("dp", "milp")


def brute_force(sens, energy, budget, tied=None):
    """Least total sensitivity over every tie-consistent allocation within the budget;
    None when there is none."""
    layers = list(sens)
    best = None
    for combo in itertools.product(*(list(sens[l]) for l in layers)):
        bits = dict(zip(layers, combo))
        if any(len({bits[l] for l in g}) > 1 for g in tied or ()):
            continue
        if sum(energy[l][b] for l, b in bits.items()) > budget:
            continue
        s = math.fsum(sens[l][b] for l, b in bits.items())
        if best is None or s < best:
            best = s
    return best


WIDTH_POOL = [4, 6, 8, (4, 8), (8, 4)]


@st.composite
def instances(draw, with_ties=False):
    n = draw(st.integers(1, 6))
    layers = [f"L{i}" for i in range(n)]
    sens, energy = {}, {}
    for l in layers:
        ws = draw(st.lists(st.sampled_from(WIDTH_POOL), min_size=2, max_size=3, unique=True))
        sens[l] = {w: draw(st.floats(0, 1, allow_nan=False)) for w in ws}
        # integer-valued energies: sums are exact, so "within budget" has one meaning
        energy[l] = {w: float(draw(st.integers(0, 50))) for w in ws}
    tied = None
    if with_ties and n >= 2:
        tied = draw(st.lists(
            st.lists(st.sampled_from(layers), min_size=2, max_size=3, unique=True),
            min_size=1, max_size=2))
    exact = sum(energy[l][draw(st.sampled_from(list(energy[l])))] for l in layers)
    budget = draw(st.one_of(
        st.just(exact),
        st.integers(-10, 330).map(lambda k: k / 2),
    ))
    return sens, energy, budget, tied


def _check_against_brute(sens, energy, budget, tied, solver):
    best = brute_force(sens, energy, budget, tied)
    if best is None:
        with pytest.raises(ValueError):
            allocate_budget(sens, energy, budget, tied=tied, solver=solver)
        return
    a = allocate_budget(sens, energy, budget, tied=tied, solver=solver)
    assert a.optimal
    assert set(a.bits) == set(sens)
    assert all(a.bits[l] in sens[l] for l in sens)
    for g in tied or ():
        assert len({a.bits[l] for l in g}) == 1
    e = sum(energy[l][b] for l, b in a.bits.items())
    assert e <= budget
    assert a.total_energy == pytest.approx(e)
    assert a.total_sensitivity == pytest.approx(math.fsum(sens[l][b] for l, b in a.bits.items()))
    # DP is exact; HiGHS stops within its absolute MIP gap (1e-6, not settable through
    # scipy.optimize.milp), so it may miss an improvement smaller than that.
    assert a.total_sensitivity == pytest.approx(best, abs=1e-9 if solver == "dp" else 2e-6)


@pytest.mark.parametrize("solver", SOLVERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances())
def test_knapsack_equals_brute_force(solver, inst):
    _check_against_brute(*inst, solver)


@pytest.mark.parametrize("solver", SOLVERS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(with_ties=True))
def test_knapsack_with_ties_equals_brute_force(solver, inst):
    _check_against_brute(*inst, solver)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(with_ties=True), k=st.integers(1, 5))
def test_budget_frontier_is_the_optimum_then_nondominated_alternatives(inst, k):
    sens, energy, budget, tied = inst
    best = brute_force(sens, energy, budget, tied)
    if best is None:
        with pytest.raises(ValueError):
            budget_frontier(sens, energy, budget, tied, k)
        return
    front = budget_frontier(sens, energy, budget, tied, k)
    assert 1 <= len(front) <= k
    cost = [math.fsum(sens[l][b] for l, b in bits.items()) for bits in front]
    en = [math.fsum(energy[l][b] for l, b in bits.items()) for bits in front]
    assert cost[0] == pytest.approx(best, abs=1e-9)
    assert cost == sorted(cost) and all(e <= budget for e in en)
    for bits in front:
        assert set(bits) == set(sens)
        for g in tied or ():
            assert len({bits[l] for l in g}) == 1
    # each alternative spends less energy than the cheaper-in-sensitivity ones before it
    # (else it would be dominated and the Pareto list would have dropped it)
    assert all(en[i + 1] < en[i] for i in range(len(en) - 1))


def _monotone_tables(n=7, widths=(4, 6, 8), seed=0):
    """Sensitivity falling and energy rising with width, like real layers."""
    rng = np.random.default_rng(seed)
    sens, energy = {}, {}
    for i in range(n):
        base, macs = rng.uniform(0.1, 1.0), rng.uniform(1e5, 1e7)
        sens[f"conv{i}"] = {b: base * 2.0 ** (-b) for b in widths}
        energy[f"conv{i}"] = {b: macs * 0.2 * (b / 8) ** 2 + macs * 0.05 * b for b in widths}
    return sens, energy


@pytest.mark.parametrize("solver", SOLVERS)
def test_budget_admitting_all_8_picks_all_8(solver):
    sens, energy = _monotone_tables()
    w8a8 = uniform_energy(energy, 8)
    for budget in (w8a8, 1.5 * w8a8):
        a = allocate_budget(sens, energy, budget, solver=solver)
        assert set(a.bits.values()) == {8}
        assert a.binding is False
        assert a.total_energy == pytest.approx(w8a8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_minimum_budget_picks_all_lowest(solver):
    sens, energy = _monotone_tables()
    e4 = uniform_energy(energy, 4)
    a = allocate_budget(sens, energy, e4, solver=solver)
    assert set(a.bits.values()) == {4}
    assert a.binding is True
    assert a.min_energy == pytest.approx(e4)
    assert a.slack_pj == pytest.approx(0.0, abs=1e-6 * e4)


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_budget_is_one_clear_line(solver):
    sens, energy = _monotone_tables()
    e4 = uniform_energy(energy, 4)
    with pytest.raises(ValueError) as exc:
        allocate_budget(sens, energy, 0.99 * e4, solver=solver)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "minimum achievable energy" in msg
    assert f"{e4:.6g}" in msg
    assert isinstance(exc.value, InfeasibleBudget)
    assert isinstance(exc.value, QuantsimError)  # the CLI shows it as one line


@pytest.mark.parametrize("solver", SOLVERS)
def test_binding_budget_uses_the_energy(solver):
    sens, energy = _monotone_tables(n=12)
    budget = 0.6 * uniform_energy(energy, 8)
    a = allocate_budget(sens, energy, budget, solver=solver)
    assert a.binding is True
    assert a.total_energy <= budget
    assert len(set(a.bits.values())) > 1  # a real mix
    # no single-layer upgrade to a less sensitive width fits the remaining slack
    for l, b in a.bits.items():
        for b2 in sens[l]:
            if sens[l][b2] < sens[l][b]:
                assert energy[l][b2] - energy[l][b] > a.slack_pj


@pytest.mark.parametrize("solver", SOLVERS)
def test_tied_group_shares_one_width(solver):
    # Alone, "a" would go to 8 and "b" to 4; tied (residual add: one buffer format) they
    # must agree.
    sens = {"a": {4: 1.0, 8: 0.0}, "b": {4: 0.1, 8: 0.09}, "c": {4: 0.5, 8: 0.0}}
    energy = {l: {4: 1.0, 8: 4.0} for l in sens}
    free = allocate_budget(sens, energy, 9.0, solver=solver)
    assert free.bits == {"a": 8, "b": 4, "c": 8}
    a = allocate_budget(sens, energy, 9.0, tied=[["a", "b"]], solver=solver)
    assert a.bits["a"] == a.bits["b"]
    assert a.total_sensitivity == pytest.approx(brute_force(sens, energy, 9.0, [["a", "b"]]))
    assert a.to_dict()["tied"] == [["a", "b"]]
    # overlapping groups merge into one
    m = allocate_budget(sens, energy, 100.0, tied=[["a", "b"], ["b", "c"]], solver=solver)
    assert len(set(m.bits.values())) == 1


def test_tied_errors():
    sens = {"a": {4: 1.0, 8: 0.0}, "b": {6: 0.1, 8: 0.0}, "c": {4: 0.2, 6: 0.1}}
    energy = {"a": {4: 1.0, 8: 4.0}, "b": {6: 2.0, 8: 4.0}, "c": {4: 1.0, 6: 2.0}}
    with pytest.raises(ValueError, match="not in the sensitivity table"):
        allocate_budget(sens, energy, 100.0, tied=[["a", "zz"]])
    with pytest.raises(ValueError, match="share no candidate width"):
        allocate_budget(sens, energy, 100.0, tied=[["a", "c"], ["c", "b"]])
    a = allocate_budget(sens, energy, 100.0, tied=[["a", "b"]])
    assert a.bits["a"] == a.bits["b"] == 8


def test_tables_are_validated():
    sens = {"a": {4: 1.0, 8: 0.0}}
    with pytest.raises(ValueError, match="no entry for widths"):
        allocate_budget(sens, {"a": {4: 1.0}}, 10.0)
    with pytest.raises(ValueError, match="no entry for layer"):
        allocate_budget({"a": {4: 1.0}, "b": {4: 1.0}}, {"a": {4: 1.0}}, 10.0)
    with pytest.raises(ValueError, match="not finite"):
        allocate_budget({"a": {4: float("nan")}}, {"a": {4: 1.0}}, 10.0)
    with pytest.raises(ValueError, match="solver"):
        allocate_budget(sens, {"a": {4: 1.0, 8: 2.0}}, 10.0, solver="greedy")
    with pytest.raises(ValueError, match="width"):
        allocate_budget({"a": {0: 1.0}}, {"a": {0: 1.0}}, 10.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_pair_widths_and_json(solver):
    # weights and activations chosen separately: (w_bits, a_bits) keys, numpy scalars ok
    sens = {"conv1": {(4, 8): 0.3, (8, 8): 0.1, (4, 4): 0.9},
            "fc": {np.int64(8): np.float64(0.05), 4: 0.2}}
    energy = {"conv1": {(4, 8): 4.0, (8, 8): 8.0, (4, 4): 2.0}, "fc": {8: 3.0, 4: 1.0}}
    a = allocate_budget(sens, energy, 7.0, solver=solver)
    assert a.bits == {"conv1": (4, 8), "fc": 8}
    assert a.w_bits == {"conv1": 4, "fc": 8}
    assert a.a_bits == {"conv1": 8, "fc": 8}
    d = json.loads(a.to_json())
    assert d["policy"] == "budget" and d["solver"] == solver and d["optimal"] is True
    assert d["binding"] is True and d["budget_pj"] == 7.0 and d["total_energy_pj"] == 7.0
    assert [r["width"] for r in d["layers"]] == [[4, 8], 8]
    assert a.widths() == [[4, 8], 8]
    assert a.layer_bits() == {"conv1": [4, 8], "fc": [8, 8]}  # QuantConfig.layer_bits shape
    assert "status" in d and d["status"]


def test_milp_reports_status_and_gap():
    sens, energy = _monotone_tables(n=10)
    a = allocate_budget(sens, energy, 0.7 * uniform_energy(energy, 8), solver="milp")
    assert a.optimal and a.gap is not None and a.gap <= 1e-9
    assert "HiGHS" in a.status


def test_dp_and_milp_agree_on_a_large_instance():
    rng = np.random.default_rng(3)
    sens, energy = {}, {}
    for i in range(60):
        macs = rng.uniform(1e5, 5e7)
        sens[i] = {b: float(rng.uniform(0.01, 1) * 2.0 ** (-b)) for b in (4, 6, 8)}
        energy[i] = {b: float(macs * (0.2 * (b / 8) ** 2 + 0.01 * b)) for b in (4, 6, 8)}
    w8 = uniform_energy(energy, 8)
    for ratio in (0.4, 0.6, 0.8):
        d = allocate_budget(sens, energy, ratio * w8, solver="dp")
        m = allocate_budget(sens, energy, ratio * w8, solver="milp")
        assert d.total_energy <= ratio * w8 and m.total_energy <= ratio * w8
        assert d.total_sensitivity == pytest.approx(m.total_sensitivity, rel=1e-9)


def test_width_order():
    assert sorted([8, 4, (4, 8), 6, (8, 4), (4, 4)], key=width_order) == [
        4, (4, 4), 6, (4, 8), (8, 4), 8]
    assert split_width(6) == (6, 6) and split_width((4, 8)) == (4, 8)


# ---------------------------------------------------------------------------- threshold


def _scores(values, widths=(4, 6, 8)):
    """Sensitivity table whose score (S at the narrowest width) is the given value."""
    return {f"l{i}": {w: v / (1 + j) for j, w in enumerate(widths)} for i, v in enumerate(values)}


def test_threshold_tertiles():
    sens = _scores([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    a = allocate_threshold(sens)
    # ranked: l0 .9, l4 .7 | l2 .5, l3 .3 | l5 .2, l1 .1
    assert a.bits == {"l0": 8, "l1": 4, "l2": 6, "l3": 6, "l4": 8, "l5": 4}
    assert a.policy == "threshold" and a.budget is None and a.binding is None
    assert list(a.bits) == list(sens)  # table order kept
    # seven layers: the more sensitive group takes the extra layer
    a7 = allocate_threshold(_scores([7, 6, 5, 4, 3, 2, 1]))
    assert list(a7.bits.values()) == [8, 8, 8, 6, 6, 4, 4]


def test_threshold_ties_share_the_wider_group():
    a = allocate_threshold(_scores([0.5, 0.5, 0.5, 0.1, 0.1, 0.1]))
    # the three 0.1 scores start in the middle tertile (rank 3 of 6), so all take 6
    assert list(a.bits.values()) == [8, 8, 8, 6, 6, 6]


def test_threshold_absolute_and_ref_width():
    sens = _scores([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    a = allocate_threshold(sens, low=0.25, high=0.6)
    assert a.bits == {"l0": 8, "l1": 4, "l2": 6, "l3": 6, "l4": 8, "l5": 4}
    b = allocate_threshold(sens, low=0.0, high=10.0)
    assert set(b.bits.values()) == {6}
    # scoring at 8 bits: S(8) = v / 3, so thresholds scale with it
    c = allocate_threshold(sens, ref_bits=8, low=0.25 / 3, high=0.6 / 3)
    assert c.bits == a.bits
    with pytest.raises(ValueError):
        allocate_threshold(sens, low=0.5)
    with pytest.raises(ValueError):
        allocate_threshold(sens, low=0.6, high=0.5)


def test_threshold_pins_single_width_layers_ties_and_energy():
    sens = _scores([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    sens["first"] = {8: 0.0}  # e.g. kept at 8 bits on purpose
    energy = {l: {w: float(w * w) for w in row} for l, row in sens.items()}
    a = allocate_threshold(sens, energy=energy, tied=[["l1", "l0"]])
    assert a.bits["first"] == 8
    assert a.bits["l0"] == a.bits["l1"] == 8  # the group takes its widest member's width
    assert a.total_energy == pytest.approx(sum(energy[l][b] for l, b in a.bits.items()))
    json.loads(a.to_json())


def test_threshold_pair_widths():
    widths = [(4, 4), (4, 8), (8, 8)]
    a = allocate_threshold(_scores([3, 2, 1], widths=widths), widths=widths)
    assert list(a.bits.values()) == [(8, 8), (4, 8), (4, 4)]
