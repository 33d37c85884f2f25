"""The offline engine: loading, conversion, tokenization, batching, forward pass, poolers."""

from .engine import Engine
from .outputs import (
    ClassificationOutput,
    EmbeddingOutput,
    PoolingOutput,
    RequestOutput,
    RerankResult,
    ScoringOutput,
)
from .pooler_config import POOLING_TASKS, PoolerConfig
from .resolve import BUNDLED_MODELS, DEFAULT_MODEL, ModelNotFoundError, resolve_model_path
from .weights import UnsafeWeightsError

__all__ = [
    "BUNDLED_MODELS",
    "ClassificationOutput",
    "DEFAULT_MODEL",
    "EmbeddingOutput",
    "Engine",
    "ModelNotFoundError",
    "POOLING_TASKS",
    "PoolerConfig",
    "PoolingOutput",
    "RequestOutput",
    "RerankResult",
    "ScoringOutput",
    "UnsafeWeightsError",
    "resolve_model_path",
]
