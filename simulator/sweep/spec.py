"""Sweep files: a base scenario and a grid of ``--set`` overrides, expanded into points.

A sweep writes down the loop over ``kvsim run BASE --set …`` that a capacity or policy study is
made of (DESIGN §8). Its file names the base scenario, overrides fixed for every point (``set``)
and a grid: a mapping of override path → list of values, whose cartesian product gives the points
(like nested loops, the last path varying fastest), or a list of such mappings, whose products are
concatenated in order (policies whose parameters differ). Each point is a list of ``path=value``
texts that ``kvsim run --set`` takes unchanged, so a point *is* ``kvsim run BASE --set …``: the
texts are applied by the scenario's own override code, and every value is checked to come back
from its text as it was written in the sweep file.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import KvsimError, echo, read_yaml_mapping
from ..scenario import apply_overrides, load_scenario

SWEEP_KEYS = ("name", "base", "set", "grid", "plots")
PLOT_FLAGS = ("log_x", "log_y", "maximize_x", "maximize_y")
PLOT_KEYS = ("x", "y", "series", "kind", *PLOT_FLAGS, "title")
PLOT_KINDS = ("curve", "pareto")
MAX_POINTS = 10_000
"""Points of one sweep at most: a typo in a grid should not ask for a million simulations."""

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@()-]{0,99}")


@dataclass(frozen=True)
class Point:
    """One simulation of a sweep."""

    index: int
    """Position in the sweep's point order (the results table's row)."""
    values: tuple[tuple[str, Any], ...]
    """(override path, value) pairs in the order they are applied: ``set`` first, then the grid."""
    overrides: tuple[str, ...]
    """The same as ``path=value`` texts, exactly what ``kvsim run --set`` takes."""

    @property
    def key(self) -> str:
        """A short stable hash of the overrides (names the point's folder)."""
        return hashlib.sha256("\n".join(self.overrides).encode()).hexdigest()[:8]

    @property
    def folder(self) -> str:
        """The point's folder, relative to the sweep's results folder."""
        return f"points/{self.index}-{self.key}"


@dataclass(frozen=True)
class Plot:
    """One chart of the sweep report."""

    x: str
    y: str
    series: str | None = None
    kind: str = "curve"
    log_x: bool = False
    log_y: bool = False
    maximize_x: bool = False
    maximize_y: bool = False
    title: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    path: Path
    name: str
    base: Path
    """The base scenario, as a path from the current folder."""
    points: tuple[Point, ...]
    plots: tuple[Plot, ...] | None
    """None: the report draws its default charts."""

    def override_paths(self) -> list[str]:
        """Every override path, in first-appearance order over the points."""
        return list(dict.fromkeys(p for point in self.points for p, _ in point.values))


def flow_yaml(value: Any) -> str:
    """``value`` as one line of YAML flow text (``{type: every, k: 256}``, ``[1, 2]``, ``lru``)."""
    text = yaml.safe_dump(
        value, default_flow_style=True, width=2**31 - 1, sort_keys=False, allow_unicode=True
    )
    return text.removesuffix("\n").removesuffix("\n...")


def _canonical(value: Any) -> str:
    # 1, 1.0 and true are equal in Python; their YAML texts are not.
    return yaml.safe_dump(value, sort_keys=True)


def _set_text(path: str, value: Any, where: str) -> str:
    """The ``path=value`` text that ``--set`` turns back into exactly ``value``."""
    quoted = yaml.safe_dump(
        value, default_flow_style=True, default_style='"', width=2**31 - 1, allow_unicode=True
    ).removesuffix("\n")
    # Plain text first; double-quoted strings where plain text would read back as another type.
    for text in (flow_yaml(value), quoted):
        try:
            node: Any = apply_overrides({}, [f"{path}={text}"], where)
            for k in path.split("."):
                node = node[k]
        except (KvsimError, KeyError, TypeError):
            continue
        if _canonical(node) == _canonical(value):
            return f"{path}={text}"
    raise KvsimError(
        f"{where}: {echo(value)} is not allowed: it cannot be written as a --set value"
    )


def _check_path(path: Any, where: str) -> str:
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise KvsimError(
            f"{where}: {echo(path)} is not allowed: an override path is dotted field names, "
            "e.g. cluster.replicas"
        )
    return path


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise KvsimError(f"{where}: {echo(value)} is not allowed: true or false")
    return value


def _column_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KvsimError(
            f"{where}: {echo(value)} is not allowed: a column name, e.g. cluster.replicas or "
            "ttft_s.p99"
        )
    return value


def _unknown(doc: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in doc:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            allowed_keys = ", ".join(allowed)
            raise KvsimError(f"{where}: unknown key {echo(key)}{did} (allowed: {allowed_keys})")


def _plot(doc: Any, where: str) -> Plot:
    if not isinstance(doc, dict):
        raise KvsimError(f"{where}: {echo(doc)} is not allowed: a mapping such as "
                         "{x: cluster.replicas, y: ttft_s.p99}")  # fmt: skip
    _unknown(doc, PLOT_KEYS, where)
    for key in ("x", "y"):
        if key not in doc:
            raise KvsimError(f"{where}.{key}: required field is missing")
    kind = doc.get("kind", "curve")
    if kind not in PLOT_KINDS:
        raise KvsimError(f"{where}.kind: {echo(kind)} is not allowed: {' or '.join(PLOT_KINDS)}")
    flags = {k: _flag(doc[k], f"{where}.{k}") for k in PLOT_FLAGS if k in doc}
    for k in ("maximize_x", "maximize_y"):
        if k in flags and kind != "pareto":
            raise KvsimError(
                f"{where}.{k}: {echo(flags[k])} is not allowed: only with kind: pareto"
            )
    series = doc.get("series")
    title = doc.get("title")
    if title is not None and not isinstance(title, str):
        raise KvsimError(f"{where}.title: {echo(title)} is not allowed: a text")
    return Plot(
        x=_column_name(doc["x"], f"{where}.x"),
        y=_column_name(doc["y"], f"{where}.y"),
        series=None if series is None else _column_name(series, f"{where}.series"),
        kind=kind,
        title=title,
        **flags,
    )


def _grid_products(grid: Any, source: str, fixed: dict) -> list[list[tuple[str, Any]]]:
    """The grid's points as (path, value) lists, in order; one-line errors for a bad grid."""
    if isinstance(grid, dict):
        tables = [("grid", grid)]
    elif isinstance(grid, list) and grid:
        tables = [(f"grid[{i}]", g) for i, g in enumerate(grid)]
    else:
        raise KvsimError(
            f"{source}: grid: {echo(grid)} is not allowed: a mapping of override path → list of "
            "values, or a list of such mappings"
        )
    total = 0
    for where, table in tables:
        if not isinstance(table, dict) or not table:
            raise KvsimError(
                f"{source}: {where}: {echo(table)} is not allowed: a mapping of override path → "
                "list of values, e.g. {cluster.replicas: [1, 2, 4]}"
            )
        for path, values in table.items():
            _check_path(path, f"{source}: {where}")
            if path in fixed:
                raise KvsimError(
                    f"{source}: {where}.{path}: also under set:; a path is either fixed or varied"
                )
            if not isinstance(values, list) or not values:
                raise KvsimError(
                    f"{source}: {where}.{path}: {echo(values)} is not allowed: a non-empty list of "
                    "values, e.g. [1, 2, 4]"
                )
        total += math.prod(len(v) for v in table.values())
    if total > MAX_POINTS:
        raise KvsimError(
            f"{source}: grid: {total} points is not allowed: at most {MAX_POINTS} in one sweep"
        )
    return [
        list(zip(table, combo, strict=True))
        for _, table in tables
        for combo in itertools.product(*table.values())
    ]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; raises :class:`KvsimError` (one line) on bad input."""
    path = Path(path)
    doc = read_yaml_mapping(path, "sweep file", " (base:, grid:, optional name:, set:, plots:)")
    source = str(path)
    _unknown(doc, SWEEP_KEYS, source)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KvsimError(
            f"{source}: name: {echo(name)} is not allowed: letters, digits and ._+=,@()- (it names "
            "the folder runs/<name>), at most 100 characters"
        )
    if "base" not in doc:
        raise KvsimError(f"{source}: base: required field is missing (the scenario file)")
    base_text = doc["base"]
    if not isinstance(base_text, str) or not base_text:
        raise KvsimError(f"{source}: base: {echo(base_text)} is not allowed: a scenario file path")
    base = Path(os.path.normpath(path.parent / base_text))
    if not base.is_file():
        raise KvsimError(f"{source}: base: scenario file {base} not found")
    fixed = doc.get("set") or {}
    if not isinstance(fixed, dict):
        raise KvsimError(f"{source}: set: {echo(fixed)} is not allowed: a mapping of path → value")
    for p in fixed:
        _check_path(p, f"{source}: set")
    if "grid" not in doc:
        raise KvsimError(f"{source}: grid: required field is missing")
    combos = _grid_products(doc["grid"], source, fixed)
    texts: dict[tuple[str, str], str] = {}

    def text(p: str, v: Any) -> str:
        k = (p, _canonical(v))
        if k not in texts:
            texts[k] = _set_text(p, v, f"{source}: {'set' if p in fixed else 'grid'}.{p}")
        return texts[k]

    points = []
    for i, combo in enumerate(combos):
        values = tuple(fixed.items()) + tuple(combo)
        points.append(Point(i, values, tuple(text(p, v) for p, v in values)))
    plots = doc.get("plots")
    if plots is not None:
        if not isinstance(plots, list):
            raise KvsimError(f"{source}: plots: {echo(plots)} is not allowed: a list of charts")
        plots = tuple(_plot(d, f"{source}: plots[{i}]") for i, d in enumerate(plots))
    return Sweep(path, name, base, tuple(points), plots)


def resolve_points(
    sweep: Sweep, policy_path: tuple[str, ...] = (), hardware_files: tuple[str, ...] = ()
) -> list[str]:
    """Every point's scenario, validated before anything runs, as its resolved YAML text.

    A bad point is a one-line error naming the sweep file and the point's overrides; two points
    that resolve to the same scenario are an error (the grid repeats itself)."""
    resolved: list[str] = []
    seen: dict[str, int] = {}
    for point in sweep.points:
        try:
            scenario = load_scenario(
                sweep.base, list(point.overrides), policy_path, sweep.path.parent, hardware_files
            )
            text = scenario.resolved_yaml()
        except KvsimError as e:
            raise KvsimError(f"{sweep.path}: point {point.index} ({_shown(point)}): {e}") from None
        if text in seen:
            raise KvsimError(
                f"{sweep.path}: grid: point {point.index} ({_shown(point)}) is the same "
                f"scenario as point {seen[text]}; each point must differ"
            )
        seen[text] = point.index
        resolved.append(text)
    return resolved


def _shown(point: Point) -> str:
    return " ".join(f"--set {o}" for o in point.overrides) or "no overrides"
