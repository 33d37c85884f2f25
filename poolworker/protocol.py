"""Request and result messages: the Kafka-facing contract (DESIGN.md §4).

A message value goes through ``parse_request`` and comes out one of three ways, and the worker
acts on each differently:

- a ``PoolingRequest``: valid, ready for ``poolworker.tasks.plan``;
- ``InvalidRequest``: readable JSON but a bad request; the caller gets an error *result*,
  addressed with whatever request id, reply topic and metadata could be recovered;
- ``UnparseableMessage``: not something we can even answer (tombstone, oversized, not UTF-8,
  not JSON, too deeply nested, not an object); the raw bytes go to the dead-letter topic.

Field names and response bodies follow vLLM's HTTP API so that a body that works there works
here. Validation is strict on purpose: a request is machine-written, and a silently coerced
``"5"`` or an ignored misspelt field (``"inputs"``) would hide a caller's bug behind a plausible
answer.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Annotated, Any, Literal, NoReturn, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

Task = Literal["embed", "classify", "score", "rerank", "token_embed", "token_classify", "reward", "pooling"]
PoolingTask = Literal["embed", "classify", "token_embed", "token_classify"]
TASKS: tuple[str, ...] = get_args(Task)

DEFAULT_MAX_REQUEST_BYTES = 8_388_608
DEFAULT_MAX_ITEMS = 4096
DEFAULT_MAX_DEPTH = 32

# A Kafka topic name: the only characters the broker accepts, at most 249 of them.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class ErrorInfo(BaseModel):
    """Why a request failed, as sent to the caller in ``error``.

    ``type`` is one of: ``invalid_request`` (the body is wrong), ``unsupported_task`` (no such
    task, or the model cannot do it), ``unknown_model``, ``input_too_long``, ``internal_error``.
    ``param`` names the offending field as a path (``input[3]``, ``metadata.tags[0]``) when one
    field is to blame, so a caller can fix it without reading the message.
    """

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    param: str | None = None


class UnparseableMessage(Exception):
    """A message that cannot be answered at all; the worker dead-letters its raw bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequest(Exception):
    """A readable request that is wrong; the worker publishes ``error`` as its result.

    The other attributes are recovered on a best-effort basis (from the body, then the Kafka
    headers) so that the error result still reaches the caller and carries its metadata; each is
    None when it could not be recovered in a form that is safe to echo.
    """

    def __init__(
        self,
        error: ErrorInfo,
        *,
        request_id: str | None = None,
        task: str | None = None,
        model: str | None = None,
        reply_to: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        self.task = task
        self.model = model
        self.reply_to = reply_to
        self.metadata = metadata

    @classmethod
    def for_request(cls, request: PoolingRequest, error: ErrorInfo) -> InvalidRequest:
        """An error about an already-parsed request (found later, e.g. while planning)."""
        return cls(
            error,
            request_id=request.request_id,
            task=request.task,
            model=request.model,
            reply_to=request.reply_to,
            metadata=request.metadata,
        )


# ------------------------------------------------------------------------------------------------
# The request model
# ------------------------------------------------------------------------------------------------
def _fail(param: str, detail: str) -> NoReturn:
    """Raise inside validation with the exact field path, which pydantic's ``loc`` cannot give
    for checks made by hand (an item deep inside a list)."""
    raise PydanticCustomError("invalid_request", "{detail}", {"param": param, "detail": detail})


def _max_items(info: ValidationInfo) -> int:
    context = info.context if isinstance(info.context, Mapping) else {}
    return int(context.get("max_items", DEFAULT_MAX_ITEMS))


def _check_list(value: list, field: str, max_items: int) -> None:
    if not value:
        _fail(field, f"{field} must not be an empty list")
    if len(value) > max_items:
        _fail(field, f"{field} has {len(value)} items, more than the limit of {max_items}")


def _check_texts(value: object, field: str, max_items: int) -> None:
    """``str | list[str]``: the shape of every text field."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _fail(field, f"{field} must be a string or a list of strings, got {_kind(value)}")
    _check_list(value, field, max_items)
    bad = next((i for i, x in enumerate(value) if not isinstance(x, str)), None)
    if bad is not None:
        _fail(f"{field}[{bad}]", f"{field}[{bad}] must be a string, got {_kind(value[bad])}")


def _token_id_problem(ids: list) -> int | None:
    """Index of the first entry that is not a token id (a non-negative int, bools excluded)."""
    return next((i for i, t in enumerate(ids) if type(t) is not int or t < 0), None)


def _check_prompts(value: object, field: str, max_items: int) -> None:
    """``str | list[str] | list[int] | list[list[int]]``, never mixed: the shape of ``input``."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        _fail(field, f"{field} must be a string, a list of strings, token ids or a list of token id lists, got {_kind(value)}")
    if not value:
        _fail(field, f"{field} must not be an empty list")
    first = value[0]
    if isinstance(first, str):
        _check_texts(value, field, max_items)
    elif type(first) is int:  # one prompt as token ids: its length is the model's to judge
        bad = _token_id_problem(value)
        if bad is not None:
            _fail(f"{field}[{bad}]", f"{field}[{bad}] must be a token id (a non-negative integer), got {_kind(value[bad])}")
    elif isinstance(first, list):
        _check_list(value, field, max_items)
        for i, ids in enumerate(value):
            where = f"{field}[{i}]"
            if not isinstance(ids, list):
                _fail(where, f"{where} must be a list of token ids like the items before it, got {_kind(ids)}")
            if not ids:
                _fail(where, f"{where} is an empty list of token ids")
            bad = _token_id_problem(ids)
            if bad is not None:
                _fail(f"{where}[{bad}]", f"{where}[{bad}] must be a token id (a non-negative integer), got {_kind(ids[bad])}")
    else:
        _fail(f"{field}[0]", f"{field}[0] must be a string, a token id or a list of token ids, got {_kind(first)}")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


Texts = str | list[str]
Prompts = str | list[str] | list[int] | list[list[int]]

_INPUT_OPTIONS = frozenset({"input", "truncate_prompt_tokens", "truncation_side", "use_activation"})
_VECTOR_OPTIONS = _INPUT_OPTIONS | {"dimensions", "encoding_format"}
_MATRIX_OPTIONS = _INPUT_OPTIONS | {"encoding_format"}
_PAIR_OPTIONS = frozenset({"truncate_prompt_tokens", "use_activation"})

# Which request fields each task reads (beyond request_id, task, model, reply_to, metadata).
# A field outside its task's set is an error: it would otherwise be silently ignored.
_TASK_FIELDS: dict[str, frozenset[str]] = {
    "embed": _VECTOR_OPTIONS,
    "token_embed": _VECTOR_OPTIONS,
    "classify": _INPUT_OPTIONS,
    "token_classify": _MATRIX_OPTIONS,
    "reward": _MATRIX_OPTIONS,
    "pooling": _VECTOR_OPTIONS | {"pooling_task"},
    "score": _PAIR_OPTIONS | {"text_1", "text_2", "queries", "documents"},
    "rerank": _PAIR_OPTIONS | {"query", "documents", "top_n", "return_documents"},
}


class PoolingRequest(BaseModel):
    """One request: a task, its inputs and options, and where/how to answer.

    For ``score``, ``queries``/``documents`` are accepted as the names of ``text_1``/``text_2``
    and are moved there during validation, so downstream code reads only ``text_1``/``text_2``.
    Construct with ``PoolingRequest.model_validate(body, context={"max_items": n})`` to change the
    per-list item limit (default 4096).
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    task: Task
    model: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    input: Prompts | None = None
    text_1: Texts | None = None
    text_2: Texts | None = None
    queries: Texts | None = None
    documents: Texts | None = None
    query: str | None = None
    pooling_task: PoolingTask | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None
    use_activation: bool | None = None
    encoding_format: Literal["float", "base64"] = "float"
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = True
    reply_to: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("input", mode="plain")
    @classmethod
    def _input(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            _check_prompts(value, "input", _max_items(info))
        return value

    @field_validator("text_1", "text_2", "queries", "documents", mode="plain")
    @classmethod
    def _texts(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            _check_texts(value, str(info.field_name), _max_items(info))
        return value

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _truncate(cls, value: int | None) -> int | None:
        if value is not None and value != -1 and value < 1:
            _fail("truncate_prompt_tokens", f"truncate_prompt_tokens must be -1 (the model's maximum) or at least 1, got {value}")
        return value

    @field_validator("reply_to")
    @classmethod
    def _reply_to(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC.fullmatch(value):
            _fail("reply_to", "reply_to must be a Kafka topic name: 1 to 249 of the characters a-z A-Z 0-9 . _ -")
        return value

    @model_validator(mode="after")
    def _fits_task(self) -> PoolingRequest:
        allowed = _TASK_FIELDS[self.task]
        for name in sorted(self.model_fields_set - allowed - {"request_id", "task", "model", "reply_to", "metadata"}):
            if getattr(self, name) is not None:
                _fail(name, f"{name} does not apply to task '{self.task}'")
        if self.task == "score":
            self._merge_alias("text_1", "queries")
            self._merge_alias("text_2", "documents")
        elif self.task == "rerank":
            self._check_rerank()
        elif self.input is None:
            _fail("input", f"input is required for task '{self.task}'")
        if self.dimensions is not None and self.pooling_task in ("classify", "token_classify"):
            _fail("dimensions", f"dimensions applies to embed and token_embed, not pooling_task '{self.pooling_task}'")
        return self

    def _merge_alias(self, name: str, alias: str) -> None:
        value, aliased = getattr(self, name), getattr(self, alias)
        if value is not None and aliased is not None:
            _fail(alias, f"give {name} or {alias}, not both")
        if value is None and aliased is None:
            _fail(name, f"{name} (or {alias}) is required for task 'score'")
        if value is None:
            setattr(self, name, aliased)
            setattr(self, alias, None)

    def _check_rerank(self) -> None:
        if self.query is None:
            _fail("query", "query is required for task 'rerank'")
        if self.documents is None:
            _fail("documents", "documents is required for task 'rerank'")
        if not isinstance(self.documents, list):
            _fail("documents", "documents must be a list of strings for task 'rerank'")
        if self.top_n is not None and self.top_n > len(self.documents):
            _fail("top_n", f"top_n={self.top_n} is more than the {len(self.documents)} documents")


# ------------------------------------------------------------------------------------------------
# Decoding JSON safely
# ------------------------------------------------------------------------------------------------
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
    return ErrorInfo(type="invalid_request", message=f"{param}: {err['msg']}", param=param)


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
    try:
        return PoolingRequest.model_validate(body, context={"max_items": max_items})
    except ValidationError as exc:
        raise InvalidRequest(_error_from(exc), **_recover(body, tags, suspect)) from None


# ------------------------------------------------------------------------------------------------
# Result messages
# ------------------------------------------------------------------------------------------------
def result_message(
    *,
    request_id: str | None,
    task: str | None,
    model: str | None,
    metadata: dict[str, Any] | None,
    body: dict[str, Any] | None = None,
    error: ErrorInfo | None = None,
) -> dict[str, Any]:
    """The result for one request: the task's vLLM response body plus the envelope fields.

    ``request_id`` is None only for an ``InvalidRequest`` whose id could not be recovered; the
    result still goes out (same Kafka key) so that nothing is dropped silently. An error result
    carries no body fields, so a caller can never mistake a partial body for an answer.
    """
    if body is not None and error is not None:
        raise ValueError("a result has either a body or an error, not both")
    message = dict(body or {})
    message.update(
        request_id=request_id,
        task=task,
        model=model,
        metadata=metadata,
        error=None if error is None else error.model_dump(),
    )
    return message


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON. ``allow_nan=False``: a NaN from a broken model must fail loudly here
    (the worker then reports ``internal_error``) rather than emit JSON that strict parsers reject."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def status_of(message: Mapping[str, Any]) -> str:
    """The Kafka ``status`` header for a result message: ``ok`` or ``error``."""
    return "ok" if message.get("error") is None else "error"


__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "TASKS",
    "ErrorInfo",
    "InvalidRequest",
    "PoolingRequest",
    "UnparseableMessage",
    "encode_message",
    "parse_request",
    "result_message",
    "status_of",
]
