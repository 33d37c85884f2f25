"""``parse_request``: a Kafka message value (+ headers) → ``PoolingRequest``, safely.

A message value comes out one of three ways, and the worker acts on each differently:

- a ``PoolingRequest``: valid, ready for ``poolworker.tasks.plan``;
- ``InvalidRequest``: readable JSON but a bad request; the caller gets an error *result*,
  addressed with whatever request id, reply topic and metadata could be recovered;
- ``UnparseableMessage``: not something we can even answer (tombstone, oversized, not UTF-8,
  not JSON, too deeply nested, not an object); the raw bytes go to the dead-letter topic.

The decoding is hardened against hostile input (deep nesting, NaN, huge integers, duplicate
keys, lone surrogates) because anything that escapes here as another exception would stall a
partition on a poison message.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import orjson
from pydantic import ValidationError

from .errors import ErrorInfo, InvalidRequest, UnparseableMessage
from .fields import split_fields
from .request import _TOPIC, DEFAULT_MAX_ITEMS, TASKS, PoolingRequest, _kind

DEFAULT_MAX_REQUEST_BYTES = 8_388_608
DEFAULT_MAX_DEPTH = 32

# A JSON string, or an unterminated one running to the end of the text. Written so that a match
# attempt never fails once it starts at a quote: no backtracking, linear time on hostile input.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a str from valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings, computed without recursion, so that a
    megabyte of ``[`` costs a scan and never a ``RecursionError`` or a crashed C stack."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


class _Rejected:
    """Stands in for a JSON value we refuse (NaN, ±Infinity, a float overflowing to inf, an
    integer too long to convert) so that parsing continues and the error can name its field."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _DuplicateKeys(dict):
    """A JSON object that repeated a key: parsers disagree on which value wins, so we refuse."""

    duplicate: str = ""


class _Decoder:
    """``json.loads`` with hooks that mark refused values instead of accepting or aborting."""

    def __init__(self) -> None:
        self.suspect = False  # a marker was created: the tree needs a walk

    def _constant(self, name: str) -> _Rejected:
        self.suspect = True
        return _Rejected(f"{name} is not allowed: numbers must be finite")

    def _float(self, literal: str) -> float | _Rejected:
        value = float(literal)
        if math.isfinite(value):
            return value
        self.suspect = True
        return _Rejected(f"{literal[:40]} is out of range: numbers must be finite")

    def _int(self, literal: str) -> int | _Rejected:
        try:
            return int(literal)
        except ValueError:
            self.suspect = True
            return _Rejected(f"an integer of {len(literal)} digits is too long")

    def _object(self, pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        self.suspect = True
        seen: set[str] = set()
        dup = _DuplicateKeys(obj)
        dup.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return dup

    def loads(self, text: str) -> Any:
        hooks = {"parse_constant": self._constant, "parse_float": self._float, "object_pairs_hook": self._object}
        try:
            return json.loads(text, **hooks)
        except json.JSONDecodeError:
            raise
        except ValueError:
            # An integer beyond Python's int-string limit; only then pay for a per-int hook.
            return json.loads(text, parse_int=self._int, **hooks)


_INT64 = float(2**63)


def _fast_loads(text: str) -> dict | None:
    """The common body decoded by orjson (several times faster than ``json`` with hooks), or
    None when the careful ``_Decoder`` must decide. orjson refuses NaN, infinities and numbers
    that overflow. Texts with escapes (``\\"`` in strings, ``\\u`` surrogates) go the careful
    way, and so do texts with whitespace after a quote (perhaps between a key and its colon),
    and any float beyond 2**63 in magnitude (orjson reads integers past 64 bits
    as floats; ``json`` keeps them integers). Duplicate keys, which orjson merges silently, are
    ruled out by counting: without escapes every ``"`` delimits a string and, with no
    whitespace after a quote, every key written is one ``":`` — so as many ``":`` as keys
    in the decoded tree means no key was written twice (a ``":`` that opens a string value only
    makes the count larger, and then the careful path decides)."""
    if "\\" in text or '" ' in text or '"\n' in text or '"\t' in text or '"\r' in text:
        return None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or _keys_if_plain(body) != text.count('":'):
        return None
    return body


def _keys_if_plain(value: dict) -> int:
    """How many keys the decoded tree holds; -1 if it holds a float orjson may have made from
    a long integer."""
    keys = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        values = item.values() if type(item) is dict else item
        if type(item) is dict:
            keys += len(item)
        for x in values:
            kind = type(x)
            if kind is dict or kind is list:
                stack.append(x)
            elif kind is float and not -_INT64 < x < _INT64:
                return -1
    return keys


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _first_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first refused value in document order as ``(path, reason)``, walking with an explicit
    stack (depth is already bounded, but a wide tree must not cost recursion either)."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return where, f"{where or 'value'} contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)"
        elif isinstance(item, _Rejected):
            return where, f"{where}: {item.reason}"
        elif isinstance(item, dict):
            if isinstance(item, _DuplicateKeys):
                key = _join(where, item.duplicate)
                return key, f"{key} is given more than once"
            for key in reversed(list(item)):
                if _SURROGATE.search(key):
                    return where, f"a key of {where or 'the request'} contains a lone UTF-16 surrogate"
                stack.append((_join(where, key), item[key]))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", item[i]) for i in reversed(range(len(item))))
    return None


# ------------------------------------------------------------------------------------------------
# parse_request
# ------------------------------------------------------------------------------------------------
_HEADER_FIELDS = ("task", "model", "request_id")


def _header_values(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """The routing headers, decoded; the first of a repeated header wins, undecodable ones are
    ignored (the body may still carry the field)."""
    found: dict[str, str] = {}
    for entry in headers or ():
        try:
            name, raw = entry
        except (TypeError, ValueError):
            continue
        if name in _HEADER_FIELDS and name not in found and isinstance(raw, (bytes, bytearray)):
            try:
                found[name] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                continue
    return found


def _decode_body(value: bytes | None, max_request_bytes: int, max_depth: int) -> tuple[dict, bool]:
    """Bytes → JSON object, or ``UnparseableMessage``. Also says whether the tree needs a walk."""
    if value is None:
        raise UnparseableMessage("tombstone: the message has no value")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"value must be bytes or None, got {type(value).__name__}")
    if len(value) > max_request_bytes:
        raise UnparseableMessage(f"message is {len(value)} bytes, more than max_request_bytes={max_request_bytes}")
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnparseableMessage(f"not valid UTF-8 (byte {exc.start})") from None
    if text.count("[") + text.count("{") > max_depth and _nesting_depth(text) > max_depth:
        raise UnparseableMessage(f"JSON nested deeper than max_depth={max_depth}")
    fast = _fast_loads(text)
    if fast is not None:
        return fast, False
    decoder = _Decoder()
    try:
        body = decoder.loads(text)
    except json.JSONDecodeError as exc:
        raise UnparseableMessage(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # defensive: the depth scan should prevent these
        raise UnparseableMessage(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UnparseableMessage(f"the JSON value is {_kind(body)}, not an object")
    return body, decoder.suspect or bool(_SURROGATE_ESCAPE.search(text))


def _recover(body: dict, headers: dict[str, str], suspect: bool) -> dict[str, Any]:
    """Addressing fields for an error result: body first, then headers, each only if it is
    safe to echo (a ``str`` without lone surrogates; metadata a clean object)."""

    def clean(value: Any) -> bool:
        return not suspect or _first_problem(value) is None

    def text(name: str) -> str | None:
        value = body.get(name)
        if isinstance(value, str) and clean(value):
            return value
        return headers.get(name)

    reply_to = body.get("reply_to")
    metadata = body.get("metadata")
    return {
        "request_id": text("request_id"),
        "task": text("task"),
        "model": text("model"),
        "reply_to": reply_to if isinstance(reply_to, str) and _TOPIC.fullmatch(reply_to) else None,
        "metadata": metadata if type(metadata) is dict and clean(metadata) else None,
    }


def _param_of(loc: tuple[int | str, ...]) -> str | None:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, part)
    return path or None


def _error_from(exc: ValidationError) -> ErrorInfo:
    """The first pydantic error as an ``ErrorInfo`` naming its field."""
    err = exc.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    if "param" in ctx:
        return ErrorInfo(type="invalid_request", message=str(ctx["detail"]), param=str(ctx["param"]))
    param = _param_of(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])  # the key itself, even "" or one with dots
        close = difflib.get_close_matches(key, PoolingRequest.model_fields, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return ErrorInfo(type="invalid_request", message=f"unknown field {key!r}{hint}", param=key)
    if kind == "missing":
        return ErrorInfo(type="invalid_request", message=f"{param} is required", param=param)
    if param == "task" and kind == "literal_error":
        return ErrorInfo(type="unsupported_task", message=f"task must be one of {', '.join(TASKS)}", param=param)
    got = f", got {err['input']!r:.80}" if kind == "literal_error" else ""
    return ErrorInfo(type="invalid_request", message=f"{param}: {err['msg']}{got}", param=param)


def parse_request(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None = None,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> PoolingRequest:
    """A Kafka message value (+ headers) → ``PoolingRequest``.

    Raises ``UnparseableMessage`` for what cannot be answered (dead-letter it) and
    ``InvalidRequest`` for what can (publish its error). Headers ``task``, ``model`` and
    ``request_id`` fill fields the body leaves out or null; the body wins when both are set.
    """
    body, suspect = _decode_body(value, max_request_bytes, max_depth)
    tags = _header_values(headers)
    for name, tag in tags.items():
        if body.get(name) is None:
            body[name] = tag
    if suspect and (problem := _first_problem(body)) is not None:
        param, message = problem
        raise InvalidRequest(ErrorInfo(type="invalid_request", message=message, param=param or None), **_recover(body, tags, suspect))
    removed = _removed_parameter(body)
    if removed is not None:
        raise InvalidRequest(removed, **_recover(body, tags, suspect))
    fields = dict(body)
    form, ignored = split_fields(fields)
    fields.update(form=form, ignored=tuple(ignored), warnings=tuple(ignored.values()))
    try:
        return PoolingRequest.model_validate(fields, context={"max_items": max_items})
    except ValidationError as exc:
        raise InvalidRequest(_error_from(exc), **_recover(body, tags, suspect)) from None


# vLLM's reject_removed_pooling_parameters: parameters it refuses by name rather than ignore.
_REMOVED_TASKS = {"score": "`score` task was removed; use `classify` instead.",
                  "encode": "`encode` task was removed; use `token_embed` or `token_classify` instead."}


def _removed_parameter(body: dict) -> ErrorInfo | None:
    if "normalize" in body:
        return ErrorInfo(type="invalid_request", message="Parameter `normalize` was removed; use `use_activation` instead.",
                         param="normalize")
    pooling_task = body.get("pooling_task")
    if isinstance(pooling_task, str) and pooling_task in _REMOVED_TASKS:
        return ErrorInfo(type="invalid_request", message=_REMOVED_TASKS[pooling_task], param="pooling_task")
    return None
