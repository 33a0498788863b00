"""kvsim plan: the searches by hand on known predicates (points tried, rounds, answers, brackets,
no answer, non-monotone results), SLO terms, and end to end — the answer checked against
independent runs of the scenario, deterministic whatever the workers, a trace's rate as its
rate_scale, never over an earlier plan."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from helpers import ROOT, write_kvsim_trace

from kvsim.simulator import load_scenario, simulate
from kvsim.simulator.cli import main
from kvsim.simulator.errors import KvsimError
from kvsim.simulator.plan import fewest, highest, parse_slo, verdict
from kvsim.simulator.plan.slo import Term, stress

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _recorded(pred):
    calls = []

    def check(values, round_):
        assert round_ == len(calls)
        calls.append(list(values))
        return [pred(v) for v in values]

    return calls, check


# ---- the searches ---------------------------------------------------------------------------
def test_fewest_gallops_then_narrows():
    calls, check = _recorded(lambda n: n >= 7)
    o = fewest(2, 256, check)
    assert calls == [[2], [4, 8, 16], [5, 6, 7]]
    assert (o.answer, o.lo, o.hi, o.rounds, o.monotone) == (7, 6, 7, 3, True)


def test_fewest_from_a_start_that_meets():
    calls, check = _recorded(lambda n: n >= 7)
    o = fewest(10, 256, check)
    assert calls == [[10], [2, 5, 8], [6, 7]]
    assert (o.answer, o.lo) == (7, 6)
    calls, check = _recorded(lambda n: True)
    assert fewest(3, 256, check).answer == 1 and calls == [[3], [1, 2]]


def test_fewest_with_no_answer_up_to_the_bound():
    calls, check = _recorded(lambda n: n >= 300)
    o = fewest(2, 20, check)
    assert calls == [[2], [4, 8, 16], [20]]
    assert (o.answer, o.lo, o.hi) == (None, 20, None)


def test_fewest_not_monotone_keeps_the_smallest_that_met_and_says_so():
    calls, check = _recorded(lambda n: n == 4 or n >= 10)
    o = fewest(2, 256, check)
    assert calls == [[2], [4, 8, 16], [3]]
    assert (o.answer, o.monotone) == (4, False)


def test_highest_gallops_up_then_narrows_to_the_tolerance():
    calls, check = _recorded(lambda r: r <= 17.3)
    o = highest(6.0, 1e-3, 1e6, 0.02, check)
    assert calls[:3] == [[6.0], [12.0, 24.0, 48.0], [14.2705, 16.9706, 20.1815]]
    assert o.lo == o.answer <= 17.3 < o.hi and o.hi / o.lo - 1 <= 0.02
    assert all(float(f"{v:.6g}") == v for c in calls for v in c)
    assert o.monotone and o.rounds == len(calls)


def test_highest_gallops_down_and_gives_up_at_the_bounds():
    calls, check = _recorded(lambda r: r <= 17.3)
    o = highest(100.0, 1e-3, 1e6, 0.02, check)
    assert calls[:2] == [[100.0], [12.5, 25.0, 50.0]]
    assert o.answer <= 17.3 < o.hi
    calls, check = _recorded(lambda r: r <= 1e-4)
    o = highest(1.0, 1e-3, 1e6, 0.02, check)
    assert (o.answer, o.lo) == (None, None) and min(calls[-1]) == 1e-3
    calls, check = _recorded(lambda r: True)
    o = highest(1.0, 1e-3, 100.0, 0.02, check)
    assert (o.answer, o.lo, o.hi) == (None, 100.0, None)


# ---- SLO terms ------------------------------------------------------------------------------
def test_slo_terms_and_verdicts():
    terms = parse_slo("ttft_p99=2s, tpot_p50=100ms,queue_mean=250us")
    assert terms == (Term("ttft_s", "p99", 2.0), Term("tpot_s", "p50", 0.1),
                     Term("queue_s", "mean", 0.00025))  # fmt: skip
    summary = {"finished": 10, "drop_reasons": {}, "ttft_s": {"p99": 2.5},
               "tpot_s": {"p50": 0.05}, "queue_s": {"mean": 0.0001}}  # fmt: skip
    assert verdict(terms, summary) == (False, ["ttft_s.p99 2.5 s > 2 s"])
    assert stress(terms, summary) == 1.25
    summary["ttft_s"]["p99"] = 2.0  # at the limit meets it
    summary["drop_reasons"] = {"rejected: queue full": 3, "longer than the model's context": 2}
    assert verdict(terms, summary) == (False, ["3 requests rejected by a full queue"])
    summary["drop_reasons"] = {"longer than the model's context": 2}
    assert verdict(terms, summary) == (True, [])
    summary["tpot_s"]["p50"] = None  # one-token answers only: no TPOT to exceed
    assert verdict(terms, summary)[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ttft=2s", "--slo 'ttft=2s': expected <metric>_<statistic>=<limit>, e.g. ttft_p99=2s or "
                    "tpot_p99=100ms"),
        ("itl_p99=2s", "--slo 'itl_p99=2s': metric 'itl'; allowed: ttft, tpot, e2e, queue, job"),
        ("ttft_p95=2s", "--slo 'ttft_p95=2s': statistic 'p95'; allowed: p50, p90, p99, mean"),
        ("ttft_p99=2min", "--slo 'ttft_p99=2min': unit 'min'; allowed: s, ms, us"),
        ("ttft_p99=0s", "--slo 'ttft_p99=0s': the limit must be a positive number"),
        ("ttft_p99=1s,ttft_p99=2s", "--slo 'ttft_p99=2s': ttft_s.p99 is given twice"),
    ],
)  # fmt: skip
def test_bad_slo_is_one_line(text, expected):
    with pytest.raises(KvsimError) as e:
        parse_slo(text)
    assert str(e.value) == expected


# ---- end to end -----------------------------------------------------------------------------
def _small(tmp_path, requests=150):
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["workload"]["requests"] = requests
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _plan(capsys, *argv) -> str:
    assert main(["plan", *map(str, argv), "--no-progress"]) == 0
    return capsys.readouterr().out


def _p99(s, sets) -> tuple[float, float, bool]:
    r = simulate(load_scenario(s, sets)).summary
    return r["ttft_s"]["p99"], r["tpot_s"]["p99"], not r["dropped"]


def test_fewest_replicas_is_checked_by_independent_runs(tmp_path, capsys):
    s = _small(tmp_path)
    out = tmp_path / "p"
    text = _plan(capsys, s, "--slo", "ttft_p99=400ms,tpot_p99=40ms", "--rate", "30", "--out", out)
    doc = json.loads((out / "plan.json").read_text())
    n = doc["answer"]
    assert doc["question"] == "fewest_replicas" and n > 1
    ttft, tpot, _ = _p99(s, [f"cluster.replicas={n}", "workload.rate=30"])
    assert ttft <= 0.4 and tpot <= 0.04
    ttft, tpot, _ = _p99(s, [f"cluster.replicas={n - 1}", "workload.rate=30"])
    assert ttft > 0.4 or tpot > 0.04
    assert doc["bracket"] == [n - 1, n]
    lines = text.splitlines()
    assert lines[0] == "kvsim: plan quickstart"
    assert lines[1] == (
        "question: the fewest replicas meeting ttft p99 ≤ 400 ms, tpot p99 ≤ 40 ms at 30 req/s"
    )
    assert lines[2].startswith(f"answer: {n} replicas ({n} GPUs): ttft_s.p99 ")
    rows = list(csv.DictReader(io.StringIO((out / "plan.csv").read_text())))
    assert len(rows) == len(doc["points"]) and rows[0]["replicas"] == "2"
    assert {r["replicas"]: r["meets"] for r in rows}[str(n)] == "yes"
    assert lines[-1] == f"results: {out}/ (plan.csv, plan.json, report.html)"
    for p in doc["points"]:
        assert p["overrides"] == [f"cluster.replicas={p['replicas']}", "workload.rate=30"]


def test_highest_rate_is_checked_by_independent_runs(tmp_path, capsys):
    s = _small(tmp_path)
    out = tmp_path / "p"
    _plan(capsys, s, "--slo", "tpot_p99=40ms", "--replicas", "1", "--tolerance", "0.05",
          "--out", out)  # fmt: skip
    doc = json.loads((out / "plan.json").read_text())
    lo, hi = doc["bracket"]
    assert doc["answer"] == lo and hi / lo - 1 <= 0.05
    assert _p99(s, ["cluster.replicas=1", f"workload.rate={lo:.6g}"])[1] <= 0.04
    assert _p99(s, ["cluster.replicas=1", f"workload.rate={hi:.6g}"])[1] > 0.04


def test_the_same_plan_whatever_the_workers_and_never_overwritten(tmp_path, capsys):
    s = _small(tmp_path, 100)
    args = [s, "--slo", "ttft_p99=300ms", "--rate", "25"]
    _plan(capsys, *args, "--out", tmp_path / "one", "--workers", "1")
    _plan(capsys, *args, "--out", tmp_path / "two", "--workers", "2")
    for name in ("plan.csv", "plan.json", "report.html"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    text = _plan(capsys, *args, "--out", tmp_path / "one", "--workers", "1")
    assert text.splitlines()[-1].startswith(f"results: {tmp_path / 'one'}-2/ ")


def test_a_trace_s_rate_becomes_its_rate_scale(tmp_path, capsys):
    rows = [{"arrival_s": 0.5 * i, "prompt_tokens": 300, "output_tokens": 20} for i in range(40)]
    write_kvsim_trace(tmp_path / "t.jsonl", rows)
    doc = {"name": "tr", "model": "llama-3.1-8b", "hardware": "h100-sxm",
           "workload": {"type": "trace", "path": "t.jsonl", "format": "kvsim"}}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "p"
    _plan(capsys, tmp_path / "s.yaml", "--rate", "10", "--out", out)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["trace_mean_rate"] == 40 / 19.5
    assert plan["points"][0]["overrides"] == ["cluster.replicas=1", "workload.rate_scale=4.875"]


def test_bad_plan_input_is_one_line(tmp_path, capsys):
    s = _small(tmp_path)
    assert main(["plan", str(s), "--slo", "ttft=1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsim: error: --slo 'ttft=1': expected") and "\n" not in err[:-1]
    assert main(["plan", str(s), "--rate", "-3"]) == 2
    assert "argument --rate: '-3': allowed: a positive number" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- disaggregated pools: the prefill:decode split ------------------------------------------
SCD = ROOT / "scenarios" / "scd_bandwidth.yaml"
# Short prompts and long answers on decode replicas of 16 sequences each: the decode pool is the
# bottleneck. Long prompts with one-token answers: the prefill pool is.
DECODE_HEAVY = ("transfer.codec=raw", "workload.requests=100", "workload.prompt_tokens.value=64",
                "workload.output_tokens.value=512", "scheduler.max_num_seqs=16")  # fmt: skip
PREFILL_HEAVY = ("transfer.codec=raw", "workload.requests=80",
                 "workload.prompt_tokens.value=8000", "workload.output_tokens.value=2")  # fmt: skip


def test_fewest_from_a_lower_bound():
    calls, check = _recorded(lambda n: n >= 4)
    o = fewest(2, 256, check, low=2)
    assert calls == [[2], [4, 8, 16], [3]]
    assert (o.answer, o.lo, o.hi) == (4, 3, 4)
    calls, check = _recorded(lambda n: True)
    assert fewest(5, 256, check, low=2).answer == 2 and calls == [[5], [2, 3, 4]]


def _ttft_p99(sets) -> float:
    """An independent run's TTFT p99 at a split (as kvsim run would give it)."""
    return simulate(load_scenario(SCD, list(sets))).summary["ttft_s"]["p99"]


def _split_plan(tmp_path, capsys, sets, rate, slo_s):
    out = tmp_path / "p"
    args = ["--set", *" --set ".join(sets).split(" ")]
    text = _plan(capsys, SCD, "--slo", f"ttft_p99={slo_s}s", "--rate", rate, *args, "--out", out,
                 "--workers", "1")  # fmt: skip
    return text, json.loads((out / "plan.json").read_text()), out


@pytest.mark.parametrize(
    "sets, rate, answer, split",
    [(DECODE_HEAVY, "12", 4, (1, 3)), (PREFILL_HEAVY, "6", 3, (2, 1))],
    ids=["decode-heavy", "prefill-heavy"],
)
def test_the_best_split_is_checked_by_independent_runs(tmp_path, capsys, sets, rate, answer,
                                                       split):  # fmt: skip
    text, doc, out = _split_plan(tmp_path, capsys, sets, rate, 1)
    assert doc["answer"] == answer and doc["bracket"] == [answer - 1, answer]
    assert doc["split"] == {"prefill": split[0], "decode": split[1], "gpus": answer}
    assert doc["pools"] == {"prefill": "prefill", "decode": "decode"}

    def ttft(p, d):
        return _ttft_p99([*sets, f"pools.prefill.replicas={p}", f"pools.decode.replicas={d}",
                          f"workload.rate={rate}"])  # fmt: skip

    # Independent runs: no split of one replica fewer meets; of the answer's splits, the chosen
    # one meets with the lowest TTFT (ties: fewer prefill replicas).
    assert all(ttft(p, answer - 1 - p) > 1 for p in range(1, answer - 1))
    at_answer = {(p, answer - p): ttft(p, answer - p) for p in range(1, answer)}
    meeting = {s: v for s, v in at_answer.items() if v <= 1}
    assert min(meeting, key=lambda s: (meeting[s], s)) == split
    # Every split of every total tried is a point, with its overrides, in plan.csv too.
    for p in doc["points"]:
        assert p["prefill"] + p["decode"] == p["replicas"] and p["gpus"] == p["replicas"]
        assert p["overrides"] == [
            *sets,
            f"pools.prefill.replicas={p['prefill']}",
            f"pools.decode.replicas={p['decode']}",
            f"workload.rate={rate}",
        ]
    totals = sorted({p["replicas"] for p in doc["points"]})
    assert len(doc["points"]) == sum(n - 1 for n in totals)
    rows = list(csv.DictReader(io.StringIO((out / "plan.csv").read_text())))
    assert [(r["replicas"], r["prefill"], r["decode"], r["meets"]) for r in rows] == [
        (str(p["replicas"]), str(p["prefill"]), str(p["decode"]), "yes" if p["meets"] else "no")
        for p in doc["points"]
    ]
    lines = text.splitlines()
    assert lines[1] == f"question: the fewest replicas meeting ttft p99 ≤ 1 s at {rate} req/s"
    assert lines[2].startswith(
        f"answer: {answer} replicas ({answer} GPUs): {split[0]} prefill + {split[1]} decode: "
        "ttft_s.p99 "
    )
    assert lines[3].startswith(f"        {answer - 1} fail (closest: ")
    assert lines[4] == (
        "        exact (an integer), if a replica added to either pool never hurts; the split: of "
        f"the {len(meeting)} of {answer - 1} splits that meet, the furthest inside the SLO"
    )
    assert "answer " + f"{split[0]}:{split[1]}" in (out / "report.html").read_text()


def test_a_split_tie_goes_to_the_higher_goodput_then_fewer_prefill_replicas():
    from kvsim.simulator.plan.planner import PlanPoint, best

    terms = (Term("ttft_s", "p99", 1.0),)

    def point(split, ttft, goodput, meets=True):
        summary = {"finished": 1, "ttft_s": {"p99": ttft},
                   "slo": {"goodput_requests_per_s": goodput}}  # fmt: skip
        return PlanPoint(0, 0, sum(split), (), summary, meets, [], split)

    a, b, c = point((1, 3), 0.5, 9.0), point((2, 2), 0.5, 9.5), point((3, 1), 0.5, 9.5)
    assert best([a, b, c], terms) is b
    d = point((3, 1), 0.4, 1.0)
    assert best([a, b, c, d], terms) is d
    e = point((1, 3), 0.1, 9.9, meets=False)  # failing splits never win over one that meets
    assert best([e, b], terms) is b and best([e], terms) is e


def test_a_rate_search_on_pools_is_one_line(tmp_path, capsys):
    assert main(["plan", str(SCD), "--replicas", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"kvsim: error: {SCD}: --replicas: the scenario has a prefill and a decode pool; plan "
        "their split with --rate R, or set each pool's replicas (--set pools.<name>.replicas=N) "
        "and run it\n"
    )
    assert not (tmp_path / "o").exists()


def test_one_unified_pool_given_as_pools_is_planned_by_its_name(tmp_path, capsys):
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc.pop("cluster", None)
    doc["pools"] = [{"name": "all", "role": "unified", "replicas": 1}]
    doc["workload"]["requests"] = 100
    s = tmp_path / "u.yaml"
    s.write_text(yaml.safe_dump(doc))
    _plan(capsys, s, "--slo", "ttft_p99=600ms", "--rate", "25", "--out", tmp_path / "p")
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["answer"] == 2 and "split" not in plan
    assert [p["overrides"] for p in plan["points"][:2]] == [
        ["pools.all.replicas=1", "workload.rate=25"],
        ["pools.all.replicas=2", "workload.rate=25"],
    ]
