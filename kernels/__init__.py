"""Pooling kernels over the packed layout (``hidden[total_tokens, H]`` + ``cu_seqlens``).

Every public function here has one torch implementation that runs anywhere; Triton versions
for CUDA plug in behind the same names (see docs/architecture.md).
"""

from .pooling import (
    maxsim,
    normalize_and_cut,
    segment_cls,
    segment_last,
    segment_max,
    segment_mean,
    split_segments,
)

__all__ = [
    "maxsim",
    "normalize_and_cut",
    "segment_cls",
    "segment_last",
    "segment_max",
    "segment_mean",
    "split_segments",
]
