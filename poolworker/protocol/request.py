"""``PoolingRequest``: one request as the worker accepts it, and the checks that make it so.

Field names follow vLLM's HTTP API so that a body that works there works here. Types are strict
on purpose: a request is machine-written, and a silently coerced ``"5"`` would hide a caller's
bug behind a plausible answer. Fields the task does not read never get here: ``fields`` drops
them first and the result names them in ``warnings``. Every check made by hand names the exact
field path (``input[3]``) so the error result can say which field to fix.
"""

from __future__ import annotations

import difflib
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

from .chat import check_conversations, check_message

Task = Literal["embed", "classify", "score", "rerank", "token_embed", "token_classify", "reward", "pooling", "plugin"]
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
EncodingFormat = Literal["float", "base64", "bytes", "bytes_only"]
# vLLM's EMBED_DTYPES (vllm/utils/serial_utils.py): what a vector is cast to before it is
# written as base64 or bytes. Float output is never cast.
EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
CohereEmbeddingType = Literal["float", "binary", "ubinary", "base64"]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

# vLLM's validate_cache_salt: at most 128 characters, none of these.
_CACHE_SALT_FORBIDDEN = frozenset("@/\\\0")


def _check_not_empty_text(value: object, field: str) -> None:
    """vLLM refuses a prompt with no tokens ("The decoder prompt cannot be empty"); an empty
    text is refused here for every model, so the answer does not depend on whether the
    tokenizer adds special tokens around nothing."""
    if value == "":
        _fail(field, f"{field} must not be an empty string: the prompt cannot be empty")
    if isinstance(value, list):
        bad = next((i for i, x in enumerate(value) if x == ""), None)
        if bad is not None:
            _fail(f"{field}[{bad}]", f"{field}[{bad}] must not be an empty string: the prompt cannot be empty")


# vLLM's score request classes, each a name pair for the same two sides.
_SCORE_PAIRS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))
_SCORE_SIDES = ("text_1", "text_2", "queries", "documents", "items", "data_1", "data_2")
_SCORE_PARTNER = {"text_1": "text_2", "text_2": "text_1", "queries": "documents", "documents": "queries",
                  "items": "queries", "data_1": "data_2", "data_2": "data_1"}


class PoolingRequest(BaseModel):
    """One request: a task, its inputs and options, and where/how to answer.

    Built by ``decoding.parse_request`` after ``fields.split_fields`` dropped the fields the
    task's vLLM request class does not read; the names vLLM accepts for the same thing are
    folded into one field here, so downstream code reads one name only:

    - score pairs ``queries``/``documents``, ``queries``/``items``, ``data_1``/``data_2`` →
      ``text_1``/``text_2``;
    - chat input (``messages``, or conversations in ``input``) → ``messages`` as a list of
      conversations, ``form == "chat"``;
    - a Cohere ``/v2/embed`` body → ``input`` (from ``texts``), ``dimensions`` (from
      ``output_dimension``) and the truncation fields (from ``truncate``/``max_tokens``),
      ``form == "cohere"``.

    ``ignored``/``warnings`` are set by ``parse_request`` (the dropped fields, and a sentence on
    each), never by the caller: they are in no task's field set, so a body's own is dropped too.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # the envelope
    request_id: Annotated[str, Field(min_length=1, max_length=256)]
    task: Task
    model: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    form: Literal["completion", "chat", "cohere"] = "completion"
    ignored: tuple[str, ...] = ()  # the names of the fields dropped, for the metric
    warnings: tuple[str, ...] = ()
    # inputs
    input: Prompts | None = None
    messages: list | None = None
    text_1: Texts | None = None
    text_2: Texts | None = None
    queries: Texts | None = None
    documents: Texts | None = None
    items: Texts | None = None
    data_1: Texts | None = None
    data_2: Texts | None = None
    query: str | None = None
    texts: list[str] | None = None
    images: list | None = None
    inputs: list | None = None
    data: Any = None  # task plugin: read by the model's IO processor plugin, which validates it
    # options every task reads (PoolingBasicRequestMixin)
    user: str | None = None
    priority: Int64 = 0
    cache_salt: str | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None
    padding: Literal["max_length", "do_not_pad"] | None = None
    add_special_tokens: bool | None = None  # None: True for completion input, False for chat
    # chat
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, Any] | None = None
    # head and output
    pooling_task: PoolingTask | None = None
    pooling_tasks: list[PoolingTask] | None = None  # ours: several tasks from one forward pass (bge-m3)
    dimensions: Annotated[int, Field(ge=1)] | None = None
    use_activation: bool | None = None
    encoding_format: EncodingFormat = "float"
    embed_dtype: EmbedDType = "float32"
    endianness: Endianness = "native"
    late_chunking_params: dict[str, Any] | None = None
    # score and rerank
    top_n: Annotated[int, Field(ge=0)] = 0
    return_documents: bool = True
    max_tokens_per_query: Annotated[int, Field(ge=0)] = 0
    max_tokens_per_doc: Annotated[int, Field(ge=0)] = 0
    instruction: str | None = None
    # Cohere /v2/embed
    input_type: str | None = None
    output_dimension: Annotated[int, Field(ge=1)] | None = None
    embedding_types: list[CohereEmbeddingType] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # the reply address, last: a request whose input is wrong is reported as such first
    reply_to: str | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("input", mode="plain")
    @classmethod
    def _input(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and info.data.get("form") != "chat":  # a conversation: checked with messages
            _check_prompts(value, "input", _max_items(info))
            _check_not_empty_text(value, "input")
        return value

    @field_validator("text_1", "text_2", "queries", "documents", "items", "data_1", "data_2", mode="plain")
    @classmethod
    def _texts(cls, value: object, info: ValidationInfo) -> object:
        field = str(info.field_name)
        where = field if isinstance(value, dict) else next(
            (f"{field}[{i}]" for i, x in enumerate(value) if isinstance(x, dict)), None) if isinstance(value, list) else None
        if where is not None:
            _fail(where, f"{where}: multimodal score input ({{'content': [...]}}) is not supported; the served models are text-only")
        if value is not None:
            _check_texts(value, str(info.field_name), _max_items(info))
        return value

    @field_validator("texts", "messages", "inputs")
    @classmethod
    def _item_limit(cls, value: list | None, info: ValidationInfo) -> list | None:
        limit = _max_items(info)
        if value is not None and len(value) > limit:
            _fail(str(info.field_name), f"{info.field_name} has {len(value)} items, more than the limit of {limit}")
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

    @field_validator("cache_salt")
    @classmethod
    def _cache_salt(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value) > 128 or _CACHE_SALT_FORBIDDEN & set(value)):
            _fail("cache_salt", "Parameter 'cache_salt' must be a non-empty string of at most 128 characters, "
                                "without '@', '/', '\\' or NUL")
        return value

    @field_validator("mm_processor_kwargs", "media_io_kwargs", "images")
    @classmethod
    def _text_only(cls, value: object, info: ValidationInfo) -> object:
        if value:
            _fail(str(info.field_name), f"{info.field_name} applies to multimodal models; the served models are "
                                        "text-only, so it is accepted only when empty")
        return value

    @field_validator("late_chunking_params")
    @classmethod
    def _late_chunking(cls, value: dict | None) -> dict | None:
        if value:
            _fail("late_chunking_params", "late_chunking_params: late chunking is not supported by this worker; "
                                          "send null or {} (or split the document and embed the chunks)")
        return value

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, value: str | None) -> str | None:
        if value is not None:  # vLLM's default (--trust-request-chat-template unset)
            _fail("chat_template", "chat_template in a request is not trusted by this worker; the model's own "
                                   "template is used")
        return value

    @model_validator(mode="after")
    def _fits_task(self) -> PoolingRequest:
        if self.form == "cohere":
            self._fold_cohere()
        elif self.form == "chat":
            self._fold_chat()
        if self.task == "score":
            self._fold_score_pairs()
        elif self.task == "rerank":
            self._check_rerank()
        elif self.task == "plugin":
            if self.data is None:
                _fail("data", f"data is required for task 'plugin' (the IO processor plugin reads it){self._misspelt('data')}")
        elif self.form != "chat" and self.input is None and self.inputs is None:
            _fail("input", f"input is required for task '{self.task}'{self._misspelt('input')}")
        if self.pooling_tasks is not None:
            if self.task != "pooling":
                _fail("pooling_tasks", f"pooling_tasks applies to task 'pooling', not '{self.task}'")
            if self.pooling_task is not None:
                _fail("pooling_tasks", "give pooling_task or pooling_tasks, not both")
        if self.dimensions is not None and self.pooling_task in ("classify", "token_classify"):
            _fail("dimensions", f"dimensions applies to embed and token_embed, not pooling_task '{self.pooling_task}'")
        return self

    def _misspelt(self, name: str) -> str:
        """A hint when an ignored field looks like ``name`` misspelt (``inputs`` for ``input``)."""
        close = difflib.get_close_matches(name, self.ignored, n=1)
        return f"; the ignored field {close[0]!r} looks like a misspelling of it" if close else ""

    def _fold_chat(self) -> None:
        if self.messages is not None and self.input is not None:
            _fail("input", "give messages or input, not both")
        if self.add_generation_prompt and self.continue_final_message:
            _fail("continue_final_message", "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        field = "messages" if self.messages is not None else "input"
        value = self.messages if self.messages is not None else self.input
        conversations = value if value and all(isinstance(c, list) for c in value) else [value]
        check_conversations(conversations, field, DEFAULT_MAX_ITEMS, _fail)
        self.messages, self.input = conversations, None

    def _fold_cohere(self) -> None:
        given = [name for name in ("texts", "images", "inputs") if getattr(self, name) is not None]
        if len(given) != 1 or not getattr(self, given[0]):
            _fail(given[-1] if given else "texts",
                  "Exactly one of texts, images, or inputs must be provided, and it must be non-empty")
        if self.inputs is not None:  # content lists, rendered through the chat template (text parts only)
            for i, item in enumerate(self.inputs):
                check_message({"role": "user", **item} if isinstance(item, dict) else item, f"inputs[{i}]", _fail)
        else:
            _check_not_empty_text(self.texts, "texts")
            self.input = self.texts
        self.dimensions = self.output_dimension
        if self.truncate == "START":
            self.truncate_prompt_tokens, self.truncation_side = (self.max_tokens or -1), "left"
        elif self.truncate == "END":
            self.truncate_prompt_tokens = self.max_tokens or -1

    def _fold_score_pairs(self) -> None:
        """vLLM's four score request classes, each naming the two sides differently."""
        given = [n for n in _SCORE_SIDES if getattr(self, n) is not None]
        named = [(a, b) for a, b in _SCORE_PAIRS if a in given and b in given]
        if len(given) != 2 or len(named) != 1:
            extra = [n for n in given if not named or n not in named[0]]
            param = extra[-1] if named or len(given) > 1 else _SCORE_PARTNER[given[0]] if given else "text_1"
            _fail(param, "score takes one pair of fields: text_1/text_2, queries/documents, queries/items or "
                         f"data_1/data_2; got {', '.join(given) or 'none'}")
        first, second = named[0]
        self.text_1, self.text_2 = getattr(self, first), getattr(self, second)
        for name in (first, second):
            if name not in ("text_1", "text_2"):
                setattr(self, name, None)

    def _check_rerank(self) -> None:
        if self.query is None:
            _fail("query", f"query is required for task 'rerank'{self._misspelt('query')}")
        if self.documents is None:
            _fail("documents", f"documents is required for task 'rerank'{self._misspelt('documents')}")
        if isinstance(self.documents, str):  # vLLM takes one document as a string, too
            self.documents = [self.documents]

    @property
    def special_tokens(self) -> bool:
        """Whether the tokenizer adds special tokens: vLLM's default is True for completion
        input and False for chat (the template writes them)."""
        return self.add_special_tokens if self.add_special_tokens is not None else self.form != "chat"
