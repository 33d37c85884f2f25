"""Pooling kernels over the packed layout (``hidden[total_tokens, H]`` + ``cu_seqlens``).

Every public function has a torch implementation (``pooling.py``) that runs anywhere and a
Triton one (``triton_pooling.py``) for CUDA tensors. The names here pick per call:

- ``POOLWORKER_KERNELS=torch`` forces the torch versions;
- ``POOLWORKER_KERNELS=triton`` forces the Triton versions, CPU tensors included (meaningful
  only under ``TRITON_INTERPRET=1``, which is how the tests run them without a GPU);
- otherwise (``auto``) Triton for CUDA tensors when triton imports, torch for the rest.

triton is imported on the first CUDA call, never at package import: the package imports, and
the CPU path runs, without triton installed. If triton is missing or fails to import, CUDA
tensors take the torch path and a warning says why, once.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch

from . import pooling as torch_pooling
from .pooling import split_segments

_log = logging.getLogger(__name__)
_ENV = "POOLWORKER_KERNELS"
_CHOICES = ("auto", "torch", "triton")
_triton_module: ModuleType | None = None
_triton_error: str | None = None


def triton_kernels() -> ModuleType | None:
    """The Triton module, imported on first use; None (and the reason in ``triton_error()``)
    when triton cannot be imported."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            from . import triton_pooling
        except Exception as exc:  # noqa: BLE001 -- ImportError, or a triton install that fails to initialise
            _triton_error = f"{type(exc).__name__}: {exc}"
            _log.warning("triton kernels unavailable, using the torch versions: %s", _triton_error)
        else:
            _triton_module = triton_pooling
    return _triton_module


def triton_error() -> str | None:
    return _triton_error


def backend_choice() -> str:
    choice = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{_ENV} must be one of {', '.join(_CHOICES)}, got {choice!r}")
    return choice


def backend_for(tensor: torch.Tensor) -> ModuleType:
    """The module whose implementation runs for ``tensor``: triton's or torch's."""
    choice = backend_choice()
    if choice == "torch" or (choice == "auto" and tensor.device.type != "cuda"):
        return torch_pooling
    mod = triton_kernels()
    if mod is None:
        if choice == "triton":
            raise RuntimeError(f"{_ENV}=triton but triton cannot be imported: {_triton_error}")
        return torch_pooling
    return mod


def segment_cls(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """First token of each sequence: ``[N, H]``."""
    return backend_for(hidden).segment_cls(hidden, cu_seqlens)


def segment_last(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Last token of each sequence: ``[N, H]``."""
    return backend_for(hidden).segment_last(hidden, cu_seqlens)


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, accumulated in float32, in ``hidden``'s dtype."""
    return backend_for(hidden).segment_mean(hidden, cu_seqlens)


def segment_max(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over each sequence's tokens: ``[N, H]``."""
    return backend_for(hidden).segment_max(hidden, cu_seqlens)


def normalize_and_cut(x: torch.Tensor, dimensions: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka cut to the first ``dimensions`` features, then L2-normalize."""
    return backend_for(x).normalize_and_cut(x, dimensions, normalize)


def maxsim(query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """ColBERT's MaxSim of ``query [Lq, D]`` against ``document [Ld, D]``: a float32 scalar."""
    return backend_for(query).maxsim(query, document)


def maxsim_many(query: torch.Tensor, documents: list[torch.Tensor]) -> torch.Tensor:
    """MaxSim of one query against each document (one launch on CUDA): ``[len(documents)]``."""
    return backend_for(query).maxsim_many(query, documents)


__all__ = [
    "backend_choice",
    "backend_for",
    "maxsim",
    "maxsim_many",
    "normalize_and_cut",
    "segment_cls",
    "segment_last",
    "segment_max",
    "segment_mean",
    "split_segments",
    "triton_error",
    "triton_kernels",
]
