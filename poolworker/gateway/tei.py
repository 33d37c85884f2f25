"""text-embeddings-inference's routes: a TEI body → the pool request, the pool's result → TEI's
response (router/src/http/types.rs in TEI: bare arrays, no envelope).

| route | pool task | answer |
|---|---|---|
| ``/embed`` | ``embed`` | ``[[float]]`` one vector per input |
| ``/embed_all`` | ``token_embed`` | ``[[[float]]]`` one matrix per input |
| ``/embed_sparse`` | ``embed`` (a SPLADE model) | ``[[{index, value}]]`` the non-zero entries |
| ``/predict`` | ``classify`` | ``[{score, label}]`` best first; a batch: one such list per input |
| ``/rerank`` (``texts``) | ``rerank`` | ``[{index, score, text?}]`` best first |

TEI's option names map to the contract's: ``truncate`` → ``truncate_prompt_tokens: -1``,
``truncation_direction`` → ``truncation_side``, ``normalize: false`` / ``raw_scores: true`` →
``use_activation: false``. Options the pool has no counterpart for (``prompt_name``) are refused
with a 422, never silently dropped. Predicting on a pair of texts is refused too: the pool
classifies single texts (use ``/rerank`` or ``/score`` for pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import bad_request

_TRUNCATION_SIDE = {"left": "left", "right": "right"}


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The options every TEI route shares, as contract fields."""
    out: dict[str, Any] = {}
    if body.get("prompt_name") is not None:
        raise bad_request("prompt_name is not supported by this gateway: prepend the prompt to the text", "prompt_name")
    if body.get("truncate"):
        out["truncate_prompt_tokens"] = -1
    direction = body.get("truncation_direction")
    if direction is not None:
        side = _TRUNCATION_SIDE.get(str(direction).lower())
        if side is None:
            raise bad_request("truncation_direction must be Left or Right", "truncation_direction")
        out["truncation_side"] = side
    if body.get("model") is not None:
        out["model"] = body["model"]
    return out


def _inputs(body: Mapping[str, Any]) -> Any:
    if "inputs" not in body:
        raise bad_request("inputs is required", "inputs")
    return body["inputs"]


def embed_request(body: Mapping[str, Any]) -> dict[str, Any]:
    request = {"task": "embed", "input": _inputs(body), **_options(body)}
    if body.get("normalize") is False:
        request["use_activation"] = False
    if body.get("dimensions") is not None:
        request["dimensions"] = body["dimensions"]
    return request


def embed_all_request(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": "token_embed", "input": _inputs(body), **_options(body)}


def embed_sparse_request(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"task": "embed", "input": _inputs(body), **_options(body)}


def predict_request(body: Mapping[str, Any]) -> dict[str, Any]:
    inputs = _inputs(body)
    texts = _predict_texts(inputs)
    request = {"task": "classify", "input": texts, **_options(body)}
    if body.get("raw_scores"):
        request["use_activation"] = False
    return request


def _predict_texts(inputs: Any) -> str | list[str]:
    """TEI's ``PredictInput``: a text, a pair, or a batch of one-text and two-text lists. Only
    single texts are served; a pair is refused with the reason."""
    if isinstance(inputs, str):
        return inputs
    if isinstance(inputs, list) and inputs and all(isinstance(x, list) for x in inputs):
        texts = []
        for i, item in enumerate(inputs):
            if len(item) != 1 or not isinstance(item[0], str):
                raise bad_request(f"inputs[{i}]: only single texts can be classified here, not pairs", f"inputs[{i}]")
            texts.append(item[0])
        return texts
    if isinstance(inputs, list) and len(inputs) == 2 and all(isinstance(x, str) for x in inputs):
        raise bad_request("a pair of texts cannot be classified here; send [[text], [text]] for a batch", "inputs")
    raise bad_request("inputs must be a text or a batch [[text], ...]", "inputs")


def rerank_request(body: Mapping[str, Any]) -> dict[str, Any]:
    if "query" not in body:
        raise bad_request("query is required", "query")
    request = {"task": "rerank", "query": body["query"], "documents": body.get("texts"),
               "return_documents": bool(body.get("return_text")), **_options(body)}
    if body.get("raw_scores"):
        request["use_activation"] = False
    return request


# -- results → TEI bodies ---------------------------------------------------------------------------
def embed_response(result: Mapping[str, Any], body: Mapping[str, Any]) -> list:
    return [d["embedding"] for d in result["data"]]


def embed_all_response(result: Mapping[str, Any], body: Mapping[str, Any]) -> list:
    return [d.get("data", d.get("embedding")) for d in result["data"]]


def embed_sparse_response(result: Mapping[str, Any], body: Mapping[str, Any]) -> list:
    """The non-zero entries of each vocabulary-sized vector, by index."""
    out = []
    for d in result["data"]:
        vector = np.asarray(d["embedding"], dtype=np.float32)
        nonzero = np.flatnonzero(vector)
        out.append([{"index": int(i), "value": float(vector[i])} for i in nonzero])
    return out


def predict_response(result: Mapping[str, Any], body: Mapping[str, Any]) -> list:
    """Every label with its score, best first, per input; a single text answers one list."""
    ranked = []
    for d in result["data"]:
        labels = _labels(d)
        ranked.append(sorted(({"score": p, "label": labels[i]} for i, p in enumerate(d["probs"])), key=lambda x: -x["score"]))
    return ranked[0] if isinstance(body.get("inputs"), str) else ranked


def _labels(item: Mapping[str, Any]) -> list[str]:
    """Label names by class index. The pool names only the best class (``label``), so the
    others are their indices, as TEI names classes without ``id2label``."""
    probs = item["probs"]
    names = [str(i) for i in range(len(probs))]
    best = max(range(len(probs)), key=probs.__getitem__) if probs else 0
    if probs and item.get("label") is not None:
        names[best] = str(item["label"])
    return names


def rerank_response(result: Mapping[str, Any], body: Mapping[str, Any]) -> list:
    ranks = []
    for r in result["results"]:
        rank: dict[str, Any] = {"index": r["index"]}
        if body.get("return_text"):
            rank["text"] = (r.get("document") or {}).get("text")
        rank["score"] = r["relevance_score"]
        ranks.append(rank)
    return ranks


@dataclass(frozen=True)
class TeiRoute:
    """A TEI route: how its body becomes a pool request, how the result becomes its answer."""

    request: Callable[[Mapping[str, Any]], dict[str, Any]]
    response: Callable[[Mapping[str, Any], Mapping[str, Any]], list]


TEI_ROUTES: dict[str, TeiRoute] = {
    "/embed": TeiRoute(embed_request, embed_response),
    "/embed_all": TeiRoute(embed_all_request, embed_all_response),
    "/embed_sparse": TeiRoute(embed_sparse_request, embed_sparse_response),
    "/predict": TeiRoute(predict_request, predict_response),
}
TEI_RERANK = TeiRoute(rerank_request, rerank_response)


def is_tei_rerank(body: Mapping[str, Any]) -> bool:
    """TEI's ``/rerank`` body has ``texts``; vLLM's (same path) has ``documents``."""
    return "texts" in body and "documents" not in body


__all__ = ["TEI_RERANK", "TEI_ROUTES", "TeiRoute", "is_tei_rerank"]
