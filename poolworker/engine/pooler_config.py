"""The pooler configuration: how hidden states become the task's output.

Field names follow vLLM's ``PoolerConfig`` so a config that works there works here. A resolved
config (explicit > Sentence-Transformers files > model defaults) is built by the loader.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

PoolingTask = Literal["embed", "classify", "token_embed", "token_classify"]
POOLING_TASKS: tuple[str, ...] = ("embed", "classify", "token_embed", "token_classify")
SequencePoolingType = Literal["CLS", "MEAN", "LAST"]
TokenPoolingType = Literal["ALL", "STEP"]
SEQ_POOLING_TYPES: tuple[str, ...] = ("CLS", "MEAN", "LAST")
TOK_POOLING_TYPES: tuple[str, ...] = ("ALL", "STEP")


class PoolerConfig(BaseModel):
    """Pooling options. ``None`` means "take it from the model" (Sentence-Transformers files,
    then the architecture's defaults)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: PoolingTask | None = None
    pooling_type: Literal["CLS", "MEAN", "LAST", "ALL", "STEP"] | None = None
    use_activation: bool | None = None
    dimensions: int | None = None
    enable_chunked_processing: bool = False
    max_embed_len: int | None = None
    logit_mean: float | None = None
    logit_sigma: float | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None

    @field_validator("pooling_type", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("dimensions", "max_embed_len")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be a positive integer")
        return value

    @field_validator("logit_mean", "logit_sigma")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _sigma_not_zero(self) -> PoolerConfig:
        if self.logit_sigma == 0:
            raise ValueError("logit_sigma cannot be 0 (it divides the logits)")
        return self

    @property
    def seq_pooling_type(self) -> str | None:
        return self.pooling_type if self.pooling_type in SEQ_POOLING_TYPES else None

    @property
    def tok_pooling_type(self) -> str | None:
        return self.pooling_type if self.pooling_type in TOK_POOLING_TYPES else None
