"""AsymCache and its peers (max_score, pensieve), driven through a KVCache without a SimPy
environment: eviction orders computed by hand, the online estimate of L, AsymCache = LRU when
every recompute cost is equal (hypothesis), and parameter errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from helpers import load_hypothesis_profile, scenario_doc, write_kvsim_trace
from hypothesis import given
from hypothesis import strategies as st

from kvsim.simulator import scenario_from_dict
from kvsim.simulator.cache import KVCache
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.policies import EVICTION
from kvsim.simulator.policies.eviction import EvictionContext
from kvsim.traces import Request

BS = 16
UNIT = 64  # 4 blocks per unit
S = 1_000_000_000  # ns per second

load_hypothesis_profile()


def by_depth(start: int, tokens: int) -> float:
    """Recompute cost of a unit: 1 s for the first, one more second per unit before it."""
    return 1.0 + start / UNIT


def _cache(policy: str, recompute=by_depth, capacity=1000, **params) -> KVCache:
    ctx = EvictionContext(BS, "msa", None, recompute)
    policy = EVICTION.create(policy, ctx, **params)
    return KVCache(capacity, BS, policy, "msa", recompute_s=recompute)


def _unit(cache: KVCache, node_id: int, depth: int, now: int, release_at: int | None = None):
    """Insert a unit at ``depth`` (parent None: under msa any resident unit is reusable), held
    by its request; released at ``release_at`` when given."""
    cache.allocate(UNIT // BS, now)
    node, _ = cache.commit_unit(node_id, None, depth, depth * UNIT, UNIT, now)
    if release_at is not None:
        cache.release([node], 0, release_at)
    return node


def _reuse(cache: KVCache, nodes, now: int, release_at: int) -> None:
    for n in nodes:
        cache.tree.acquire(n, now)
    cache.release(list(nodes), 0, release_at)


def _victims(cache: KVCache, now: int) -> list[int]:
    out = []
    while (v := cache.tree.pop_victim(now)) is not None:
        out.append(v.id)
        cache.free += v.blocks
    return out


# ---- AsymCache, by hand ----------------------------------------------------------------------
def _three_candidates(**params) -> KVCache:
    """L = 10 s (p = 1/2, r = 40): f(τ) = 2^(−τ/10 s) up to τ = 10 s, then
    1/2 · 2^(−40(τ−10 s)/10 s). R (unit 2, ΔT 2 s) and P (unit 4, ΔT 4 s) idle since t = 0
    (units 1 and 3 of their chain stay held); Q (unit 9, ΔT 1 s) idle since t = 5 s."""
    c = _cache("asymcache", initial_l_s=10.0, reestimate_every=10**9, **params)
    chain = [_unit(c, i, d, 0) for d, i in enumerate([1, 2, 3, 4])]
    c.release([chain[1], chain[3]], 0, 0)
    _unit(c, 9, 0, 5 * S, release_at=5 * S)
    return c


def test_asymcache_evicts_the_smallest_expected_cost_and_the_clock_picks_the_branch():
    """At t = 10 s: V(Q) = 1·2^(−0.5) = 0.707, V(R) = 2·1/2 = 1, V(P) = 4·1/2 = 2 — every value
    on the gentle branch, and Q wins through the t_last/α heap. At t = 11 s, R and P have idled
    past L: V(R) = 2·(1/2)·2^(−4) = 0.0625, V(P) = 0.125, V(Q) = 2^(−0.6) = 0.660 — R and P win
    through the steep heap, ahead of Q."""
    assert _victims(_three_candidates(), 10 * S) == [9, 2, 4]
    assert _victims(_three_candidates(), 11 * S) == [2, 4, 9]
    c = _three_candidates()
    values = {n.id: c.policy.value(n, 11 * S) for n in c.tree.nodes.values() if n.candidate}
    assert values == pytest.approx({2: 2 / 32, 4: 4 / 32, 9: 2**-0.6}, rel=1e-12)


def test_asymcache_ties_go_as_lru_and_a_free_unit_first():
    """Equal costs and equal idle times: the order of release (LRU's) decides — a request
    releases its units deepest first. A unit that costs nothing to recompute goes first."""
    c = _cache("asymcache", recompute=lambda s, t: 2.5)
    chain = [_unit(c, i, d, 0) for d, i in enumerate([1, 2, 3])]
    c.release(chain, 0, S)  # released 3, 2, 1
    _unit(c, 7, 0, S, release_at=S)
    assert _victims(c, 3 * S) == [3, 2, 1, 7]
    c = _cache("asymcache", recompute=lambda s, t: 0.0 if s == UNIT else 1.0)
    chain = [_unit(c, i, d, 0) for d, i in enumerate([1, 2, 3])]
    c.release(chain, 0, 0)
    _unit(c, 7, 0, 2 * S, release_at=2 * S)
    assert _victims(c, 2 * S) == [2, 3, 1, 7]


# ---- the estimate of L -----------------------------------------------------------------------
def _expected_l_s(intervals_ns) -> float:
    """P99 of a stream at the histogram's resolution, computed independently: the upper edge
    1 µs · 10^(j/100) of the bin holding the ⌈0.99 n⌉-th smallest interval."""
    xs = sorted(intervals_ns)
    x = xs[math.ceil(0.99 * len(xs) - 1e-9) - 1]
    j = math.floor(100 * math.log10(x / 1000)) + 1
    assert 1000 * 10 ** ((j - 1) / 100) <= x < 1000 * 10 ** (j / 100)
    return 1000 * 10 ** (j / 100) / S


def _feed(policy, intervals_ns, now=10**12):
    node = SimpleNamespace(hits=1, refs=0)
    for x in intervals_ns:
        policy.on_access(node, now, now - x)


def test_l_is_the_p99_of_idle_reuse_intervals_every_n_observations_beyond_a_tolerance():
    pol = EVICTION.create("asymcache", None, initial_l_s=60.0, reestimate_every=1000)
    first = [i * 1_000_000 for i in range(1, 1001)]  # 1 ms … 1 s
    _feed(pol, first[:999])
    assert pol.l_s == 60.0 and pol.rebuilds == 0  # not before the 1000th observation
    _feed(pol, first[999:])
    assert pol.l_s == pytest.approx(_expected_l_s(first), rel=1e-12) == pytest.approx(1.0)
    assert pol.rebuilds == 1
    # 1000 more at 1.03 s: the P99 moves to the bin ending at 10^0.02 s = 1.047 s, 4.7% away
    # (under the 5% tolerance): L is kept.
    second = [1_030_000_000] * 1000
    _feed(pol, second)
    assert _expected_l_s(first + second) == pytest.approx(10**0.02, rel=1e-12)
    assert pol.l_s == pytest.approx(1.0) and pol.rebuilds == 1
    third = [2 * S] * 1000
    _feed(pol, third[:500])
    assert pol.l_s == pytest.approx(1.0)  # 2500 observations: not a multiple of 1000
    _feed(pol, third[500:])
    assert pol.l_s == pytest.approx(_expected_l_s(first + second + third), rel=1e-12)
    assert pol.l_s == pytest.approx(10**0.31, rel=1e-12) and pol.rebuilds == 2
    assert pol.alpha_ns == pytest.approx(pol.l_s * S / math.log(2), rel=1e-12)
    assert pol.beta_ns == pytest.approx(pol.alpha_ns / 40, rel=1e-12)
    assert pol.tau0_ns == pytest.approx(pol.l_s * S * 39 / 40, rel=1e-12)


def test_l_ignores_inserts_and_hits_on_units_in_use_and_clamps_to_its_range():
    pol = EVICTION.create("asymcache", None, reestimate_every=2)
    pol.on_access(SimpleNamespace(hits=0, refs=0), 5 * S, 0)  # an insert
    pol.on_access(SimpleNamespace(hits=3, refs=1), 5 * S, 0)  # shared while in use
    assert pol.observations == 0
    _feed(pol, [0, 500])  # below 1 µs
    assert pol.l_s == pytest.approx(1e-6)
    pol = EVICTION.create("asymcache", None, reestimate_every=2)
    _feed(pol, [10**16, 10**17])  # beyond 10^6 s
    assert pol.l_s == pytest.approx(1e6)
    pol = EVICTION.create("asymcache", None, reestimate_every=3)
    _feed(pol, [1_000_000, 2_000_000, 3 * S])  # the P99 of 3 is the 3rd (⌈2.97⌉)
    assert pol.l_s == pytest.approx(_expected_l_s([1_000_000, 2_000_000, 3 * S]), rel=1e-12)
    assert pol.l_s > 3


def test_a_new_l_rekeys_every_candidate():
    """At t = 10 s one reuse 5.4 s long makes L = 10^0.74 s = 5.50 s (its bin's upper edge).
    R and P (idle 10 s) are now past L, on the steep branch: log V(R) = ln 2 − (10 − τ0)/β
    = −22.7, log V(P) = −22.0, while Q (idle 5 s) is on the gentle one: log V(Q) = −5/α = −0.63.
    Keyed as before (L = 10 s), Q would go first; keyed on the gentle branch alone, too."""
    c = _three_candidates()
    c.policy.reestimate_every = 1
    c.policy.on_access(SimpleNamespace(hits=1, refs=0), 10 * S, 10 * S - 5_400_000_000)
    assert c.policy.l_s == pytest.approx(10**0.74, rel=1e-12) and c.policy.rebuilds == 1
    assert _victims(c, 10 * S) == [2, 4, 9]


# ---- AsymCache = LRU when every ΔT is equal --------------------------------------------------
@st.composite
def cache_ops(draw):
    """Operations at non-decreasing times (steps of 0 give ties): requests over three documents
    (shared prefixes) and fresh units, releases, and direct evictions."""
    ops = []
    for _ in range(draw(st.integers(1, 40))):
        dt = draw(st.sampled_from([0, 0, 1, 999, 10**6, 10**9, 10**11]))
        kind = draw(st.sampled_from(["request", "request", "release", "evict"]))
        ops.append((kind, dt, draw(st.integers(0, 2)), draw(st.integers(1, 6))))
    return ops


class _Driver:
    def __init__(self, policy, **params):
        self.cache = _cache(policy, recompute=lambda s, t: 3.0, capacity=40, **params)
        self.held: list[list] = []
        self.victims: list[int] = []
        tree = self.cache.tree
        pop = tree._pop

        def recording_pop(now):
            v = pop(now)
            if v is not None:
                self.victims.append(v.id)
            return v

        tree._pop = recording_pop
        self.fresh = 10_000

    def apply(self, kind, now, a, b):
        c = self.cache
        if kind == "request":
            ids = [100 * a + u for u in range(b // 2)] + list(range(self.fresh, self.fresh + b))
            self.fresh += b
            req = Request(0, 0.0, len(ids) * UNIT, 1, tuple(ids), UNIT)
            hit = c.lookup(req, now)
            held = {n.depth for n in hit.nodes}
            new = [u for u in range(len(ids)) if u not in held]
            if not c.try_allocate(len(new) * (UNIT // BS), now, hit):
                return
            nodes = list(hit.nodes)
            for u in new:
                node, _ = c.commit_unit(ids[u], None, u, u * UNIT, UNIT, now)
                nodes.append(node)
            self.held.append(nodes)
        elif kind == "release" and self.held:
            c.release(self.held.pop(a % len(self.held)), 0, now)
        elif kind == "evict":
            for _ in range(b):
                v = c.tree.pop_victim(now)
                if v is None:
                    break
                c.free += v.blocks


@given(
    ops=cache_ops(),
    p=st.sampled_from([0.3, 0.5, 0.7]),
    r=st.sampled_from([1.5, 40.0]),
    initial_l_s=st.sampled_from([1e-6, 1.0, 1e4]),
    every=st.sampled_from([1, 3, 1000]),
)
def test_asymcache_with_equal_costs_evicts_exactly_what_lru_evicts(ops, p, r, initial_l_s, every):
    lru = _Driver("lru")
    asym = _Driver("asymcache", p=p, r=r, initial_l_s=initial_l_s, reestimate_every=every)
    now = 0
    for kind, dt, a, b in ops:
        now += dt
        lru.apply(kind, now, a, b)
        asym.apply(kind, now, a, b)
        assert asym.victims == lru.victims
        assert sorted(asym.cache.tree.nodes) == sorted(lru.cache.tree.nodes)
    assert _victims(asym.cache, now + S) == _victims(lru.cache, now + S)


# ---- max_score -------------------------------------------------------------------------------
def _max_score_cache() -> KVCache:
    """Class 1 (depths 1–2): unit 2 inserted at 0, reused at 8 s: λ = 1/8 per s, p = 1/2.
    Class 0 (depth 0): unit 1 inserted at 8 s and reused at 10 s, unit 8 inserted at 10 s:
    λ = 1/2 per s, p = 1/3. Never reused: unit 5 (depth 3, class 2), then unit 7 (depth 7,
    class 3), at 10 s."""
    c = _cache("max_score", window_s=10.0)
    n2 = _unit(c, 2, 1, 0, release_at=0)
    _reuse(c, [n2], 8 * S, 8 * S)
    n1 = _unit(c, 1, 0, 8 * S, release_at=8 * S)
    _reuse(c, [n1], 10 * S, 10 * S)
    _unit(c, 8, 0, 10 * S, release_at=10 * S)
    _unit(c, 5, 3, 10 * S, release_at=10 * S)
    _unit(c, 7, 7, 10 * S, release_at=10 * S)
    return c


def test_max_score_evicts_the_least_likely_reuse_in_the_window():
    """score = p·e^(−λτ)·(1 − e^(−λ·10 s)). Never-reused classes score 0 and go first, the
    deeper unit 7 ahead of unit 5. Units 1 and 8 (τ = x after 10 s) score
    (1/3)·(1 − e^−5)·e^(−x/2) = 0.3311·e^(−x/2); unit 2 (τ = 2 s + x) scores
    (1/2)·(1 − e^−1.25)·e^(−(2 + x)/8) = 0.2778·e^(−x/8): unit 2 goes first until x = 0.468 s
    (ln(0.3311/0.2778) / 0.375), after that units 1 and 8 (1 released before 8)."""
    c = _max_score_cache()
    assert math.exp(c.policy.log_score(0, 1 * S)) == pytest.approx(
        (1 / 3) * math.exp(-0.5) * (1 - math.exp(-5)), rel=1e-12
    )
    assert math.exp(c.policy.log_score(1, 3 * S)) == pytest.approx(
        0.5 * math.exp(-0.375) * (1 - math.exp(-1.25)), rel=1e-12
    )
    assert _victims(c, 10 * S + 200_000_000) == [7, 5, 2, 1, 8]
    assert _victims(_max_score_cache(), 11 * S) == [7, 5, 1, 8, 2]


# ---- pensieve --------------------------------------------------------------------------------
def _pensieve_cache() -> KVCache:
    """A chain 1-2-3 (ΔT 1, 2, 3 s) idle since 0; unit 4 (ΔT 1 s) idle since 6 s."""
    c = _cache("pensieve")
    chain = [_unit(c, i, d, 0) for d, i in enumerate([1, 2, 3])]
    c.release(chain, 0, 0)
    _unit(c, 4, 0, 6 * S, release_at=6 * S)
    return c


@pytest.mark.parametrize(
    "now_s, order",
    [
        (6, [1, 2, 3, 4]),  # 1/6, 2/6, 3/6; unit 4 idle 0 s: +inf
        (7, [1, 2, 3, 4]),  # 1/7, 2/7, 3/7, 1/1
        (10, [1, 2, 4, 3]),  # 0.1, 0.2, 0.25 (unit 4), 0.3
        (12, [1, 4, 2, 3]),  # 1/12, then 1/6 twice: the cheaper (unit 4) first, then 0.25
    ],
)
def test_pensieve_evicts_the_lowest_cost_per_idle_time(now_s, order):
    assert _victims(_pensieve_cache(), now_s * S) == order


@given(
    units=st.lists(
        st.tuples(st.integers(0, 9), st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 0.0])),
        min_size=1,
        max_size=30,
    ),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["release", "release", "reuse", "pop"]),
            st.integers(0, 3),  # seconds since the previous step (0: ties in time)
            st.integers(0, 29),  # which unit (reuse), how many victims (pop)
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_pensieve_victims_are_the_argmin_of_a_full_scan(units, ops):
    """Units of arbitrary costs (not monotone in position: the cost tie rule matters; some free
    to recompute), inserted together, then releases in any order, reuses (acquired and released
    again: stale heads) and pops at non-decreasing times: each victim is the minimum of
    (ΔT / τ, ΔT, release order) over every candidate."""
    costs = {}
    c = _cache("pensieve", recompute=lambda start, tokens: costs[start])

    def key(x, now):
        idle = now - x.last_access_ns
        if x.recompute_s == 0:
            value = 0.0
        else:
            value = x.recompute_s / idle if idle else math.inf
        return (value, x.recompute_s, x.released)

    held = []
    for k, (depth, cost) in enumerate(units):
        start = (depth + 10 * k) * UNIT  # a distinct position per unit, so a cost per unit
        costs[start] = cost
        c.allocate(UNIT // BS, 0)
        held.append(c.commit_unit(k, None, depth + 10 * k, start, UNIT, 0)[0])
    now = 0
    for kind, dt_s, a in ops:
        now += dt_s * S
        if kind == "release" and held:
            c.release([held.pop(a % len(held))], 0, now)
        elif kind == "reuse":
            node = c.tree.nodes.get(a % len(units))
            if node is not None and node.refs == 0:
                _reuse(c, [node], now, now)
        elif kind == "pop":
            for _ in range(a % 4 + 1):
                cands = [x for x in c.tree.nodes.values() if x.candidate]
                v = c.tree.pop_victim(now)
                if not cands:
                    assert v is None
                    break
                assert v is min(cands, key=lambda x, now=now: key(x, now))
                c.free += v.blocks


def test_pensieve_a_reused_unit_competes_with_its_new_idle_time():
    """Unit 1 is reused at 7 s. At 8 s: unit 2 is worth 2/8, unit 3 3/8, unit 4 1/2 and unit 1
    1/1 — no longer 1/8 as when it was idle since 0."""
    c = _pensieve_cache()
    _reuse(c, [c.tree.nodes[1]], 7 * S, 7 * S)
    assert _victims(c, 8 * S) == [2, 3, 4, 1]


def test_pensieve_ties_go_to_the_cheaper_unit():
    """Unit 1 (position 0, ΔT 2 s, idle 4 s) and unit 2 (position 3, ΔT 1 s, idle 2 s) are both
    worth 0.5 s per idle second: the cheaper goes first, though it sits deeper. Unit 4 (ΔT 100 s,
    idle 10 s) is worth 10 and goes last; being the oldest, it keeps the classes' bound low
    enough that unit 1 is compared with unit 2."""
    costs = {0: 2.0, 3 * UNIT: 1.0, 6 * UNIT: 100.0}
    c = _cache("pensieve", recompute=lambda start, tokens: costs[start])
    _unit(c, 4, 6, 0, release_at=0)
    _unit(c, 1, 0, 6 * S, release_at=6 * S)
    _unit(c, 2, 3, 8 * S, release_at=8 * S)
    assert _victims(c, 10 * S) == [2, 1, 4]


@pytest.mark.parametrize(
    "name, make, t1, t2",
    [
        ("asymcache", _three_candidates, 10 * S, 11 * S),
        ("max_score", _max_score_cache, 10 * S + 200_000_000, 11 * S),
        ("pensieve", _pensieve_cache, 7 * S, 10 * S),
    ],
)
def test_policies_whose_victims_depend_on_the_clock_say_so(name, make, t1, t2):
    """The same candidates give other victims at another time, so the cache must evict only at
    exact iteration boundaries (``time_dependent``)."""
    assert _victims(make(), t1) != _victims(make(), t2)
    assert make().time_dependent and make().policy.policy_name == name


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, params, message",
    [
        ("asymcache", {"p": 1.0}, "p must be in (0, 1), not 1.0"),
        ("asymcache", {"p": 0}, "p must be in (0, 1), not 0.0"),
        ("asymcache", {"r": 1}, "r must be greater than 1, not 1.0"),
        ("asymcache", {"r": "x"}, "r must be a finite number, not 'x'"),
        ("asymcache", {"initial_l_s": -2}, "initial_l_s must be positive, not -2.0"),
        ("asymcache", {"reestimate_every": 0}, "reestimate_every must be at least 1, not 0"),
        ("asymcache", {"reestimate_every": 2.5}, "reestimate_every must be an integer, not 2.5"),
        ("asymcache", {"l_tolerance": -0.1}, "l_tolerance must be non-negative, not -0.1"),
        ("asymcache", {"q": 1}, "bad parameters {'q': 1}"),
        ("max_score", {"window_s": 0}, "window_s must be positive and finite, not 0"),
        ("pensieve", {"p": 0.5}, "bad parameters {'p': 0.5}"),
    ],
)
def test_bad_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(KvsimError) as e:
        EVICTION.create(name, None, **params)
    assert str(e.value).startswith(f"cache.eviction: eviction policy {name!r}: ")
    assert "\n" not in str(e.value)
    assert message in str(e.value)


@pytest.mark.parametrize("name", ["asymcache", "pensieve"])
def test_msa_only_policies_are_refused_under_contiguous_at_load(tmp_path, name):
    trace = write_kvsim_trace(tmp_path / "t.jsonl", [{"arrival_s": 0.0, "prompt_tokens": 8,
                                                      "output_tokens": 1}])  # fmt: skip
    doc = scenario_doc(trace, cache={"eviction": name, "layout": "contiguous"})
    with pytest.raises(KvsimError) as e:
        scenario_from_dict(doc, base_dir=tmp_path)
    assert str(e.value) == (
        f"<scenario>: cache.eviction: {name!r} needs cache.layout msa, not 'contiguous'"
    )
    doc["cache"]["layout"] = "msa"
    scenario_from_dict(doc, base_dir=tmp_path)  # accepted
