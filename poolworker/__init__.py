"""poolworker: serve pooling models (embed, classify, score, rerank, token tasks) from streams.

The offline library is ``Engine``; the streaming worker builds on it.

The public names are imported on first use (PEP 562): ``import poolworker.client`` must not pay
for torch and transformers (seconds, and gigabytes on disk a client may not have), while
``from poolworker import Engine`` keeps working.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
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


def __getattr__(name: str) -> Any:
    """Import ``poolworker.engine`` the first time one of its public names is asked for."""
    if name in __all__:
        value = getattr(import_module(".engine", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
