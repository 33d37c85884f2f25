"""The units the worker batches, caches and sends to the engine: ``Item``, ``Plan``, ``ItemResult``.

A request is split into items so that the worker can batch items from many requests into one
engine call and cache each item on its own. Two items with the same ``Plan.group_key()`` and the
same ``Item.key_payload()`` always produce the same ``ItemResult`` on the same model, which is
what makes both batching and caching safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Scalar = str | int | bool | None
EngineCall = Literal["encode", "score"]
# Joins the tasks of one multi-task plan ("embed&token_embed&token_classify"), as vLLM names them.
MULTI_TASK_SEPARATOR = "&"


@dataclass(frozen=True)
class Item:
    """One prompt (text, or token ids as a tuple so the item is hashable) or one scoring pair.

    ``pair`` is the second text of a score/rerank pair; ``prompt`` is then the first text.
    """

    prompt: str | tuple[int, ...]
    pair: str | None = None

    def key_payload(self) -> dict[str, object]:
        """A JSON-serialisable value identifying the item for cache keys; text, token ids and
        pairs are tagged differently so ``"12"``, ``(12,)`` and a pair never collide."""
        if self.pair is not None:
            return {"pair": [self.prompt, self.pair]}
        if isinstance(self.prompt, str):
            return {"text": self.prompt}
        return {"ids": list(self.prompt)}

    def engine_prompt(self) -> str | list[int]:
        """The prompt as ``Engine.encode`` takes it."""
        return self.prompt if isinstance(self.prompt, str) else list(self.prompt)


@dataclass(frozen=True)
class Plan:
    """What one request asks of the engine.

    ``options`` holds every option that changes an item's output, as sorted ``(name, value)``
    pairs (unset ones as None), so that equal plans compare and hash equal. ``pooling_task`` is
    None for ``score`` and for ``task="pooling"`` without ``pooling_task`` (the worker resolves
    that to ``engine.default_task``), and several tasks joined by ``MULTI_TASK_SEPARATOR`` for a
    request's ``pooling_tasks`` (all from one forward pass).
    """

    engine_call: EngineCall
    pooling_task: str | None
    options: tuple[tuple[str, Scalar], ...]
    items: tuple[Item, ...]

    def group_key(self) -> tuple[str, str | None, tuple[tuple[str, Scalar], ...]]:
        """Items of plans with equal group keys can share one engine call (and a cache scope)."""
        return (self.engine_call, self.pooling_task, self.options)

    def option_dict(self) -> dict[str, Scalar]:
        return dict(self.options)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The engine's answer for one item.

    ``data`` is a float for score items, a float32 vector for embed/classify, a float32 matrix
    (one row per token) for token tasks — numpy arrays, so shaping and serializing a body never
    walks floats in Python (plain lists are accepted too) — and, for a multi-task plan, a dict of
    those per task (plus bge-m3's ``lexical_weights``, token id → weight); ``num_tokens`` is how
    many tokens the model saw (for usage).
    """

    data: float | np.ndarray | list[float] | list[list[float]] | dict[str, object]
    num_tokens: int

    def __reduce__(self):
        """Pickled as a plain tuple (results come back from the model process by the thousand)."""
        return ItemResult, (self.data, self.num_tokens)
