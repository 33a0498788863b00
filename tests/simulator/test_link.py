"""Links: processor-sharing timelines computed by hand, to the nanosecond."""

from __future__ import annotations

import simpy

from kvsim.simulator.link import LATE, BusySeries, Link, schedule_at


def _run(link_kw: dict, sends: list[tuple[int, int, int]]):
    """Send (at_ns, key, nbytes) transfers on one link; return {key: arrival ns} and the link."""
    env = simpy.Environment()
    link = Link(env, "l", **link_kw)
    got: dict[int, int] = {}

    def sender(key, nbytes):
        return lambda _ev: link.send(nbytes, key, lambda t: got.__setitem__(key, t))

    for at, key, nbytes in sends:
        schedule_at(env, at, sender(key, nbytes))
    env.run()
    return got, link


def test_one_transfer_alone_takes_bytes_over_the_rate():
    # 8 Gbit/s = 1 byte per ns.
    got, link = _run({"bandwidth_gbit_per_s": 8.0}, [(0, 1, 1000)])
    assert got == {1: 1000}
    assert (link.busy_ns, link.bytes, link.transfers) == (1000, 1000, 1)


def test_two_overlapping_transfers_share_the_rate():
    # 1 byte/ns. A (1000 B) alone for 500 ns: 500 B left. From 500 both get 0.5 B/ns: A's 500 B
    # take 1000 ns -> A at 1500. B got 500 B by then; alone, its last 500 B take 500 ns -> 2000.
    got, link = _run({"bandwidth_gbit_per_s": 8.0}, [(0, 1, 1000), (500, 2, 1000)])
    assert got == {1: 1500, 2: 2000}
    assert link.busy_ns == 2000 and link.bytes == 2000


def test_three_overlapping_transfers_share_the_rate():
    # 1 byte/ns. A 3000 B at 0, B 1000 B at 1000, C 600 B at 1200.
    # [0, 1000): A alone, 1000 done (2000 left). [1000, 1200): A, B at 0.5: A 1900, B 900 left.
    # From 1200 a third each: C's 600 B take 1800 ns -> C at 3000 (A 1300, B 300 left).
    # From 3000 a half each: B's 300 B take 600 ns -> B at 3600 (A 1000 left). A alone -> 4600.
    got, link = _run({"bandwidth_gbit_per_s": 8.0}, [(0, 1, 3000), (1000, 2, 1000), (1200, 3, 600)])
    assert got == {3: 3000, 2: 3600, 1: 4600}
    assert link.busy_ns == 4600 and link.transfers == 3


def test_overhead_delays_the_start_and_latency_the_arrival():
    # Overhead 100 ns (no bandwidth used), latency 50 ns after the last bit.
    # A joins at 100, B (sent at 300) joins at 400: A alone [100, 400) 300 B done, 700 left;
    # both from 400: A's 700 B take 1400 ns -> through at 1800, arrives 1850. B got 700 B by 1800,
    # its last 300 B alone -> through at 2100, arrives 2150.
    got, link = _run(
        {"bandwidth_gbit_per_s": 8.0, "latency_s": 50e-9, "overhead_s": 100e-9},
        [(0, 1, 1000), (300, 2, 1000)],
    )
    assert got == {1: 1850, 2: 2150}
    assert link.busy_ns == 2000  # [100, 2100): overhead and latency use no bandwidth


def test_state_changes_at_whole_nanoseconds():
    # 3 Gbit/s = 3 bits/ns. A (8 bits) at 0, B (8 bits) at 1. [0, 1): A 3 bits (5 left).
    # From 1, 1.5 bits/ns each: A is through at 1 + 10/3 = 4.33 -> handled at 5 (the link
    # changes state at whole ns), by when each got 3 + 4 x 1.5 = 9 >= 8 bits (B: 6 of 8).
    # B alone: 2 bits at 3 bits/ns -> 5.67 -> 6.
    got, _ = _run({"bandwidth_gbit_per_s": 3.0}, [(0, 1, 1), (1, 2, 1)])
    assert got == {1: 5, 2: 6}


def test_ties_arrive_in_key_order_and_zero_bytes_arrive_at_once():
    env = simpy.Environment()
    link = Link(env, "l", 8.0)
    order = []
    for key in (7, 3, 5):
        link.send(100, key, lambda t, k=key: order.append((k, t)))
    link.send(0, 9, lambda t: order.append((9, t)))
    env.run()
    # Three equal transfers share 1 B/ns: each 100 B takes 300 ns; the empty one arrives now.
    assert order == [(9, 0), (3, 300), (5, 300), (7, 300)]


def test_one_pending_event_per_link():
    env = simpy.Environment()
    link = Link(env, "l", 8.0)
    fired = []
    original = link._on_event

    def counting(version):
        if version == link._version:
            fired.append(env.now)
        original(version)

    link._on_event = counting
    for at, size in ((0, 1000), (100, 1000), (200, 1000)):
        schedule_at(env, at, lambda _ev, s=size: link.send(s, 0, lambda t: None))
    env.run()
    # Every re-plan supersedes the previous event: only the completions' events do work.
    # Shares: [0,100) 1, [100,200) 1/2, [200,...) 1/3: first done when 1000 B reached:
    # A: 100 + 50 + (850 x 3) = 2750 at 2750; then B, C at 1/2: B has 50+850=900, 100 left -> 2950;
    # C has 850, 150 left: 100 at 1/2 by 2950 -> 50 left alone -> 3000.
    assert fired == [2750, 2950, 3000]


def test_late_priority_runs_after_ordinary_events_of_the_same_time():
    env = simpy.Environment()
    log = []
    schedule_at(env, 5, lambda _ev: log.append("late"), LATE)
    env.timeout(5).callbacks.append(lambda _ev: log.append("normal"))
    schedule_at(env, 5, lambda _ev: log.append("urgent"))
    env.run()
    assert log == ["urgent", "normal", "late"]


def test_busy_series_doubles_its_bins_and_keeps_the_total():
    s = BusySeries(bins=4, width_ns=10)
    s.add(5, 25)  # bins 0..2
    assert s.busy == [5, 10, 5, 0]
    s.add(35, 70)  # beyond 4 x 10 ns: the bins become 20 ns wide, neighbours merged
    assert s.width_ns == 20
    assert s.busy == [15, 5 + 5, 20, 10]
    starts, frac = s.fractions(70)
    assert starts == [0.0, 20e-9, 40e-9, 60e-9]
    assert frac == [15 / 20, 10 / 20, 20 / 20, 10 / 20]


def test_busy_fractions_in_coarser_bins_line_up():
    s = BusySeries(bins=8, width_ns=10)
    s.add(0, 15)
    s.add(35, 40)
    starts, frac = s.fractions(60, width_ns=20)
    assert starts == [0.0, 20e-9, 40e-9] and frac == [15 / 20, 5 / 20, 0.0]
