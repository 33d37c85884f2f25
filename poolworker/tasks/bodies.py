"""``assemble``: per-item results → the task's vLLM response body.

Bodies are deterministic (no ``created`` timestamp, no random id) so that a replayed request
yields a byte-identical result, which at-least-once delivery relies on.

Vectors and matrices stay numpy arrays in the body when the engine gave arrays:
``protocol.encode_message`` writes them in C, so no stage spends Python work per float. Plain
lists (older callers) are accepted everywhere and go out unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from poolworker.protocol import PoolingRequest

from .items import ItemResult, Plan

# What ``ItemResult.data`` may hold: a score; a float32 vector (1-D) or token matrix (2-D, one row
# per token); or the same as Python lists, as older callers pass them.
ItemData = float | np.ndarray | list[float] | list[list[float]]


def float32_base64(data: ItemData) -> str:
    """Standard base64 of the values as little-endian float32, rows flattened in order (what
    vLLM clients decode with ``np.frombuffer(b64decode(s), dtype="<f4")``)."""
    return base64.b64encode(np.asarray(data, dtype="<f4").tobytes()).decode("ascii")


def _encoded(data: ItemData, encoding_format: str) -> ItemData | str:
    return float32_base64(data) if encoding_format == "base64" else data


def _usage(results: Sequence[ItemResult]) -> dict[str, int]:
    tokens = sum(r.num_tokens for r in results)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _embed(request: PoolingRequest, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    return [
        {"object": "embedding", "index": i, "embedding": _encoded(r.data, request.encoding_format)}
        for i, r in enumerate(results)
    ]


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
    return [
        {"object": "pooling", "index": i, "data": _encoded(r.data, request.encoding_format)}
        for i, r in enumerate(results)
    ]


def _scores(results: Sequence[ItemResult]) -> list[float]:
    scores = []
    for i, r in enumerate(results):
        if isinstance(r.data, (list, bool)) or (isinstance(r.data, np.ndarray) and r.data.ndim > 0):
            raise TypeError(f"score item {i}: expected a float, got {_describe(r.data)}")
        scores.append(float(r.data))
    return scores


def _rerank(request: PoolingRequest, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """Best first; ties keep document order (a stable sort), so equal scores rank reproducibly."""
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


def assemble(
    request: PoolingRequest,
    plan: Plan,
    results: Sequence[ItemResult],
    *,
    model: str,
    id2label: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The vLLM response body for ``request`` from one ``ItemResult`` per ``plan.items`` entry,
    in the same order. ``id2label`` names classify labels (the model config's); without it, or
    for an index it lacks, the label is the class index as a string."""
    if len(results) != len(plan.items):
        raise ValueError(f"assemble got {len(results)} results for {len(plan.items)} items")
    usage = _usage(results)
    task = request.task
    if task == "rerank":
        return {"model": model, "results": _rerank(request, results), "usage": usage}
    if task == "score":
        data = [{"object": "score", "index": i, "score": s} for i, s in enumerate(_scores(results))]
    elif task == "embed":
        data = _embed(request, results)
    elif task == "classify":
        data = _classify(results, id2label)
    else:  # token_embed, token_classify, reward, pooling
        data = _pooling(request, results)
    return {"object": "list", "model": model, "data": data, "usage": usage}
