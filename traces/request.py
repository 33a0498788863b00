"""The request record that every trace reader and workload generator produces.

A request's prompt is described by ``blocks``: one content id per *content unit* of ``unit_tokens``
tokens (512 in Mooncake traces). Ids are chain ids: two requests with the same id at position i
share an identical prefix up to the end of unit i, which is what makes prefix caching decidable
from a trace without the text. ``output_blocks`` are the chain ids of the units after the
prompt's that its answer fills (unit len(blocks) + i), so that a later turn whose prompt contains
the answer can hit it. A session (a conversation or an agent job) is a chain of turns: turn 0
arrives at ``arrival_s``, each later turn ``think_s`` after the previous one finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOKENS = 100_000_000
"""Token counts of one request at most: far above any context window, far below overflow."""


class TraceError(ValueError):
    """A trace file or generator setting a user must fix; the message is one line with the place."""


def echo(value, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters: how an error quotes a value from a file."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


@dataclass(slots=True, frozen=True)
class Request:
    """One LLM call as a trace records it."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    blocks: tuple[int, ...] = ()
    unit_tokens: int = 512
    output_blocks: tuple[int, ...] = ()
    session: int | None = None
    job: int | None = None
    turn: int = 0
    think_s: float = 0.0
    """Closed loop: seconds between the previous turn's finish and this turn's arrival (a user's
    think time, an agent's tool call). ``arrival_s`` then only orders a session's first turn."""
    lengths_estimated: bool = False
    """Its token counts are estimated from text (a conversation file without counts)."""
