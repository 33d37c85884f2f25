"""Which request fields each task reads, as vLLM 0.33's pooling request classes define them.

vLLM ignores a field its request class does not declare (``OpenAIBaseModel`` is
``extra="allow"``). We do the same, but visibly: ``split_fields`` drops such a field before
validation and returns a warning naming it, so a misspelt option is never silent and never
reaches the schema. Which class a body meets depends on its task and *form*: a completion body
(``input`` texts or token ids), a chat body (``messages``, or conversations in ``input``) or, for
``embed``, a Cohere ``/v2/embed`` body (``texts`` and no ``input``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Form = Literal["completion", "chat", "cohere"]

# Our envelope: the routing tags and the reply address travel beside the vLLM body.
ENVELOPE = frozenset({"request_id", "task", "model", "reply_to", "metadata"})

# PoolingBasicRequestMixin
_COMMON = frozenset({
    "user", "truncate_prompt_tokens", "padding", "truncation_side", "priority", "mm_processor_kwargs", "cache_salt",
})
_COMPLETION = frozenset({"input", "add_special_tokens"})  # CompletionRequestMixin
_CHAT = frozenset({  # ChatRequestMixin
    "messages", "add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template",
    "chat_template_kwargs", "media_io_kwargs",
})
_ENCODING = frozenset({"encoding_format", "embed_dtype", "endianness"})  # EncodingRequestMixin
_EMBED = _ENCODING | {"dimensions", "use_activation"}  # EmbedRequestMixin
_CLASSIFY = frozenset({"use_activation"})  # ClassifyRequestMixin
_SCORING = _COMMON | {"use_activation", "max_tokens_per_query", "max_tokens_per_doc", "instruction",
                      "chat_template_kwargs"}  # ScoringRequestMixin
_SCORE_PAIRS = frozenset({"text_1", "text_2", "queries", "documents", "items", "data_1", "data_2"})
# PoolingCompletionRequest / PoolingChatRequest; vLLM's body field ``task`` is our ``pooling_task``
# ``pooling_tasks`` is ours (several tasks from one forward pass, e.g. bge-m3's three outputs)
_POOLING = _EMBED | _CLASSIFY | {"pooling_task", "pooling_tasks"}
# ours on token_embed / pooling: Cohere's ``input_type`` names the role of the texts (query or
# document) for models that have roles (PyLate ColBERT checkpoints)
_ROLE = frozenset({"input_type"})

# CohereEmbedRequest (a plain BaseModel: unknown fields ignored there too)
_COHERE = frozenset({
    "input_type", "texts", "images", "inputs", "output_dimension", "embedding_types", "truncate", "max_tokens", "priority",
})

_BY_TASK: dict[str, dict[Form, frozenset[str]]] = {
    "embed": {"completion": _COMMON | _COMPLETION | _EMBED, "chat": _COMMON | _CHAT | _EMBED, "cohere": _COHERE},
    "classify": {"completion": _COMMON | _COMPLETION | _CLASSIFY, "chat": _COMMON | _CHAT | _CLASSIFY},
    # TokenEmbeddingRequest: completion only, plus late chunking
    "token_embed": {"completion": _COMMON | _COMPLETION | _EMBED | _ROLE | {"late_chunking_params"}},
    "token_classify": {"completion": _COMMON | _COMPLETION | _POOLING, "chat": _COMMON | _CHAT | _POOLING},
    "reward": {"completion": _COMMON | _COMPLETION | _POOLING, "chat": _COMMON | _CHAT | _POOLING},
    "pooling": {"completion": _COMMON | _COMPLETION | _POOLING | _ROLE, "chat": _COMMON | _CHAT | _POOLING},
    "score": {"completion": _SCORING | _SCORE_PAIRS},
    "rerank": {"completion": _SCORING | {"query", "documents", "top_n", "return_documents"}},
    # IOProcessorRequest: the plugin reads ``data`` and shapes the output itself, so the
    # encoding fields vLLM's class also declares have nothing to apply to (ignored, with a warning)
    "plugin": {"completion": _COMMON | {"data"}},
}

# Fields vLLM once had: named in the warning so the caller learns what replaced them.
_REMOVED = {
    "activation": "'activation' was removed from vLLM's API and is ignored; use 'use_activation'",
    "softmax": "'softmax' was removed from vLLM's API and is ignored; use 'use_activation'",
}


def _is_message(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("role"), str)


def is_conversation(value: Any) -> bool:
    """A list of chat messages (objects with a ``role``), as vLLM tells chat input apart."""
    return isinstance(value, list) and bool(value) and all(_is_message(m) for m in value)


def is_conversation_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(is_conversation(c) for c in value)


def is_plugin_body(body: Mapping[str, Any]) -> bool:
    """A ``pooling`` body with ``data`` and no input is vLLM's IOProcessorRequest: task
    ``plugin`` (vLLM's ``/pooling`` tells them apart the same way)."""
    return body.get("task") == "pooling" and "data" in body and "input" not in body and "messages" not in body


def form_of(body: Mapping[str, Any]) -> Form:
    """Which of vLLM's request classes a body meets (vLLM picks the first of its union that
    validates; these are the fields that decide it)."""
    if body.get("task") == "embed" and "input" not in body and any(k in body for k in ("texts", "inputs", "images")):
        return "cohere"
    if "messages" in body:
        return "chat"
    value = body.get("input")
    if is_conversation(value) or is_conversation_list(value):
        return "chat"
    return "completion"


def split_fields(body: dict[str, Any]) -> tuple[Form, dict[str, str]]:
    """Drop from ``body`` (in place) the fields its task's vLLM request class does not read (a
    ``pooling`` body that is a plugin request becomes task ``plugin`` first); return the body's form and, per dropped field in body order, the warning naming it. An
    unknown task drops nothing: validation reports the task itself."""
    if is_plugin_body(body):
        body["task"] = "plugin"
    form = form_of(body)
    task = body.get("task")
    by_form = _BY_TASK.get(task) if isinstance(task, str) else None
    if by_form is None:
        return form, {}
    if form not in by_form:  # e.g. messages sent to score: read as vLLM's one request class for the task
        form = "completion"
    known = by_form[form]
    if form == "chat":
        known = known | {"input"}
    warnings = {}
    for name in [k for k in body if k not in known and k not in ENVELOPE]:
        del body[name]
        warnings[name] = _warning(name, task, form)
    return form, warnings


def _warning(name: str, task: str, form: Form) -> str:
    if name in _REMOVED:
        return _REMOVED[name]
    if any(name in fields for by_form in _BY_TASK.values() for fields in by_form.values()):
        return f"field {name!r} does not apply to a {form} {task!r} request; ignored"
    return f"unknown field {name!r} ignored"


def known_fields(task: str, form: Form = "completion") -> frozenset[str]:
    """The body fields read for ``task`` in ``form`` (besides the envelope), for docs and tests."""
    return _BY_TASK.get(task, {}).get(form, frozenset())


__all__ = ["ENVELOPE", "Form", "form_of", "is_conversation", "is_conversation_list", "is_plugin_body", "known_fields", "split_fields"]
