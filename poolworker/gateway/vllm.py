"""vLLM's side of the gateway: which pool task each route asks for, and the pool's result
turned into the response body vLLM writes for that route.

The worker already answers with the task's vLLM body (``data``/``results``, ``usage``, ``model``)
and leaves out what a replayed result must not change (``id``, ``created``); the gateway adds
those here, with vLLM's id prefixes, and drops the envelope (``request_id``, ``task``,
``metadata``, ``error``, ``warnings``), which vLLM's bodies do not have.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import bad_request

#: Result fields that belong to the pool's envelope, not to vLLM's body.
ENVELOPE = ("request_id", "task", "metadata", "error", "warnings")
#: Body fields the gateway writes itself: vLLM's id is per HTTP call (its prefix, the caller's
#: ``X-Request-Id``), ``created`` the time of the answer.
_PER_CALL = ("id", "created")

Shape = Literal["list", "rerank", "cohere"]


@dataclass(frozen=True)
class Route:
    """A vLLM route: the pool task its body goes as, the id prefix of its response (vLLM's
    ``request_id_prefix`` of the serving class) and the response's shape."""

    task: str
    prefix: str
    shape: Shape = "list"


EMBED = Route("embed", "embd")
COHERE_EMBED = Route("embed", "embd", "cohere")
CLASSIFY = Route("classify", "classify")
SCORE = Route("score", "score")
RERANK = Route("rerank", "score", "rerank")
POOLING = Route("pooling", "pool")

#: The POST routes and what each does. ``/invocations`` is chosen by body (``invocation_route``).
ROUTES: dict[str, Route] = {
    "/v1/embeddings": EMBED,
    "/v2/embed": COHERE_EMBED,
    "/classify": CLASSIFY,
    "/score": SCORE,
    "/v1/score": SCORE,
    "/rerank": RERANK,
    "/v1/rerank": RERANK,
    "/v2/rerank": RERANK,
    "/pooling": POOLING,
}

# vLLM's raw-bytes encodings: the answer is the bare arrays, their metadata in a header.
RAW_FORMATS = ("bytes", "bytes_only")
# Pooling tasks whose output is one vector per input (its shape is its length).
_VECTOR_TASKS = ("embed", "classify")
# Bytes per value of each ``embed_dtype`` (vLLM's EmbedDType).
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1}
# Which body fields name a score request's two sides (vLLM's name pairs).
_SCORE_FIELDS = ("text_1", "text_2", "queries", "items", "data_1", "data_2")


def invocation_route(body: Mapping[str, Any]) -> Route:
    """The route a SageMaker ``/invocations`` body is for. vLLM tries its request types in order
    (embed or classify, rerank, score, pooling) and takes the first that validates; the
    gateway does not know the model's task, so it reads the body: ``query`` + ``documents`` is
    a rerank, a score field pair a score, ``messages``/``input`` an embedding (retried as
    classify by the caller when the model cannot embed), ``texts`` Cohere's embed."""
    if "query" in body and "documents" in body:
        return RERANK
    if any(name in body for name in _SCORE_FIELDS):
        return SCORE
    if "task" in body or "data" in body:
        return POOLING
    if "texts" in body:
        return COHERE_EMBED
    if "input" in body or "messages" in body:
        return EMBED
    raise bad_request("Cannot find suitable handler for request: the body has none of input, messages, texts, "
                      "query + documents, text_1 + text_2")


def pool_request(route: Route, body: Mapping[str, Any], default_model: str | None) -> dict[str, Any]:
    """The request the pool gets for an HTTP ``body`` on ``route``: ``{"task": …, **body}``, the
    default model when the body names none. On ``/pooling`` vLLM's body field ``task`` (the
    pooling task) is the contract's ``pooling_task``; ``request_id`` and ``reply_to`` are the
    gateway's, never the caller's."""
    raw = body.get("encoding_format") in RAW_FORMATS
    if raw and not (route is EMBED or (route is POOLING and body.get("task") in _VECTOR_TASKS)):
        raise bad_request(f"encoding_format {body['encoding_format']!r} is served here for one vector per input only "
                          "(/v1/embeddings, /pooling with task embed or classify): a token matrix's shape is not in the "
                          "pool's base64 answer; use 'base64' with the same embed_dtype and endianness", "encoding_format")
    fields = {k: v for k, v in body.items() if k not in ("request_id", "reply_to")}
    if route is POOLING and "task" in fields:
        fields.setdefault("pooling_task", fields.pop("task"))
    if fields.get("model") is None and default_model is not None:
        fields["model"] = default_model
    if raw:  # the same bytes, as base64 in JSON: the gateway's client reads JSON results only
        fields["encoding_format"] = "base64"
    return {**fields, "task": route.task}


def response_id(route: Route, body: Mapping[str, Any], header_id: str | None, fallback: str) -> str:
    """``<prefix>-<id>``, the id vLLM gives: the ``X-Request-Id`` header, else the body's
    ``request_id``, else a fresh one."""
    base = header_id or (body.get("request_id") if isinstance(body.get("request_id"), str) else None) or fallback
    return f"{route.prefix}-{base}"


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """vLLM's ``UsageInfo`` as it dumps it (completion fields present, zero or null)."""
    usage = usage or {}
    return {"prompt_tokens": usage.get("prompt_tokens", 0), "total_tokens": usage.get("total_tokens", 0),
            "completion_tokens": 0, "prompt_tokens_details": None, "completion_tokens_details": None}


def _rerank_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's ``RerankResult`` order and its document with ``multi_modal`` (null for text)."""
    out = []
    for r in results:
        document = r.get("document")
        document = {"text": document.get("text"), "multi_modal": document.get("multi_modal")} if isinstance(document, dict) else document
        out.append({"index": r.get("index"), "document": document, "relevance_score": r.get("relevance_score")})
    return out


def response_body(route: Route, result: Mapping[str, Any], response_id: str, *, created: int | None = None) -> dict[str, Any]:
    """The pool's (successful) result as vLLM's response body for ``route``."""
    body = {k: v for k, v in result.items() if k not in ENVELOPE and k not in _PER_CALL}
    if route.shape == "rerank":
        results = body.pop("results", [])
        usage = body.pop("usage", None) or {}
        return {"id": response_id, "model": body.pop("model", None),
                "usage": {"prompt_tokens": usage.get("prompt_tokens", 0), "total_tokens": usage.get("total_tokens", 0)},
                "results": _rerank_results(results), **body}
    if route.shape == "cohere":
        return {"id": response_id, **body, "response_type": body.get("response_type", "embeddings_by_type")}
    head = {"id": response_id, "object": body.pop("object", "list"), "created": int(time.time()) if created is None else created,
            "model": body.pop("model", None), "data": body.pop("data", [])}
    return {**head, "usage": _usage(body.pop("usage", None)), **body}


def bytes_response(body: Mapping[str, Any], result: Mapping[str, Any], response_id: str, *,
                   created: int | None = None) -> tuple[bytes, dict[str, str]]:
    """vLLM's ``bytes`` / ``bytes_only`` answer from the pool's base64 one (same dtype and byte
    order): the vectors' bytes one after another, and, for ``bytes``, a ``metadata`` header with
    each vector's place (``start``/``end``/``shape``), the id, model and usage."""
    dtype, endianness = body.get("embed_dtype") or "float32", body.get("endianness") or "native"
    chunks = [base64.b64decode(d["embedding"] if "embedding" in d else d["data"]) for d in result.get("data", [])]
    items, offset = [], 0
    for i, chunk in enumerate(chunks):
        items.append({"index": i, "embed_dtype": dtype, "endianness": endianness, "start": offset, "end": offset + len(chunk),
                      "shape": [len(chunk) // _ITEMSIZE.get(dtype, 1)]})
        offset += len(chunk)
    headers = {}
    if body.get("encoding_format") == "bytes":
        usage = result.get("usage") or {}
        headers["metadata"] = json.dumps({"id": response_id, "created": int(time.time()) if created is None else created,
                                          "model": result.get("model"), "data": items,
                                          "usage": {"prompt_tokens": usage.get("prompt_tokens", 0),
                                                    "total_tokens": usage.get("total_tokens", 0)}})
    return b"".join(chunks), headers


def model_list(models: list[str], *, created: int | None = None) -> dict[str, Any]:
    """vLLM's ``/v1/models`` body for the names the pool serves."""
    created = int(time.time()) if created is None else created
    permission = {"object": "model_permission", "created": created, "allow_create_engine": False, "allow_sampling": True,
                  "allow_logprobs": True, "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                  "organization": "*", "group": None, "is_blocking": False}
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "poolworker", "root": name, "parent": None,
         "max_model_len": None, "permission": [{"id": f"modelperm-{name}", **permission}]}
        for name in models]}


__all__ = ["ENVELOPE", "RAW_FORMATS", "ROUTES", "Route", "bytes_response", "invocation_route", "model_list", "pool_request", "response_body", "response_id"]
