"""Attention over the packed layout: one SDPA call per length bucket."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import Layout


def packed_attention(qkv: torch.Tensor, n_q: int, n_kv: int, layout: Layout, causal: bool) -> torch.Tensor:
    """``qkv`` ``[T, n_q + 2*n_kv, d]`` (query heads, then key heads, then value heads) →
    ``[T, n_q*d]``. Each token attends only within its own sequence, and only backwards when
    ``causal``; the scale is ``d**-0.5``."""
    total, _, dim = qkv.shape
    width_out = n_q * dim
    buckets = layout.buckets
    if len(buckets) == 1 and buckets[0].gather is None:
        return _run(qkv, buckets[0].batch, buckets[0].width, n_q, n_kv, None, causal).reshape(total, width_out)
    out = qkv.new_empty(total, width_out)
    for b in buckets:
        if b.gather is None:
            o = _run(qkv[b.start : b.end], b.batch, b.width, n_q, n_kv, None, causal)
            out[b.start : b.end] = o.reshape(b.end - b.start, width_out)
            continue
        # Right-padded inside the bucket. With a causal mask real queries never see the padding
        # (it comes after them), so the key mask is needed only for bidirectional attention.
        mask = None if causal else b.key_mask
        o = _run(qkv[b.gather], b.batch, b.width, n_q, n_kv, mask, causal)
        out[b.rows] = o.reshape(b.batch * b.width, width_out)[b.keep]
    return out


def _run(qkv: torch.Tensor, batch: int, width: int, n_q: int, n_kv: int, mask, causal: bool) -> torch.Tensor:
    """Rows ``[batch*width, heads, d]`` → attention output ``[batch, width, n_q, d]``."""
    x = qkv.view(batch, width, qkv.shape[1], qkv.shape[2]).transpose(1, 2)
    q, k, v = x[:, :n_q], x[:, n_q : n_q + n_kv], x[:, n_q + n_kv :]
    if n_kv != n_q:  # grouped-query attention: each KV head serves n_q // n_kv query heads
        k = k.repeat_interleave(n_q // n_kv, dim=1)
        v = v.repeat_interleave(n_q // n_kv, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    return o.transpose(1, 2)
