"""The one error type a user sees, and the bounded reading of the YAML files a user writes.

A user's file is data, never a program and never a resource exhaustion: YAML is parsed with the
safe loader (no Python objects) and within fixed bounds — file size, nesting depth and the size
of the document once its aliases are expanded (an "alias bomb", a kilobyte of nested ``&a [*b,
*b, …]``, expands to billions of nodes) — and a key given twice in one mapping is an error rather
than "the last one wins". Errors are one line naming the file, the line and what is allowed; a
bad value is echoed at most :data:`ECHO_CHARS` characters long.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError

ECHO_CHARS = 200
"""The longest echo of a user's value in an error message."""
MAX_YAML_BYTES = 1 << 20
"""A scenario or profile is a few kilobytes; a megabyte leaves room and bounds parsing time."""
MAX_YAML_DEPTH = 64
"""Nesting of mappings and sequences (a scenario nests 4 deep)."""
MAX_YAML_NODES = 100_000
"""Nodes of the document with every alias expanded (what validation walks)."""

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class KvsimError(Exception):
    """A mistake in user input (scenario, trace, command line). The CLI prints it and exits 2."""


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (error messages stay short)."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def echo(value, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: how an error quotes a user's value."""
    return clip(repr(value), limit)


class _StrictLoader(_Loader):
    """The safe loader, refusing a key given twice in one mapping (merge keys ``<<`` aside: a
    merged mapping's keys are defaults that explicit keys override, as YAML specifies), and
    reading ``1e-3`` and ``6e3`` as numbers as YAML 1.2 does (YAML 1.1 wants ``6.0e+3`` and
    would leave a string that a number field then refuses)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class explains it
                    continue
                if duplicate:
                    raise ConstructorError(
                        None, None, f"key {echo(key, 80)} is given twice", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_shape(text: str) -> None:
    """Refuse nesting deeper than :data:`MAX_YAML_DEPTH` before anything recursive runs (the
    event stream is flat, composing nodes is recursive)."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConstructorError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_nodes(root) -> int:
    """Nodes of the composed graph counted as a tree (each alias use counted in full), with a
    memo per node so that the count itself is linear in the graph. A node that contains itself
    (``&a [*a]``) expands without end: :data:`MAX_YAML_NODES` + 1."""
    memo: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: seeing one again is a cycle
    stack = [(root, False)]  # iterative post-order
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            total = 1 + sum(memo[id(c)] for c in _children(node))
            memo[key] = min(total, MAX_YAML_NODES + 1)
            continue
        if key in memo:
            continue
        if key in open_nodes:
            return MAX_YAML_NODES + 1
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in memo)
    return memo[id(root)]


def parse_yaml(text: str):
    """Parse one YAML document within the bounds above; raises ``yaml.YAMLError``."""
    _check_shape(text)
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_nodes(root) > MAX_YAML_NODES:
            raise ConstructorError(
                None,
                None,
                f"more than {MAX_YAML_NODES:,} values once its aliases are expanded",
                root.start_mark,
            )
        try:
            return loader.construct_document(root)
        except (ValueError, OverflowError) as e:  # e.g. an integer of 100,000 digits
            raise ConstructorError(
                None, None, f"a value cannot be read ({clip(str(e), 100)})", root.start_mark
            ) from None
    finally:
        loader.dispose()


def yaml_error_line(e: yaml.YAMLError, where: str, lines: bool = True) -> str:
    """A YAML error as ``where[:line]: not valid YAML (problem)`` (no line if ``lines`` is
    false: a one-line value)."""
    mark = getattr(e, "problem_mark", None)
    at = f"{where}:{mark.line + 1}" if mark is not None and lines else where
    problem = getattr(e, "problem", None) or str(e)
    return f"{at}: not valid YAML ({problem})"


def read_text_file(path: Path, what: str, max_bytes: int = MAX_YAML_BYTES) -> str:
    """A user's UTF-8 text file of at most ``max_bytes``; one-line errors otherwise."""
    try:
        if not path.is_file():
            raise KvsimError(f"{path}: {what} not found")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise KvsimError(f"{echo(str(path))}: cannot read the {what} ({_reason(e)})") from None
    if len(data) > max_bytes:
        raise KvsimError(f"{path}: a {what} is at most {max_bytes:,} bytes; this one is larger")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise KvsimError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the {what} as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def read_yaml_mapping(path: Path, what: str, hint: str = "") -> dict:
    """A user's YAML file that must hold a mapping; one-line errors name the file (and the line
    of a syntax error). ``what`` names the kind of file ("scenario file"), ``hint`` says
    what the mapping holds."""
    text = read_text_file(path, what)
    try:
        doc = parse_yaml(text)
    except yaml.YAMLError as e:
        raise KvsimError(yaml_error_line(e, str(path))) from None
    if not isinstance(doc, dict):
        raise KvsimError(f"{path}: a {what} is a YAML mapping{hint}")
    return doc
