"""ShareGPT-style conversation files as multi-turn sessions.

A file is a JSON array of conversations, or JSON Lines (one conversation a line), read as a
stream (one conversation in memory at a time; gzip, bzip2 and Zstandard are decompressed on the
way as for every trace). A conversation is ``{"conversations": [{"from": ..., "value": ...},
…]}`` (ShareGPT) or ``{"messages": [{"role": ..., "content": ...}, …]}``; speakers ``human`` /
``user`` ask, ``gpt`` / ``assistant`` / ``chatgpt`` / ``bard`` / ``bing`` / ``model`` answer,
``system`` adds to the context.

- **Lengths**: a turn's ``tokens`` (or ``num_tokens``) when it has one; otherwise an estimate,
  ⌈characters / 4⌉ (OpenAI's rule of thumb for English text; at least 1 for a non-empty turn).
  Estimated requests are flagged (``Request.lengths_estimated``) and counted in the summary.
- **Requests**: each question with the answer after it is one request (consecutive questions
  merge; a last question without an answer is left out): its prompt is the whole conversation
  so far plus the question — what a chat client sends — and its output the answer.
- **Sessions**: a conversation is a closed-loop session (its turns in order, each released when
  the previous one finishes, with no think time: the file records none); conversation i (the
  i-th with a request) starts at i seconds, so the file's own rate is one conversation a second
  and ``workload.rate_scale`` sets another.
- **Prefix caching**: content units of :data:`UNIT_TOKENS` tokens with chain ids: a unit wholly
  inside a turn's prompt has the same id in every later turn of its conversation (the history is
  append-only), a prompt's partial last unit an id of its own, and an answer's whole units
  (``output_blocks``) the ids the next turn's prompt will have — so a later turn hits its history.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from pathlib import Path

from .readers import decompressed, decompression_errors, read_error
from .request import MAX_TOKENS, Request, TraceError, echo

UNIT_TOKENS = 16
"""Tokens per content unit (vLLM's default block size, which must divide it)."""
CHARS_PER_TOKEN = 4
MAX_OBJECT_CHARS = 64 << 20
"""A conversation of more text than this is refused rather than read into memory."""
_CHUNK = 1 << 20
_ASK = {"human", "user"}
_ANSWER = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}
_CONTEXT = {"system"}
_UNIT_SPACE = 1 << 24
"""Units a conversation may have (ids conversation · 2²⁴ + unit)."""


def _objects(path: Path) -> Iterator[tuple[int, object]]:
    """(line, value) of each top-level item of a JSON array, or of each JSON Lines value."""
    decoder = json.JSONDecoder()
    errors = decompression_errors()
    text_decoder = codecs.getincrementaldecoder("utf-8")("strict")
    buf, pos, line, eof = "", 0, 1, False
    in_array = None  # unknown until the first character
    kind = None
    try:
        with open(path, "rb") as raw:
            f, kind = decompressed(raw)
            with f:

                def more() -> bool:
                    nonlocal buf, pos, eof
                    if eof:
                        return False
                    chunk = f.read(_CHUNK)
                    try:
                        text = text_decoder.decode(chunk, final=not chunk)
                    except UnicodeDecodeError:
                        raise TraceError(f"{path}:{line}: not UTF-8 text") from None
                    buf = buf[pos:] + text
                    pos = 0
                    eof = not chunk
                    return bool(chunk)

                def skip(chars: str) -> str | None:
                    """Skip whitespace and ``chars``; the next character (None at the end)."""
                    nonlocal pos, line
                    while True:
                        while pos < len(buf) and (buf[pos].isspace() or buf[pos] in chars):
                            line += buf[pos] == "\n"
                            pos += 1
                        if pos < len(buf):
                            return buf[pos]
                        if not more():
                            return None

                first = skip("\ufeff")
                if first is None:
                    raise TraceError(f"{path}: no requests in the trace")
                in_array = first == "["
                if in_array:
                    pos += 1
                while True:
                    c = skip("," if in_array else "")
                    if c is None:
                        if in_array:
                            raise TraceError(f"{path}:{line}: the JSON array is not closed")
                        return
                    if in_array and c == "]":
                        pos += 1
                        if skip("") is not None:
                            raise TraceError(f"{path}:{line}: text after the JSON array")
                        return
                    while True:
                        try:
                            value, end = decoder.raw_decode(buf, pos)
                            break
                        except json.JSONDecodeError as e:
                            if len(buf) - pos > MAX_OBJECT_CHARS:
                                raise TraceError(
                                    f"{path}:{line}: a conversation longer than "
                                    f"{MAX_OBJECT_CHARS:,} characters; is this ShareGPT JSON?"
                                ) from None
                            if not more():
                                where = line + buf.count("\n", pos, e.pos)
                                raise TraceError(f"{path}:{where}: not valid JSON ({e.msg})") \
                                    from None  # fmt: skip
                        except RecursionError:
                            raise TraceError(f"{path}:{line}: JSON nested too deep") from None
                    yield line, value
                    line += buf.count("\n", pos, end)
                    pos = end
    except TraceError:
        raise
    except errors as e:
        raise read_error(path, line - 1, kind, e) from None


def _turns(conv: object, where: str) -> list[tuple[str, int, bool]]:
    """A conversation's turns as (role, tokens, estimated)."""
    if not isinstance(conv, dict):
        raise TraceError(f"{where}: expected a conversation (a JSON object)")
    turns = conv.get("conversations", conv.get("messages"))
    if not isinstance(turns, list):
        raise TraceError(f"{where}: expected a list under 'conversations' (or 'messages')")
    out = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            raise TraceError(f"{where}: turn {k} is not a JSON object")
        role = t.get("from", t.get("role"))
        text = t.get("value", t.get("content", ""))
        if not isinstance(role, str) or role.lower() not in _ASK | _ANSWER | _CONTEXT:
            raise TraceError(
                f"{where}: turn {k}: speaker {echo(role, 40)}; allowed: human, user, gpt, "
                "assistant, chatgpt, bard, bing, model, system"
            )
        if not isinstance(text, str):
            raise TraceError(f"{where}: turn {k}: its text is {echo(text, 40)}; expected a string")
        given = t.get("tokens", t.get("num_tokens"))
        if given is not None:
            if (
                isinstance(given, bool)
                or not isinstance(given, int)
                or not 0 <= given <= MAX_TOKENS
            ):
                raise TraceError(f"{where}: turn {k}: tokens is {echo(given, 40)}; expected an "
                                 f"integer from 0 to {MAX_TOKENS:,}")  # fmt: skip
            out.append((role.lower(), given, False))
        else:
            out.append((role.lower(), math.ceil(len(text) / CHARS_PER_TOKEN), True))
    return out


def _requests(turns, conv: int, first_id: int, start_s: float, where: str) -> list[Request]:
    """The requests of one conversation (see the module docstring)."""
    out: list[Request] = []
    history = 0
    ask, ask_est = 0, False
    context_est = False
    for role, tokens, est in turns:
        if role in _CONTEXT:
            history += tokens
            context_est |= est
        elif role in _ASK:
            ask += tokens
            ask_est |= est
        elif ask:  # an answer to the question(s) before it
            prompt, output = history + ask, max(1, tokens)
            if prompt + output > MAX_TOKENS:
                raise TraceError(f"{where}: a prompt and answer of {prompt + output:,} tokens; "
                                 f"at most {MAX_TOKENS:,}")  # fmt: skip
            k = len(out)
            full = prompt // UNIT_TOKENS
            blocks = [conv * _UNIT_SPACE + j for j in range(full)]
            if prompt % UNIT_TOKENS:  # the partial last unit: this turn's own content
                blocks.append(-(conv * _UNIT_SPACE + k + 1))
            answered = (prompt + output) // UNIT_TOKENS
            out_blocks = [conv * _UNIT_SPACE + j for j in range(len(blocks), answered)]
            if answered >= _UNIT_SPACE:
                raise TraceError(f"{where}: conversation too long ({prompt + output:,} tokens)")
            out.append(Request(
                first_id + k, start_s if k == 0 else 0.0, prompt, output, tuple(blocks),
                UNIT_TOKENS, tuple(out_blocks), conv, None, k, 0.0,
                lengths_estimated=ask_est or est or context_est,
            ))  # fmt: skip
            history = prompt + tokens
            ask, ask_est = 0, False
        else:  # an answer with no question before it (a greeting): context for what follows
            history += tokens
            context_est |= est
    return out


def read_sharegpt(path: Path) -> Iterator[Request]:
    """Requests of a ShareGPT-style conversation file, conversation after conversation."""
    path = Path(path)
    conv = 0
    next_id = 0
    for line, value in _objects(path):
        where = f"{path}:{line}"
        reqs = _requests(_turns(value, where), conv, next_id, float(conv), where)
        if reqs:
            yield from reqs
            conv += 1
            next_id += len(reqs)
    if conv == 0:
        raise TraceError(f"{path}: no requests in the trace (no question with an answer)")
