"""Torch reference implementations of the pooling primitives.

The packed layout is the one the batcher produces: the hidden states of all sequences
concatenated along the token axis, with ``cu_seqlens`` (int64, length N+1, starting at 0) marking
where each sequence starts and ends. Working on this layout means no padding is ever pooled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return cu_seqlens[1:] - cu_seqlens[:-1]


def _segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    lengths = _lengths(cu_seqlens)
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths, output_size=total)


def segment_cls(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """First token of each sequence: ``[N, H]``."""
    return hidden[cu_seqlens[:-1]]


def segment_last(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Last token of each sequence: ``[N, H]`` (padding never exists in the packed layout)."""
    return hidden[cu_seqlens[1:] - 1]


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, accumulated in float32: ``[N, H]``."""
    n = cu_seqlens.numel() - 1
    ids = _segment_ids(cu_seqlens, hidden.shape[0])
    sums = torch.zeros(n, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, ids, hidden.float())
    return (sums / _lengths(cu_seqlens).unsqueeze(1).to(sums.dtype)).to(hidden.dtype)


def segment_max(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over each sequence's tokens: ``[N, H]`` (SPLADE's reduction)."""
    n = cu_seqlens.numel() - 1
    ids = _segment_ids(cu_seqlens, hidden.shape[0])
    out = torch.full((n, hidden.shape[1]), float("-inf"), dtype=hidden.dtype, device=hidden.device)
    return out.scatter_reduce_(0, ids.unsqueeze(1).expand_as(hidden), hidden, "amax", include_self=True)


def split_segments(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Each sequence's token rows as its own tensor (views, no copy)."""
    return list(torch.split(hidden, _lengths(cu_seqlens).tolist()))


def normalize_and_cut(x: torch.Tensor, dimensions: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka cut to the first ``dimensions`` features, then L2-normalize (cut first, so the
    prefix is renormalized)."""
    if dimensions is not None:
        x = x[..., :dimensions]
    return F.normalize(x, p=2, dim=-1) if normalize else x


def maxsim(query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """Late-interaction score: for each query token the best dot product over document tokens,
    summed over query tokens (ColBERT's MaxSim). ``query [Lq, D]``, ``document [Ld, D]``."""
    return (query.float() @ document.float().T).max(dim=1).values.sum()


def maxsim_many(query: torch.Tensor, documents: list[torch.Tensor]) -> torch.Tensor:
    """MaxSim of one query against each document: ``[len(documents)]`` float32."""
    if len(documents) == 0:
        return torch.empty(0, dtype=torch.float32, device=query.device)
    return torch.stack([maxsim(query, doc) for doc in documents])
