"""The offline engine: loading, conversion, tokenization, batching, forward pass, poolers."""

from .engine import Engine
from .outputs import (
    ClassificationOutput,
    EmbeddingOutput,
    MultiPoolingOutput,
    PoolingOutput,
    RequestOutput,
    RerankResult,
    ScoringOutput,
)
from .pooler_config import POOLING_TASKS, PoolerConfig
from .resolve import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    ModelNotFoundError,
    resolve_model_path,
)
from .weights import UnsafeWeightsError

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "POOLING_TASKS",
    "ClassificationOutput",
    "EmbeddingOutput",
    "Engine",
    "ModelNotFoundError",
    "MultiPoolingOutput",
    "PoolerConfig",
    "PoolingOutput",
    "RequestOutput",
    "RerankResult",
    "ScoringOutput",
    "UnsafeWeightsError",
    "resolve_model_path",
]
