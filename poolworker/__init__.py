"""poolworker: serve pooling models (embed, classify, score, rerank, token tasks) from streams.

The offline library is ``Engine``; the streaming worker builds on it.
"""

from .engine import (
    ClassificationOutput,
    EmbeddingOutput,
    Engine,
    PoolerConfig,
    PoolingOutput,
    RequestOutput,
    RerankResult,
    ScoringOutput,
)

__all__ = [
    "ClassificationOutput",
    "EmbeddingOutput",
    "Engine",
    "PoolerConfig",
    "PoolingOutput",
    "RequestOutput",
    "RerankResult",
    "ScoringOutput",
]
__version__ = "0.1.0"
