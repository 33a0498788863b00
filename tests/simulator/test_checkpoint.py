"""Checkpoint placement (arXiv 2605.05219): the O(N·n) solver against brute force and a quadratic
DP, hand-computed placements, the online dp policy, and the heuristics' positions."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim.simulator.errors import KvsimError
from kvsim.simulator.policies import CHECKPOINT
from kvsim.simulator.policies.checkpoint import PlacementTable, solve_placement

# ---------------------------------------------------------------------------------------------
# Independent references (bins: depth bin t loses t − c(t), c(t) the deepest chosen bin ≤ t)
# ---------------------------------------------------------------------------------------------


def lost(hist, chosen) -> float:
    """Σ_t hist[t]·(t − c(t)), evaluated depth by depth."""
    total = 0.0
    for t, w in enumerate(hist):
        served_from = max((s for s in chosen if s <= t), default=0)
        total += w * (t - served_from)
    return total


def brute_force(hist, n, j=None) -> float:
    """Least ``lost`` over every set of ≤ n bins in 1..j (all bins by default)."""
    top = len(hist) - 1 if j is None else min(j, len(hist) - 1)
    return min(
        lost(hist, chosen)
        for k in range(n + 1)
        for chosen in itertools.combinations(range(1, top + 1), k)
    )


def quadratic_dp(hist, n) -> float:
    """Straightforward O(N²·n) DP over suffixes: tail[m][s] = least loss of bins s..N with a
    checkpoint at s and ≤ m more after it."""
    N = len(hist) - 1
    if N <= 0:
        return 0.0

    def seg(a, b):  # bins a..b all served by a checkpoint at a
        return sum((t - a) * hist[t] for t in range(a, b + 1))

    segs = {(a, b): seg(a, b) for a in range(1, N + 1) for b in range(a, N + 1)}
    tail = [[0.0] + [segs[(s, N)] for s in range(1, N + 1)]]  # m = 0: nothing after s
    for m in range(1, n):
        row = [0.0] * (N + 1)
        for s in range(1, N + 1):
            row[s] = min(
                [segs[(s, N)]] + [segs[(s, s2 - 1)] + tail[m - 1][s2] for s2 in range(s + 1, N + 1)]
            )
        tail.append(row)
    none = sum(t * hist[t] for t in range(N + 1))
    if n == 0:
        return none
    head = [sum(t * hist[t] for t in range(1, s)) for s in range(N + 1)]  # bins before s, unserved
    return min([none] + [head[s] + tail[n - 1][s] for s in range(1, N + 1)])


def serves_mass(hist, chosen) -> bool:
    """Every chosen bin serves some mass before the next chosen bin (or the end)."""
    if not chosen:
        return True
    ends = [nxt - 1 for nxt in chosen[1:]] + [len(hist) - 1]
    return all(sum(hist[s : e + 1]) > 0 for s, e in zip(chosen, ends, strict=True))


def close(a: float, b: float, hist) -> bool:
    """Equal up to 1e-9 of the problem's scale (the cost of no checkpoint)."""
    scale = sum(t * w for t, w in enumerate(hist))
    return abs(a - b) <= 1e-9 * scale


int_mass = st.one_of(st.just(0), st.integers(0, 20))
float_mass = st.one_of(st.just(0.0), st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False))


# ---------------------------------------------------------------------------------------------
# The solver
# ---------------------------------------------------------------------------------------------


def check_against_brute_force(hist, n, same):
    table = PlacementTable(hist, n)
    N = len(hist) - 1
    for j in range(N + 3):  # every prompt length, and beyond the histogram
        chosen = table.bins(j)
        assert chosen == sorted(set(chosen)) and len(chosen) <= n
        assert all(1 <= s <= min(j, N) for s in chosen)
        assert serves_mass(hist, chosen)
        best = brute_force(hist, n, j)
        assert same(table.cost(j), best), (j, table.cost(j), best)
        assert same(lost(hist, chosen), best), (j, chosen)


@settings(max_examples=300, deadline=None)
@given(st.lists(int_mass, max_size=11), st.integers(0, 4))
def test_matches_brute_force_exactly_on_integer_masses(hist, n):
    # Integer masses keep every sum and product exact, so the optimum must match to the bit.
    check_against_brute_force(hist, n, lambda a, b: a == b)


@settings(max_examples=300, deadline=None)
@given(st.lists(float_mass, max_size=11), st.integers(0, 4))
def test_matches_brute_force_on_real_masses(hist, n):
    check_against_brute_force(hist, n, lambda a, b: close(a, b, hist))


@settings(max_examples=80, deadline=None)
@given(st.lists(int_mass, min_size=1, max_size=61), st.integers(0, 12))
def test_matches_quadratic_dp(hist, n):
    chosen, cost = solve_placement(hist, n)
    assert cost == quadratic_dp(hist, n)
    assert lost(hist, chosen) == cost and len(chosen) <= n


@settings(max_examples=40, deadline=None)
@given(st.lists(float_mass, min_size=1, max_size=61), st.integers(0, 12))
def test_matches_quadratic_dp_on_real_masses(hist, n):
    chosen, cost = solve_placement(hist, n)
    assert close(cost, quadratic_dp(hist, n), hist)
    assert close(lost(hist, chosen), cost, hist)


def test_all_mass_at_one_depth_gets_a_checkpoint_exactly_there():
    hist = [0.0] * 9
    hist[5] = 2.0
    assert solve_placement(hist, 1) == ([5], 0.0)
    assert solve_placement(hist, 3) == ([5], 0.0)  # the extra budget would serve nothing
    assert solve_placement(hist, 0) == ([], 10.0)  # 2 × 5 lost bins


def test_uniform_mass_is_spread_evenly():
    # Depth bins 0..11 uniform: lengths (s1 − 1) + 1, s2 − s1, s3 − s2, 12 − s3 all 3 is the
    # unique optimum of Σ L(L − 1)/2 with Σ L = 12, i.e. 3 + 3·(0 + 1 + 2) = 12 lost bins.
    assert solve_placement([1.0] * 12, 3) == ([3, 6, 9], 12.0)
    assert solve_placement([1.0] * 12, 1) == ([6], 30.0)  # 1 + … + 5 before, 0 + … + 5 after


def test_two_depths_the_heavier_loss_wins():
    hist = [0.0] * 11
    hist[4], hist[10] = 1.0, 1.0
    assert solve_placement(hist, 1) == ([10], 4.0)  # at 4: 6 lost; at 10: 4 lost
    hist[4] = 3.0
    assert solve_placement(hist, 1) == ([4], 6.0)  # at 4: 6 lost; at 10: 12 lost
    assert solve_placement(hist, 2) == ([4, 10], 0.0)


def test_budget_beyond_the_bins_serves_every_massive_bin():
    hist = [7.0, 1.0, 0.0, 2.0, 0.0, 5.0]
    assert solve_placement(hist, 50) == ([1, 3, 5], 0.0)


def test_confined_placement_serves_deeper_hits_from_the_last_checkpoint():
    hist = [0.0] * 11
    hist[4], hist[10] = 3.0, 1.0
    table = PlacementTable(hist, 1)
    assert (table.bins(), table.cost()) == ([4], 6.0)
    # Within bins 1..7: at 7 the 3 at bin 4 lose 4 each and the 1 at bin 10 loses 3 = 15;
    # at 4 the one at bin 10 loses 6. So 4 stays best, but within 1..3 the deepest bin wins.
    assert (table.bins(7), table.cost(7)) == ([4], 6.0)
    assert (table.bins(3), table.cost(3)) == ([3], 3 * 1 + 1 * 7.0)
    assert (table.bins(0), table.cost(0)) == ([], 22.0)


def test_degenerate_histograms():
    assert solve_placement([], 3) == ([], 0.0)
    assert solve_placement([5.0], 3) == ([], 0.0)  # only depths < one bin: nothing to serve
    assert solve_placement([0.0, 0.0, 0.0], 2) == ([], 0.0)


@pytest.mark.parametrize(
    "hist, n, match",
    [
        ([1.0, -0.5], 1, "histogram bin 1 has mass -0.5"),
        ([1.0, math.nan], 1, "histogram bin 1 has mass nan"),
        ([1.0, math.inf], 1, "histogram bin 1 has mass inf"),
        ([1.0], -1, "checkpoint budget n = -1"),
        ([1.0], 1.5, "checkpoint budget n = 1.5"),
    ],
)
def test_solver_rejects_bad_input(hist, n, match):
    with pytest.raises(ValueError, match=match):
        PlacementTable(hist, n)


# ---------------------------------------------------------------------------------------------
# The online dp policy
# ---------------------------------------------------------------------------------------------


def test_dp_defaults():
    p = CHECKPOINT.create("dp", n=4)
    assert (p.n, p.gamma, p.resolve_every, p.bin_tokens) == (4, 0.99, 10, 64)


def test_dp_histogram_decays_per_observation_exactly():
    p = CHECKPOINT.create("dp", n=2, gamma=0.5, resolve_every=100)
    seen = []
    for depth in (0, 130, 64, 700, 130):  # bins 0, 2, 1, 10, 2 (powers of two: exact floats)
        p.observe(depth)
        seen.append(p.histogram)
    assert seen == [
        [1.0],
        [0.5, 0.0, 1.0],
        [0.25, 1.0, 0.5],
        [0.125, 0.5, 0.25] + [0.0] * 7 + [1.0],
        [0.0625, 0.25, 1.125] + [0.0] * 7 + [0.5],
    ]


def test_dp_histogram_is_the_discounted_count(rng):
    depths = rng.integers(0, 2000, size=37).tolist()
    p = CHECKPOINT.create("dp", n=2)
    for d in depths:
        p.observe(d)
    expected = [0.0] * (max(depths) // 64 + 1)
    for i, d in enumerate(depths):
        expected[d // 64] += 0.99 ** (len(depths) - 1 - i)
    assert p.histogram == pytest.approx(expected, rel=1e-12, abs=0)


def test_dp_is_balanced_until_the_first_solve():
    p = CHECKPOINT.create("dp", n=3)
    # balanced(3) of 1000 tokens is 250, 500, 750; floored to 64-token multiples:
    assert p.positions(1000) == (192, 448, 704)
    assert p.positions(100) == (64,)  # 25, 50, 75 floor to 0, 0, 64
    assert p.positions(63) == ()
    for _ in range(9):
        p.observe(1280)  # bin 20
    assert (p.solves, p.positions(1000)) == (0, (192, 448, 704))
    p.observe(1280)
    assert (p.solves, p.positions(2000)) == (1, (1280,))
    assert CHECKPOINT.create("dp", n=0).positions(1000) == ()


def test_dp_resolves_on_its_cadence_and_holds_the_placement_between():
    p = CHECKPOINT.create("dp", n=1, gamma=1.0, resolve_every=3)
    for _ in range(3):
        p.observe(640)  # bin 10
    assert (p.solves, p.positions(2000)) == (1, (640,))
    p.observe(1920)  # bin 30
    p.observe(1920)
    assert (p.solves, p.positions(2000)) == (1, (640,))  # held until the third
    p.observe(1920)
    # 3 at bin 10 and 3 at bin 30: at 10, 3 × 20 lost; at 30, 3 × 10 lost.
    assert (p.solves, p.positions(2000)) == (2, (1920,))
    # A prompt of 1000 tokens holds bins 1..15: the three at bin 30 resume from there anyway
    # (they lose 15 + …), so 10 (loses 3 × 5) beats 15 (loses 3 × 10).
    assert p.positions(1000) == (640,)


def test_dp_positions_are_floored_to_bins():
    p = CHECKPOINT.create("dp", n=1, gamma=1.0, resolve_every=1, bin_tokens=100)
    p.observe(750)  # bin 7: served from token 700, not 750
    assert p.positions(1000) == (700,)
    assert p.positions(699) == (600,)  # confined to bins 1..6, the deepest serves it best
    assert p.positions(99) == ()


def test_dp_rejects_a_negative_depth():
    with pytest.raises(ValueError, match="overlap depth -1 tokens is negative"):
        CHECKPOINT.create("dp", n=1).observe(-1)


# ---------------------------------------------------------------------------------------------
# The heuristics
# ---------------------------------------------------------------------------------------------


def test_registry_names():
    assert CHECKPOINT.names() == ["balanced", "dp", "every", "log2", "none", "sqrt"]


@pytest.mark.parametrize(
    "name, params, prompt_tokens, expected",
    [
        ("none", {}, 5000, ()),
        ("every", {"k": 512}, 0, ()),
        ("every", {"k": 512}, 511, ()),
        ("every", {"k": 512}, 512, (512,)),
        ("every", {"k": 512}, 1600, (512, 1024, 1536)),
        ("balanced", {"n": 3}, 1000, (250, 500, 750)),
        ("balanced", {"n": 3}, 8, (2, 4, 6)),
        ("balanced", {"n": 3}, 7, (1, 2, 3)),
        ("balanced", {"n": 3}, 2, (1, 2)),
        ("balanced", {"n": 3}, 0, ()),
        ("balanced", {"n": 0}, 1000, ()),
        ("sqrt", {}, 0, ()),
        ("sqrt", {}, 1, (1,)),
        ("sqrt", {}, 10, (3, 6, 9)),
        ("sqrt", {}, 16, (4, 8, 12, 16)),
        ("sqrt", {}, 24, (4, 8, 12, 16, 20, 24)),
        ("log2", {}, 63, ()),
        ("log2", {}, 64, (64,)),
        ("log2", {}, 1000, (64, 128, 256, 512)),
        ("log2", {"start_tokens": 768}, 5000, (1024, 2048, 4096)),
        ("log2", {"start_tokens": 1}, 10, (1, 2, 4, 8)),
    ],
)
def test_heuristic_positions(name, params, prompt_tokens, expected):
    assert CHECKPOINT.create(name, **params).positions(prompt_tokens) == expected


def test_sqrt_on_a_long_prompt():
    got = CHECKPOINT.create("sqrt").positions(1000)  # ⌊√1000⌋ = 31
    assert (len(got), got[0], got[1], got[-1]) == (32, 31, 62, 992)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("every", {"k": 0}, "checkpoint policy 'every': k = 0; allowed: an integer ≥ 1"),
        ("every", {"k": -512}, "checkpoint policy 'every': k = -512; allowed: an integer ≥ 1"),
        ("every", {"k": 1.5}, "checkpoint policy 'every': k = 1.5; allowed: an integer ≥ 1"),
        ("every", {"k": True}, "checkpoint policy 'every': k = True; allowed: an integer ≥ 1"),
        ("balanced", {"n": -1}, "checkpoint policy 'balanced': n = -1; allowed: an integer ≥ 0"),
        ("log2", {"start_tokens": 0}, "'log2': start_tokens = 0; allowed: an integer ≥ 1"),
        ("dp", {"n": -2}, "checkpoint policy 'dp': n = -2; allowed: an integer ≥ 0"),
        ("dp", {"n": 2, "gamma": 0}, "'dp': gamma = 0; allowed: a number in (0, 1]"),
        ("dp", {"n": 2, "gamma": 1.01}, "'dp': gamma = 1.01; allowed: a number in (0, 1]"),
        ("dp", {"n": 2, "gamma": math.nan}, "'dp': gamma = nan; allowed: a number in (0, 1]"),
        ("dp", {"n": 2, "gamma": "0.9"}, "'dp': gamma = '0.9'; allowed: a number in (0, 1]"),
        ("dp", {"n": 2, "resolve_every": 0}, "'dp': resolve_every = 0; allowed: an integer ≥ 1"),
        ("dp", {"n": 2, "bin_tokens": 0}, "'dp': bin_tokens = 0; allowed: an integer ≥ 1"),
    ],
)
def test_bad_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(KvsimError) as e:
        CHECKPOINT.create(name, **params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_or_unknown_parameters_go_through_the_registry():
    with pytest.raises(KvsimError, match="checkpoint policy 'every': bad parameters"):
        CHECKPOINT.create("every")
    with pytest.raises(KvsimError, match="unknown checkpoint policy 'log'"):
        CHECKPOINT.create("log")


def test_seen_prefixes_give_the_overlap_depth_and_forget_the_oldest():
    """The overlap depth is the shared run of leading units (clipped to the prompt); a unit seen
    only later in a prompt does not count; the set keeps the last ``capacity`` ids."""
    from kvsim.simulator.cache.seen import SeenPrefixes
    from kvsim.traces import Request

    seen = SeenPrefixes(capacity=5)
    assert seen.depth(Request(0, 0.0, 250, 1, (1, 2, 3), 100)) == 0
    assert seen.depth(Request(1, 0.0, 400, 1, (1, 2, 4, 5), 100)) == 200
    assert seen.depth(Request(2, 0.0, 150, 1, (1, 2), 100)) == 150  # clipped to the prompt
    assert seen.depth(Request(3, 0.0, 300, 1, (9, 1, 2), 100)) == 0
    # Six distinct ids were seen (1, 2, 3, 4, 5, 9): the oldest, 1, is forgotten; seeing it
    # again forgets 2.
    assert seen.depth(Request(4, 0.0, 300, 1, (1, 2, 3), 100)) == 0
    assert seen.depth(Request(5, 0.0, 300, 1, (3, 4, 5), 100)) == 300
    assert seen.depth(Request(6, 0.0, 300, 1, (2, 3, 4), 100)) == 0
    gap = SeenPrefixes()
    gap.depth(Request(0, 0.0, 300, 1, (1, 2, 3), 100))
    assert gap.depth(Request(1, 0.0, 300, 1, (1, 7, 3), 100)) == 100  # 3 is past the gap
