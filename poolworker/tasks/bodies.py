"""``assemble``: per-item results → the task's vLLM response body.

Bodies are deterministic (no ``created`` timestamp, no random id) so that a replayed request
yields a byte-identical result, which at-least-once delivery relies on.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

from poolworker.protocol import PoolingRequest

from .items import ItemResult, Plan


def float32_base64(data: float | list[float] | list[list[float]]) -> str:
    """Standard base64 of the values as little-endian float32, rows flattened in order (what
    vLLM clients decode with ``np.frombuffer(b64decode(s), dtype="<f4")``)."""
    rows = data if isinstance(data, list) else [data]
    flat = [x for row in rows for x in row] if rows and isinstance(rows[0], list) else rows
    packed = array("f", flat)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _encoded(data: Any, encoding_format: str) -> Any:
    return float32_base64(data) if encoding_format == "base64" else data


def _usage(results: Sequence[ItemResult]) -> dict[str, int]:
    tokens = sum(r.num_tokens for r in results)
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


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
        if not isinstance(probs, list) or not probs or isinstance(probs[0], list):
            raise TypeError(f"classify item {i}: expected a probability vector, got {type(probs).__name__}")
        best = _argmax(probs)  # type: ignore[arg-type]
        data.append({"index": i, "label": labels.get(best, str(best)), "probs": probs, "num_classes": len(probs)})
    return data


def _pooling(request: PoolingRequest, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    return [
        {"object": "pooling", "index": i, "data": _encoded(r.data, request.encoding_format)}
        for i, r in enumerate(results)
    ]


def _scores(results: Sequence[ItemResult]) -> list[float]:
    scores = []
    for i, r in enumerate(results):
        if isinstance(r.data, (list, bool)):
            raise TypeError(f"score item {i}: expected a float, got {type(r.data).__name__}")
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
