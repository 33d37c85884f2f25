"""``PoolingRequest``: one request as the worker accepts it, and the checks that make it so.

Field names follow vLLM's HTTP API so that a body that works there works here. Validation is
strict on purpose: a request is machine-written, and a silently coerced ``"5"`` or an ignored
misspelt field (``"inputs"``) would hide a caller's bug behind a plausible answer. Every check
made by hand names the exact field path (``input[3]``) so the error result can say which field
to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NoReturn, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

Task = Literal["embed", "classify", "score", "rerank", "token_embed", "token_classify", "reward", "pooling"]
PoolingTask = Literal["embed", "classify", "token_embed", "token_classify"]
TASKS: tuple[str, ...] = get_args(Task)

DEFAULT_MAX_ITEMS = 4096

# A Kafka topic name: the only characters the broker accepts, at most 249 of them.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


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
