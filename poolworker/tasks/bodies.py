"""``assemble``: per-item results → the task's vLLM response body.

Bodies are deterministic (no ``created`` timestamp, no random id: ``id`` is the request id) so
that a replayed request yields a byte-identical result, which at-least-once delivery relies on.

Vectors and matrices stay numpy arrays in the body when the engine gave arrays and the format
is ``float`` (or ``bytes``: the publisher writes them as the record value, see
``encoding.binary_result``): ``protocol.encode_message`` writes them in C, so no stage spends
Python work per float. Plain lists (older callers) are accepted everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from poolworker.engine.errors import InvalidInput
from poolworker.plugins.interface import PluginOutput, PluginRequest
from poolworker.protocol import PoolingRequest

from .encoding import encode_json
from .items import ItemResult, Plan

if TYPE_CHECKING:
    from .engine_calls import ModelCall

# What ``ItemResult.data`` may hold: a score; a float32 vector (1-D) or token matrix (2-D, one row
# per token); or the same as Python lists, as older callers pass them.
ItemData = float | np.ndarray | list[float] | list[list[float]]


def _encoded(request: PoolingRequest, data: ItemData) -> ItemData | str:
    return encode_json(data, request.encoding_format, request.embed_dtype, request.endianness)


def _usage(results: Sequence[ItemResult]) -> dict[str, int]:
    tokens = sum(r.num_tokens for r in results)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _embeddings(request: PoolingRequest, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """vLLM's embeddings shape; for ``token_embed`` each ``embedding`` is the token matrix."""
    return [{"object": "embedding", "index": i, "embedding": _encoded(request, r.data)} for i, r in enumerate(results)]


def _classify(results: Sequence[ItemResult], id2label: Mapping[int, str] | None) -> list[dict[str, Any]]:
    labels = id2label or {}
    data = []
    for i, r in enumerate(results):
        probs = r.data
        if not _is_vector(probs):
            raise TypeError(f"classify item {i}: expected a probability vector, got {_describe(probs)}")
        # ties: the first of equal maxima, as before; the method skips np.argmax's dispatch
        best = int(probs.argmax() if isinstance(probs, np.ndarray) else np.argmax(probs))
        data.append({"index": i, "label": labels.get(best, str(best)), "probs": probs, "num_classes": len(probs)})
    return data


def _is_vector(data: ItemData) -> bool:
    """A non-empty 1-D array, or a non-empty list of numbers (not of rows)."""
    if isinstance(data, np.ndarray):
        return data.ndim == 1 and data.size > 0
    return isinstance(data, list) and bool(data) and not isinstance(data[0], list)


def _describe(data: object) -> str:
    if isinstance(data, np.ndarray):
        return f"an array of shape {data.shape}"
    return type(data).__name__


def _pooling(request: PoolingRequest, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """vLLM's /pooling data; an item of several tasks (``pooling_tasks``) has one entry per task
    (float only: ``check_output`` refused other encodings)."""
    return [{"object": "pooling", "index": i, "data": r.data if isinstance(r.data, dict) else _encoded(request, r.data)}
            for i, r in enumerate(results)]


def _scores(results: Sequence[ItemResult]) -> list[float]:
    scores = []
    for i, r in enumerate(results):
        if isinstance(r.data, (list, bool)) or (isinstance(r.data, np.ndarray) and r.data.ndim > 0):
            raise TypeError(f"score item {i}: expected a float, got {_describe(r.data)}")
        scores.append(float(r.data))
    return scores


def _rerank(request: PoolingRequest, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """Best first; ties keep document order (a stable sort), so equal scores rank reproducibly.
    ``top_n`` as vLLM: 0 (the default) or more than the documents means all of them."""
    scores = _scores(results)
    documents = request.documents or []
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: request.top_n or len(scores)]
    ranked = []
    for i in order:
        entry: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if request.return_documents:
            entry["document"] = {"text": documents[i]}
        ranked.append(entry)
    return ranked


def _cohere(request: PoolingRequest, results: Sequence[ItemResult]) -> dict[str, Any]:
    """vLLM's ``/v2/embed`` answer: the vectors once per requested ``embedding_types``."""
    vectors = [r.data for r in results]
    embeddings = {kind: _COHERE_TYPES[kind](vectors) for kind in request.embedding_types or ["float"]}
    tokens = sum(r.num_tokens for r in results)
    body = {"id": request.request_id, "embeddings": embeddings, "texts": request.texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens, "image_tokens": 0}},
            "response_type": "embeddings_by_type"}
    if request.texts is None:  # vLLM writes its response without the unset fields
        del body["texts"]
    return body


def _packed_bits(vectors: list[ItemData], signed: bool) -> np.ndarray:
    """One bit per dimension (1 where the value is ≥ 0), eight to a byte, first dimension in
    the high bit; ``binary`` is the same bytes read as signed (minus 128), as Cohere defines."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape[-1] % 8:
        raise ValueError(f"binary embedding types need a dimension divisible by 8, got {array.shape[-1]}")
    packed = np.packbits(array >= 0, axis=-1)
    return packed.astype(np.int16) - 128 if signed else packed


_COHERE_TYPES = {
    "float": lambda vectors: vectors,
    "binary": lambda vectors: _packed_bits(vectors, signed=True),
    "ubinary": lambda vectors: _packed_bits(vectors, signed=False),
    "base64": lambda vectors: [encode_json(v, "base64", "float32", "little") for v in vectors],
}


def check_output(request: PoolingRequest, call: ModelCall) -> None:
    """Refuse, before any work, what the call could not answer as vLLM would (``InvalidInput``
    naming the field): Cohere bit-packed types need a dimension divisible by 8; a score
    ``instruction`` (or ``chat_template_kwargs``) would change a score-template model's prompt,
    which the engine does not take yet, so it is refused there rather than silently dropped
    (models without a score template ignore it, as in vLLM)."""
    if call.mode == "multi" and request.encoding_format != "float":
        raise InvalidInput("pooling_tasks results are answered as float only (one array per task)", "encoding_format")
    if call.mode not in ("encode", "multi") and getattr(call.engine, "score_template", None) is not None:
        for name in ("instruction", "chat_template_kwargs"):
            if getattr(request, name):
                raise InvalidInput(f"{name} is not applied to score templates by this worker yet; leave it out", name)
    if request.form != "cohere" or not {"binary", "ubinary"} & set(request.embedding_types or ()):
        return
    size = call.params.dimensions or call.engine.pooler.embedding_size
    if size % 8:
        raise InvalidInput(f"embedding_types binary/ubinary pack 8 dimensions a byte; this output has {size}, "
                           "not a multiple of 8 (choose output_dimension)", "embedding_types")


def assemble(
    request: PoolingRequest,
    plan: Plan,
    results: Sequence[ItemResult],
    *,
    model: str,
    id2label: Mapping[int, str] | None = None,
    plugin: PluginRequest | None = None,
) -> dict[str, Any]:
    """The vLLM response body for ``request`` from one ``ItemResult`` per ``plan.items`` entry,
    in the same order, with ``warnings`` (the fields the request's task ignored). ``id2label``
    names classify labels (the model config's); without it, or for an index it lacks, the
    label is the class index as a string. A ``plugin`` request's body is vLLM's
    IOProcessorResponse: ``created_at`` and the plugin's ``data``."""
    if len(results) != len(plan.items):
        raise ValueError(f"assemble got {len(results)} results for {len(plan.items)} items")
    if plugin is not None:
        outputs = [PluginOutput(i, r.data, r.num_tokens) for i, r in enumerate(results)]
        body = {"created_at": int(time.time()), "data": plugin.response_data(outputs, request.request_id)}
    else:
        body = _body(request, results, model, id2label)
    body["warnings"] = list(request.warnings)
    return body


def _body(request: PoolingRequest, results: Sequence[ItemResult], model: str,
          id2label: Mapping[int, str] | None) -> dict[str, Any]:
    usage = _usage(results)
    task = request.task
    head = {"id": request.request_id, "object": "list", "model": model}
    if request.form == "cohere":
        return _cohere(request, results)
    if task == "rerank":
        return {"id": request.request_id, "model": model, "results": _rerank(request, results), "usage": usage}
    if task == "score":
        data = [{"object": "score", "index": i, "score": s} for i, s in enumerate(_scores(results))]
    elif task in ("embed", "token_embed"):
        data = _embeddings(request, results)
    elif task == "classify":
        data = _classify(results, id2label)
    else:  # token_classify, reward, pooling
        data = _pooling(request, results)
    return {**head, "data": data, "usage": usage}


def vector_key(request: PoolingRequest) -> str:
    """Where a body built by ``assemble`` keeps each item's array: ``embedding`` or ``data``."""
    return "embedding" if request.task in ("embed", "token_embed") else "data"
