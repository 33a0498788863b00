"""A bad measurements CSV is refused with one line naming the file, the line, the column and the
value; the time-scale rule catches times written in µs or ms instead of s."""

from __future__ import annotations

import json

import pytest

from kvsim.calibration.fit import fit_file
from kvsim.calibration.measurements import read_measurements
from kvsim.simulator.errors import KvsimError

HEADER = (
    "op,seconds,features,model,tensor_parallel,grid,timer,device,driver,cuda,torch,triton,date\n"
)
RUN = {
    "model": "llama-3.1-8b",
    "tensor_parallel": "1",
    "grid": "full",
    "timer": "cuda_events",
    "device": "NVIDIA H100 80GB HBM3",
    "driver": "550.54",
    "cuda": "12.4",
    "torch": "2.5.1",
    "triton": "3.1.0",
    "date": "2026-11-23T10:00:00+00:00",
}


def _gemm(tokens, in_dim=4096, out_dim=4096):
    return {"tokens": tokens, "in_dim": in_dim, "out_dim": out_dim}


def _seconds(f):
    """A plausible H100 time for a GEMM (5 µs launch, 700 TFLOP/s, 3 TB/s), written by hand."""
    t, i, o = f["tokens"], f["in_dim"], f["out_dim"]
    return 5e-6 + max(2 * t * i * o / 700e12, 2 * (t * i + i * o + t * o) / 3e12)


GOOD = [_gemm(t) for t in (1, 8, 64, 512, 4096, 16384)]


def _line(op, seconds, features, **run):
    cells = {**RUN, **run}
    feats = features if isinstance(features, str) else json.dumps(features)
    quoted = '"' + feats.replace('"', '""') + '"'
    return ",".join([op, str(seconds), quoted, *cells.values()]) + "\n"


def _write(tmp_path, lines):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "".join(lines), encoding="utf-8")
    return path


def _good_lines():
    return [_line("gemm", _seconds(f), f) for f in GOOD]


def test_a_good_file_reads_back_with_its_run_record(tmp_path):
    rows, meta = read_measurements(_write(tmp_path, _good_lines()))
    assert [r.features for r in rows] == GOOD
    assert [r.seconds for r in rows] == [float(str(_seconds(f))) for f in GOOD]
    assert meta == {**RUN, "tensor_parallel": 1}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"tokens": NaN, "in_dim": 4, "out_dim": 4}', "'tokens' is nan; allowed: an integer ≥ 0"),
        (
            '{"tokens": 4, "in_dim": Infinity, "out_dim": 4}',
            "'in_dim' is inf; allowed: an integer ≥ 0",
        ),
        ('{"tokens": -4, "in_dim": 4, "out_dim": 4}', "'tokens' is -4; allowed: an integer ≥ 0"),
        ('{"tokens": 4.5, "in_dim": 4, "out_dim": 4}', "'tokens' is 4.5; allowed: an integer ≥ 0"),
        ('{"tokens": true, "in_dim": 4, "out_dim": 4}', "'tokens' is True; allowed: an integer"),
        (
            '{"tokens": 4, "in_dim": 4, "out_dim": 4, "tokenz": 3}',
            "'tokenz' is not a feature of op 'gemm'; allowed: in_dim, out_dim, tokens",
        ),
        (
            '{"tokens": 4, "in_dim": 4}',
            "lacks 'out_dim', which op 'gemm' needs (in_dim, out_dim, tokens)",
        ),
        ("[4, 4, 4]", "is not a JSON object"),
        ("{tokens: 4}", "is not valid JSON"),
    ],
)
@pytest.mark.parametrize("at", [0, 3], ids=["first row", "later row"])
def test_bad_features_name_file_line_and_value(tmp_path, text, message, at):
    lines = _good_lines()
    lines.insert(at, _line("gemm", 1e-5, text))
    path = _write(tmp_path, lines)
    with pytest.raises(KvsimError) as e:
        read_measurements(path)
    assert str(e.value).startswith(f"{path}:{at + 2}: field 'features': ")
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(KvsimError):  # the refit refuses it too (no traceback, no profile)
        fit_file(path, tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("seconds", "nan", "field 'seconds' is 'nan'; allowed: a finite number > 0"),
        ("seconds", "inf", "field 'seconds' is 'inf'; allowed: a finite number > 0"),
        ("seconds", "-1e-5", "field 'seconds' is '-1e-5'; allowed: a finite number > 0"),
        ("seconds", "fast", "field 'seconds' is 'fast'; allowed: a finite number > 0"),
        ("op", "gemmm", "field 'op' is 'gemmm'; allowed: attention, copy, elementwise, gemm"),
        (
            "op",
            "allreduce",
            "field 'op' is 'allreduce'; allowed: attention, copy, elementwise, gemm",
        ),
        ("tensor_parallel", "0", "field 'tensor_parallel' is '0'; allowed: an integer ≥ 1"),
        ("grid", "big", "field 'grid' is 'big'; allowed: full, tiny"),
        ("timer", "stopwatch", "field 'timer' is 'stopwatch'; allowed: cuda_events, interpreter"),
        ("model", "", "field 'model' is ''; allowed: a model name"),
    ],
)
def test_bad_cells_name_file_line_and_value(tmp_path, column, value, message):
    lines = _good_lines()
    f = _gemm(32)
    cells = {"op": "gemm", "seconds": _seconds(f), **RUN, column: value}
    op, seconds = cells.pop("op"), cells.pop("seconds")
    lines.insert(2, _line(op, seconds, f, **cells))
    path = _write(tmp_path, lines)
    with pytest.raises(KvsimError) as e:
        read_measurements(path)
    assert str(e.value).startswith(f"{path}:4: {message}"), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("column", ["device", "driver", "cuda", "torch", "triton", "model",
                                    "tensor_parallel", "grid", "timer"])  # fmt: skip
def test_one_file_holds_one_run(tmp_path, column):
    lines = _good_lines()
    f = _gemm(32)
    other = {"tensor_parallel": "2", "grid": "tiny", "timer": "interpreter"}.get(column, "other")
    lines.insert(3, _line("gemm", _seconds(f), f, **{column: other}))
    path = _write(tmp_path, lines)
    with pytest.raises(KvsimError) as e:
        read_measurements(path)
    assert str(e.value) == (
        f"{path}:5: field '{column}' is {other!r} but line 2 has {RUN[column]!r}; one file holds "
        "one calibration run (one device, driver, CUDA, torch, triton, model, tensor_parallel, "
        "grid and timer)"
    )


def test_dates_may_differ_and_are_recorded_as_a_span(tmp_path):
    lines = _good_lines()
    lines[3] = _line("gemm", _seconds(GOOD[3]), GOOD[3], date="2026-11-24T08:00:00+00:00")
    _, meta = read_measurements(_write(tmp_path, lines))
    assert meta["date"] == "2026-11-23T10:00:00+00:00 to 2026-11-24T08:00:00+00:00"


def test_times_in_microseconds_are_refused(tmp_path):
    """The issue's case: times in µs written as seconds fit a 3.97 s launch with a small error."""
    lines = [_line("gemm", round(_seconds(f) * 1e6, 2), f) for f in GOOD]
    path = _write(tmp_path, lines)
    with pytest.raises(KvsimError) as e:
        fit_file(path, tmp_path / "p.yaml")
    assert str(e.value) == (
        f"{path}:2: field 'seconds' is '16.19'; one kernel call timed with CUDA events takes "
        "1e-07 to 1 s: are the times in µs or ms instead of s?"
    )


def test_times_in_milliseconds_are_refused_by_the_fitted_launch(tmp_path):
    """Copies timed in ms and written as s stay below 1 s per call; their fitted launch cost
    (milliseconds) gives them away."""
    lines = []
    for k in range(12, 31, 2):
        n = 1 << k
        ms = 4e-3 + 2 * n / 3e12 * 1e3  # 4 µs launch, 3 TB/s read + write, in ms
        lines.append(_line("copy", f"{ms:.6g}", {"nbytes": n, "path": "d2d"}))
    path = _write(tmp_path, lines)
    read_measurements(path)  # every single time is plausible on its own
    with pytest.raises(KvsimError, match=r"op 'copy': fitted launch_s 0\.00[34]\d* s; a kernel "
                       r"launch costs microseconds \(allowed ≤ 0\.001 s\): are the times in ms "
                       r"instead of s\?"):  # fmt: skip
        fit_file(path, tmp_path / "p.yaml")
    assert not (tmp_path / "p.yaml").exists()


def test_the_interpreter_is_exempt_from_the_gpu_time_scale(tmp_path):
    """Triton's interpreter on a CPU takes seconds a call: the GPU time-scale rule does not apply
    to its (meaningless) timings."""
    lines = [_line("gemm", _seconds(f) * 1e6, f, timer="interpreter") for f in GOOD]
    path = _write(tmp_path, lines)
    rows, meta = read_measurements(path)
    assert meta["timer"] == "interpreter" and rows[0].seconds == pytest.approx(16.19, rel=1e-3)
    profile = fit_file(path, tmp_path / "p.yaml")
    assert profile["ops"]["gemm"]["params"]["launch_s"] == pytest.approx(5.0, rel=0.01)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "m.csv:1: missing column 'op'"),
        (HEADER.replace(",timer", ""), "m.csv:1: missing column 'timer'"),
        (HEADER + 'gemm,1e-5,"{}"\n', "m.csv:2: 3 fields; a row has 13"),
        (HEADER + "gemm," * 13 + "x\n", "m.csv:2: 14 fields; a row has 13"),
        (HEADER, "m.csv: no measurements"),
    ],
)
def test_bad_file_shape(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KvsimError) as e:
        read_measurements(path)
    assert str(e.value) == f"{tmp_path}/{message}"


def test_not_utf8(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(HEADER.encode() + b"gemm,\xff\n")
    with pytest.raises(KvsimError, match=r"m.csv: not a UTF-8 CSV file"):
        read_measurements(path)
