"""The one error type a user sees: a single line that names the place and what is allowed."""

from __future__ import annotations

from pathlib import Path

import yaml


class KvsimError(Exception):
    """A mistake in user input (scenario, trace, command line). The CLI prints it and exits 2."""


def read_yaml_mapping(path: Path, what: str, hint: str = "") -> dict:
    """A user's YAML file that must hold a mapping; one-line errors name the file (and the line
    of a syntax error). ``what`` names the kind of file ("scenario file"), ``hint`` says
    what the mapping holds."""
    if not path.is_file():
        raise KvsimError(f"{path}: {what} not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise KvsimError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise KvsimError(f"{path}: a {what} is a YAML mapping{hint}")
    return doc
