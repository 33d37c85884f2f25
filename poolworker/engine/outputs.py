"""Result objects, shaped like vLLM's ``LLM`` pooling outputs (``.outputs.embedding`` …)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch


@dataclass(frozen=True)
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass(frozen=True)
class ClassificationOutput:
    probs: list[float]
    label: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass(frozen=True)
class ScoringOutput:
    score: float


@dataclass(frozen=True)
class PoolingOutput:
    data: torch.Tensor


@dataclass(frozen=True)
class MultiPoolingOutput:
    """Several tasks' outputs of one prompt from one forward pass (``Engine.encode_multi``):
    ``data[task]`` as ``PoolingOutput.data`` would hold it; ``lexical_weights`` is bge-m3's
    sparse output (token id → weight) when ``token_classify`` was asked of a bge-m3 model."""

    data: dict[str, torch.Tensor]
    lexical_weights: dict[int, float] | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class RequestOutput(Generic[T]):
    """One prompt's result; ``prompt_token_ids`` are the tokens the model saw (for usage)."""

    request_id: str
    outputs: T
    prompt_token_ids: list[int] = field(repr=False)
    finished: bool = True

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


EmbeddingRequestOutput = RequestOutput[EmbeddingOutput]
ClassificationRequestOutput = RequestOutput[ClassificationOutput]
ScoringRequestOutput = RequestOutput[ScoringOutput]
PoolingRequestOutput = RequestOutput[PoolingOutput]


@dataclass(frozen=True)
class RerankResult:
    index: int
    relevance_score: float
    document: str | None
    prompt_token_ids: list[int] = field(repr=False)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)
