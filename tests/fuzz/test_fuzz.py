"""Fuzzing the command line: whatever a user hands kvsim, it runs cleanly or says what is wrong in
one line (exit 2) and writes nothing, within a time and memory budget (``harness``).

Five targets, each a hypothesis strategy: scenario documents (fields set to odd values or
deleted, then the YAML text itself edited: aliases, duplicate keys, nesting, other encodings),
``--set`` overrides, traces (rows of every format with odd fields, raw bytes, compressed or
truncated), Hugging Face model configs and calibration profiles. CI runs a few hundred cases
(derandomized, so a run is reproducible); ``pytest -m slow`` runs thousands with fresh seeds.
For scenarios, ``validate`` must refuse exactly what ``run`` refuses before it simulates: when
validate fails, run fails with the same line.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import json

import pytest
import yaml
import zstandard
from fuzz.harness import Case, check
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CI_CASES = 60  # per target: five targets, a few hundred cases
SLOW_CASES = 800  # per target in the slow run

PATHS = [
    "name", "description", "seed", "model", "hardware",
    "cluster", "cluster.replicas", "cluster.tensor_parallel",
    "cache", "cache.block_size", "cache.num_gpu_blocks", "cache.gpu_memory_utilization",
    "cache.enable_prefix_caching", "cache.layout", "cache.eviction", "cache.eviction.type",
    "cache.eviction.p", "scheduler", "scheduler.max_num_batched_tokens",
    "scheduler.max_num_seqs", "scheduler.enable_chunked_prefill", "scheduler.chunk_tokens",
    "scheduler.max_waiting", "routing", "routing.type", "workload", "workload.type",
    "workload.rate_scale", "workload.max_requests", "workload.requests", "workload.rate",
    "workload.arrival", "workload.cv", "workload.prompt_tokens", "workload.prompt_tokens.type",
    "workload.prompt_tokens.value", "workload.prompt_tokens.median",
    "workload.prompt_tokens.sigma", "workload.prompt_tokens.min", "workload.prompt_tokens.max",
    "workload.prompt_tokens.low", "workload.prompt_tokens.high", "workload.output_tokens",
    "workload.output_tokens.value", "workload.shared_prefix", "workload.shared_prefix.prefixes",
    "workload.shared_prefix.tokens", "workload.shared_prefix.zipf", "workload.unit_tokens",
    "workload.path", "workload.format", "slo", "slo.ttft_s", "slo.tpot_s", "latency",
    "latency.type", "latency.path", "latency.fallback", "simulation", "simulation.exact_steps",
    "unknown", "cache.evicton", "workload.extra",
    "cache.checkpoint", "cache.checkpoint.type", "cache.checkpoint.n", "cache.checkpoint.k",
    "cache.isolation", "cache.checkpoint_capture", "scheduler.chunking", "scheduler.chunking.type",
    "scheduler.watermark", "simulation.warmup_requests", "workload.groups", "workload.queries",
    "workload.queries.value", "workload.context_tokens", "workload.own_tokens", "workload.turns",
    "workload.think_cv", "workload.dispersion", "workload.tool_s", "workload.tool_s.median_s",
    "workload.calls", "workload.max_prompt_tokens", "workload.system_prompt_tokens",
    "pools", "links", "transfer", "transfer.codec", "transfer.codec.type",
    "transfer.codec.rank_k", "transfer.codec.quality", "transfer.first_token",
    "transfer.pipelining", "cache.cpu_tier", "cache.cpu_tier.size_gib",
    "cache.cpu_tier.num_blocks", "cache.cpu_tier.eviction", "cache.cpu_tier.pcie_gbit_per_s",
    "cache.cpu_tier.latency_s",
]  # fmt: skip
WORDS = [
    "lru", "lfu", "fifo", "round_robin", "least_loaded", "prefix_aware", "os:system",
    "builtins:int", "collections:OrderedDict", "kvsim.simulator.policies.eviction:LFU",
    "kvsim.simulator.policies.routing:RoundRobin", "kvsim.simulator.policies.eviction:LRU", "..",
    "a.b:c", "llama-3.1-8b", "llama-3.1-70b", "mistral-7b", "h100-sxm", "h200", "a100-80g", "h20",
    "auto", "msa", "contiguous", "fixed", "uniform", "lognormal", "poisson", "gamma", "trace",
    "synthetic", "kvsim", "mooncake", "azure", "burstgpt", "roofline", "profile", "none", "../x",
    "/tmp", "config.json", "t.jsonl", "\x00", "1e3", "runs", "", " ", "é", "x" * 3000,
    "qwen3.5-0.8b", "nemotron-h-8b", "mamba2-2.7b", "dp", "every", "sqrt", "log2", "balanced",
    "continuum", "sessions", "agent", "grouped", "scan", "chunk", "adaptive",
    "prefill", "decode", "unified", "raw", "quantized", "layer_recompute", "consumer_prefill",
    "scd", "scd_reuse_only", "producer", "consumer", "mistrallite", "mistral-7b-v0.1",
]  # fmt: skip
DELETE = object()

scalars = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([0, 1, 16, 512, 4096, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1e-300, 1e300, 12.5, -0.0, 1e-7, 3.0]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(WORDS),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "value", "p", "x"]) | st.text(max_size=5), inner, max_size=3
        )
    ),  # fmt: skip
    max_leaves=8,
)

SNIPPETS = [
    "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,"
    "*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
    "seed: 1\nseed: 2\n",
    "x: " + "[" * 200 + "]" * 200 + "\n",
    "r: &r [*r]\n",
    ": :\n",
    "\t",
    "'",
    "{",
    "---\n---\n",
    "!!python/object/apply:os.system ['true']\n",
    "!!binary aGk=\n",
    "? [a]\n: 1\n",
    "<<: {seed: 3}\n",
    "n: 1" + "0" * 5000 + "\n",
]
SYNTHETIC = {
    "name": "fuzz",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm",
    "cache": {"num_gpu_blocks": 2000},
    "scheduler": {"max_num_batched_tokens": 2048, "max_num_seqs": 32},
    "workload": {
        "type": "synthetic",
        "requests": 12,
        "rate": 20.0,
        "prompt_tokens": {"type": "lognormal", "median": 300, "sigma": 0.5, "max": 4000},
        "output_tokens": {"type": "uniform", "low": 1, "high": 40},
        "shared_prefix": {"prefixes": 2, "tokens": 256},
        "unit_tokens": 128,
    },
}
_LEN = {"type": "uniform", "low": 64, "high": 400}
OTHER_WORKLOADS = {  # closed-loop sessions and agents; grouped prompts on a hybrid model
    "sessions": {"workload": {"type": "sessions", "requests": 12, "rate": 5.0,
                              "context_tokens": _LEN, "turns": {"type": "uniform", "low": 1,
                              "high": 4}, "question_tokens": _LEN, "output_tokens": 64,
                              "system_prompt_tokens": 128}},
    "agent": {"workload": {"type": "agent", "requests": 12, "rate": 5.0, "task_tokens": _LEN,
                           "calls": {"type": "fixed", "value": 3}, "output_tokens": _LEN,
                           "tool_result_tokens": _LEN, "tool_s": {"type": "fixed",
                           "value_s": 0.1}}, "cache": {"num_gpu_blocks": 2000,
                           "eviction": "continuum"}},
    "grouped": {"model": "qwen3.5-0.8b",
                "cache": {"num_gpu_blocks": 4000, "checkpoint": {"type": "dp", "n": 2},
                          "isolation": 3, "checkpoint_capture": "scan"},
                "workload": {"type": "grouped", "groups": 3, "queries": {"type": "fixed",
                             "value": 4}, "context_tokens": _LEN, "own_tokens": _LEN,
                             "output_tokens": {"type": "fixed", "value": 2}, "rate": 5.0},
                "simulation": {"warmup_requests": 4}},
    "disaggregated": {  # a prefill and a decode pool, a link, a codec, a CPU tier
        "model": "mistral-7b-v0.1",
        "pools": [{"role": "prefill", "model": "mistrallite",
                   "cache": {"cpu_tier": {"num_blocks": 500}}},
                  {"role": "decode", "replicas": 2}],
        "links": [{"name": "pd", "producer": "prefill", "consumer": "decode",
                   "bandwidth_gbit_per_s": 50, "latency_s": 1e-5}],
        "transfer": {"codec": {"type": "scd", "rank_k": 64, "rank_v": 64, "rank_h": 256},
                     "first_token": "consumer", "pipelining": True}},
}  # fmt: skip
TRACE_ROWS = [
    {"arrival_s": 0.1 * i, "prompt_tokens": 200 + 37 * i, "output_tokens": 5 + i,
     "blocks": [1, 2 + i], "unit_tokens": 128} for i in range(6)
]  # fmt: skip


def _kvsim_jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _apply(doc: dict, edits) -> dict:
    doc = copy.deepcopy(doc)
    for path, value in edits:
        *head, last = path.split(".")
        node = doc
        for k in head:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    w = doc.get("workload")
    if isinstance(w, dict):  # a fuzz case stays small: a few requests
        m = w.get("max_requests")
        if m is None or (type(m) is int and m > 24):
            w["max_requests"] = 16
    return doc


def _dump(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _edit_text(text: str, edits) -> str:
    for pos, snippet in edits:
        i = pos % (len(text) + 1)
        text = text[:i] + snippet + text[i:]
    return text


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return text.encode("utf-8", "surrogatepass")
    if encoding == "latin-1":
        return text.encode("latin-1", "replace") + "\xe9".encode("latin-1")
    return text.encode(encoding, "surrogatepass")


doc_edits = st.lists(
    st.tuples(st.sampled_from(PATHS), values | st.just(DELETE)), min_size=0, max_size=4
)
text_edits = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from(SNIPPETS) | st.text(max_size=8)),
    max_size=2,
)
encodings = st.sampled_from(["utf-8"] * 8 + ["utf-16", "latin-1"])


def _scenario_case(case: Case, text: bytes, target: str) -> None:
    """validate and run; when validate refuses, run refuses with the same line."""
    path = str(case.write("s.yaml", text))
    v_outcome, v_err = check(target, case, ["validate", path])
    r_outcome, r_err = check(target, case, ["run", path])
    if v_outcome == "error":
        assert (r_outcome, r_err) == ("error", v_err), "validate refused, run did otherwise"


def _scenario(case: Case, base: str) -> dict:
    if base == "synthetic":
        return copy.deepcopy(SYNTHETIC)
    if base in OTHER_WORKLOADS:
        doc = copy.deepcopy(SYNTHETIC)
        doc.update(copy.deepcopy(OTHER_WORKLOADS[base]))
        return doc
    trace = case.write("t.jsonl", _kvsim_jsonl(TRACE_ROWS))
    doc = {k: v for k, v in SYNTHETIC.items() if k != "workload"}
    doc["workload"] = {"type": "trace", "path": str(trace), "format": "kvsim"}
    return doc


def _scenario_documents(base, edits, raw, encoding):
    with Case() as case:
        doc = _apply(_scenario(case, base), edits)
        text = _edit_text(_dump(doc), raw)
        _scenario_case(case, _encode(text, encoding), "scenario")


_scenario_given = given(
    st.sampled_from(["synthetic", "trace", *OTHER_WORKLOADS]),
    doc_edits,
    st.one_of(st.just([]), text_edits),
    encodings,
)
_settings = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=CI_CASES, derandomize=True, **_settings)
@_scenario_given
def test_scenario_documents(base, edits, raw, encoding):
    _scenario_documents(base, edits, raw, encoding)


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_settings)
@_scenario_given
def test_scenario_documents_slow(base, edits, raw, encoding):
    _scenario_documents(base, edits, raw, encoding)


# ---- --set overrides ---------------------------------------------------------------------------
override_paths = st.sampled_from(PATHS) | st.sampled_from(
    ["", ".", "a..b", "cache.eviction.type.x", "name.x", "workload.prompt_tokens.type.z"]
)
override_values = st.one_of(
    values.map(lambda v: json.dumps(v, allow_nan=True) if _jsonable(v) else str(v)),
    st.sampled_from(SNIPPETS),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
VALID_SETS = [
    "cluster.replicas=3", "cache.eviction=lfu", "cache.eviction=fifo", "routing=round_robin",
    "routing=prefix_aware", "workload.rate=5e1", "scheduler.max_waiting=2", "cache.layout=msa",
    "cache.enable_prefix_caching=false", "scheduler.enable_chunked_prefill=false",
    "workload.arrival=gamma", "workload.cv=3", "cache.block_size=32", "slo.ttft_s=0.5",
    "simulation.exact_steps=true", "model=mistral-7b", "hardware=a100-80g", "seed=7",
    "cache.num_gpu_blocks=auto", "scheduler.chunk_tokens=256", "workload.rate_scale=2",
    "cache.cpu_tier.num_blocks=500", "cache.cpu_tier.size_gib=2",
]  # fmt: skip
overrides = st.lists(
    st.one_of(
        st.sampled_from(VALID_SETS),
        st.tuples(override_paths, override_values).map(lambda pv: f"{pv[0]}={pv[1]}"),
        st.text(max_size=6),  # without '='
    ),
    min_size=1,
    max_size=4,
)


def _jsonable(v) -> bool:
    try:
        json.dumps(v, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def _set_overrides(sets):
    with Case() as case:
        path = str(case.write("s.yaml", _dump(SYNTHETIC)))
        args = [a for s in sets for a in ("--set", s)]
        # --set workload.max_requests last: a case stays small whatever the others said.
        args += ["--set", "workload.max_requests=16"]
        check("--set", case, ["validate", path, *args])
        check("--set", case, ["run", path, *args])


@settings(max_examples=CI_CASES, derandomize=True, **_settings)
@given(overrides)
def test_set_overrides(sets):
    _set_overrides(sets)


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_settings)
@given(overrides)
def test_set_overrides_slow(sets):
    _set_overrides(sets)


# ---- traces ------------------------------------------------------------------------------------
json_values = st.recursive(
    st.one_of(
        st.integers(-5, 10**6),
        st.sampled_from([0, 1, 512, 2**63, 10**21, 10**400]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=8),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),  # fmt: skip
    max_leaves=6,
)
KVSIM_FIELDS = ["arrival_s", "prompt_tokens", "output_tokens", "blocks", "unit_tokens",
                "output_blocks", "session", "job", "turn", "extra"]  # fmt: skip
MOONCAKE_FIELDS = ["timestamp", "input_length", "output_length", "hash_ids"]
SHAREGPT_FIELDS = ["from", "value", "tokens", "role", "content", "num_tokens"]
CSV_SHAPES = {  # header and a good row of each CSV format
    "azure": (["TIMESTAMP", "ContextTokens", "GeneratedTokens"],
              ["2023-11-16 18:17:0{i}.0", "120", "7"]),
    "burstgpt": (["Timestamp", "Model", "Request tokens", "Response tokens"],
                 ["{i}", "ChatGPT", "120", "7"]),
    "vidur": (["arrived_at", "num_prefill_tokens", "num_decode_tokens"], ["{i}", "120", "7"]),
    "splitwise": (["request_id", "request_type", "application_id", "arrival_timestamp",
                   "batch_size", "prompt_size", "token_size"],
                  ["{i}", "2", "0", "{i}", "1", "120", "7"]),
}  # fmt: skip


def _json_row_text(row) -> str:
    try:
        return json.dumps(row, allow_nan=True)
    except ValueError:  # an integer too long for json.dumps' str(): write it by hand
        return "{}"


@st.composite
def trace_files(draw):
    fmt = draw(st.sampled_from(["kvsim", "mooncake", "sharegpt", *CSV_SHAPES]))
    n = draw(st.integers(0, 6))
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=200))
    elif fmt in ("kvsim", "mooncake"):
        rows = []
        for i in range(n):
            if fmt == "kvsim":
                row = {"arrival_s": i * 0.5, "prompt_tokens": 300, "output_tokens": 4}
                names = KVSIM_FIELDS
            else:
                row = {"timestamp": i * 500, "input_length": 700, "output_length": 3,
                       "hash_ids": [7, 8 + i]}  # fmt: skip
                names = MOONCAKE_FIELDS
            for key, value in draw(st.lists(st.tuples(st.sampled_from(names), json_values),
                                            max_size=2)):  # fmt: skip
                row[key] = value
            rows.append(_json_row_text(row) if draw(st.integers(0, 9)) else draw(st.text()))
        body = "".join(r + "\n" for r in rows).encode("utf-8", "surrogatepass")
    elif fmt == "sharegpt":
        convs = []
        for _ in range(n):
            turns = [{"from": "human", "value": "q" * 40}, {"from": "gpt", "value": "a" * 20}]
            for key, value in draw(st.lists(st.tuples(st.sampled_from(SHAREGPT_FIELDS),
                                                      json_values), max_size=2)):  # fmt: skip
                turns[draw(st.integers(0, 1))][key] = value
            convs.append(_json_row_text({"conversations": turns}))
        if draw(st.booleans()):  # a JSON array, sometimes never closed
            text = "[\n" + ",\n".join(convs) + ("\n]" if draw(st.integers(0, 9)) else "")
        else:  # JSON Lines
            text = "".join(c + "\n" for c in convs)
        body = text.encode("utf-8", "surrogatepass")
    else:
        header, good = CSV_SHAPES[fmt]
        odd = ["", "1e400", "-1", "12.5", "1" * 200, '"', "nan"]
        cells = st.one_of(st.text(max_size=8), st.sampled_from(odd))
        lines = [",".join(draw(st.permutations(header)) if draw(st.booleans()) else header)]
        for i in range(n):
            row = [c.format(i=i) for c in good]
            for j, cell in draw(st.lists(st.tuples(st.integers(0, len(row)), cells),
                                         max_size=2)):  # fmt: skip
                row.insert(j, cell) if j == len(row) else row.__setitem__(j, cell)
            lines.append(",".join(row))
        body = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    packing = draw(st.sampled_from(["plain"] * 5 + ["gzip", "bz2", "zstd", "truncated"]))
    if packing == "gzip":
        body = gzip.compress(body)
    elif packing == "bz2":
        body = bz2.compress(body)
    elif packing == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
    elif packing == "truncated":
        body = gzip.compress(body)[: max(2, len(body) // 2)]
    return fmt, body


def _traces(trace):
    fmt, body = trace
    with Case() as case:
        path = case.write("trace.bin", body)
        doc = {k: v for k, v in SYNTHETIC.items() if k != "workload"}
        doc["cache"] = {"num_gpu_blocks": 4000}
        doc["workload"] = {"type": "trace", "path": str(path), "format": fmt}
        s = str(case.write("s.yaml", _dump(doc)))
        check("trace", case, ["trace", "stats", str(path), "--format", fmt])
        check("trace", case, ["validate", s])
        check("trace", case, ["run", s])


@settings(max_examples=CI_CASES, derandomize=True, **_settings)
@given(trace_files())
def test_traces(trace):
    _traces(trace)


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_settings)
@given(trace_files())
def test_traces_slow(trace):
    _traces(trace)


# ---- Hugging Face model configs ----------------------------------------------------------------
LLAMA_CONFIG = {  # the fields of meta-llama/Llama-3.1-8B's config.json that kvsim reads
    "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
    "max_position_embeddings": 131072,
}  # fmt: skip
CONFIG_FIELDS = [*LLAMA_CONFIG, "head_dim", "num_local_experts", "num_experts_per_tok",
                 "moe_intermediate_size", "first_k_dense_replace", "kv_lora_rank",
                 "mlp_only_layers", "n_shared_experts", "torch_dtype"]  # fmt: skip


@st.composite
def model_configs(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=100))
    cfg = dict(LLAMA_CONFIG)
    edits = st.tuples(st.sampled_from(CONFIG_FIELDS), json_values | st.just(DELETE))
    for key, value in draw(st.lists(edits, max_size=3)):
        if value is DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return _json_row_text(cfg).encode()


def _model_configs(config):
    with Case() as case:
        case.write("config.json", config)
        doc = dict(SYNTHETIC, model="config.json")
        s = str(case.write("s.yaml", _dump(_apply(doc, []))))
        _scenario_case(case, open(s, "rb").read(), "model")


@settings(max_examples=CI_CASES, derandomize=True, **_settings)
@given(model_configs())
def test_model_configs(config):
    _model_configs(config)


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_settings)
@given(model_configs())
def test_model_configs_slow(config):
    _model_configs(config)


# ---- calibration profiles ----------------------------------------------------------------------
PROFILE = {  # a hand-written profile of the shape kvsim fit writes (values are not measurements)
    "kvsim_profile": 1,
    "device": {"device": "hand-written", "timer": "cuda_events"},
    "grid": {"model": "llama-3.1-8b", "tensor_parallel": 1},
    "ops": {
        "gemm": {
            "params": {
                "launch_s": 5e-6,
                "s_per_flop": 1.5e-15,
                "s_per_byte": 3.5e-13,
                "extra": {},
            },  # fmt: skip
            "ranges": {"tokens": [1, 16384]},
            "points": 125,
            "heldout_mape": 0.03,
            "heldout_max_error": 0.09,
        },
        "attention": {
            "params": {
                "launch_s": 8e-6,
                "s_per_flop": 2.5e-15,
                "s_per_byte": 4e-13,
                "extra": {"segments": 1e-7, "seqs": 2e-8},
            },  # fmt: skip
            "ranges": {},
            "heldout_mape": 0.05,
            "heldout_max_error": 0.1,
        },
    },
    "not_measured": {"step_overhead": "host", "allreduce": "several GPUs"},
    "quality": {"max_heldout_mape": 0.1, "max_heldout_error": 0.25, "accepted": []},
}
PROFILE_PATHS = [
    "kvsim_profile", "device", "grid", "ops", "ops.gemm", "ops.gemm.params",
    "ops.gemm.params.launch_s", "ops.gemm.params.s_per_flop", "ops.gemm.params.extra",
    "ops.gemm.params.extra.tokens", "ops.gemm.ranges", "ops.gemm.ranges.tokens",
    "ops.gemm.heldout_mape", "ops.attention.params.extra.segments", "ops.attention.ranges",
    "ops.elementwise", "ops.bogus", "not_measured", "not_measured.gemm", "quality",
    "quality.accepted", "quality.max_heldout_mape",
]  # fmt: skip


def _profiles(edits, raw):
    with Case() as case:
        profile = _edit_text(_dump(_apply(PROFILE, edits)), raw)
        case.write("p.yaml", profile.encode("utf-8", "surrogatepass"))
        doc = dict(SYNTHETIC, latency={"type": "profile", "path": "p.yaml", "fallback": "roofline"})
        _scenario_case(case, _dump(_apply(doc, [])).encode(), "profile")


_profile_given = given(
    st.lists(st.tuples(st.sampled_from(PROFILE_PATHS), values | st.just(DELETE)), max_size=3),
    st.one_of(st.just([]), text_edits),
)


@settings(max_examples=CI_CASES, derandomize=True, **_settings)
@_profile_given
def test_profiles(edits, raw):
    _profiles(edits, raw)


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_settings)
@_profile_given
def test_profiles_slow(edits, raw):
    _profiles(edits, raw)
