"""Attention over the packed layout: one call per length bucket.

On CPU, short buckets run as plain ``matmul → softmax → matmul`` instead of SDPA: torch's CPU
flash kernel pays a fixed cost per (sequence, head) block that dwarfs the work when sequences are
a few dozen tokens long (2 cores, MiniLM heads of 32: 7-token buckets 17 ms vs 6 ms a layer,
32 tokens 6.2 vs 3.2 ms; from ~96 tokens up SDPA wins, at 256 it is 3x faster). GPUs always take
SDPA (its fused kernels win at every length there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import Layout

# Widest bucket that takes the explicit matmul path on CPU (measured crossover ~64-96 tokens).
MATMUL_MAX_WIDTH = 64


def packed_attention(qkv: torch.Tensor, n_q: int, n_kv: int, layout: Layout, causal: bool) -> torch.Tensor:
    """``qkv`` ``[T, n_q + 2*n_kv, d]`` (query heads, then key heads, then value heads) →
    ``[T, n_q*d]``. Each token attends only within its own sequence (to its attended keys:
    ``build_layout``'s ``attended``, bidirectional models only), and only backwards when
    ``causal``; the scale is ``d**-0.5``."""
    total, _, dim = qkv.shape
    width_out = n_q * dim
    buckets = layout.buckets
    if len(buckets) == 1 and buckets[0].gather is None:
        mask = None if causal else buckets[0].key_mask
        return _run(qkv, buckets[0].batch, buckets[0].width, n_q, n_kv, mask, causal).reshape(total, width_out)
    out = qkv.new_empty(total, width_out)
    for b in buckets:
        if b.gather is None:
            o = _run(qkv[b.start : b.end], b.batch, b.width, n_q, n_kv, None if causal else b.key_mask, causal)
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
    if _takes_matmul_path(qkv, width):
        o = _matmul_attention(q, k, v, mask, causal)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    return o.transpose(1, 2)


def _takes_matmul_path(qkv: torch.Tensor, width: int) -> bool:
    # Full-precision CPU only: in bf16/fp16 SDPA accumulates the softmax in float32, and an
    # explicit softmax on half-precision scores would not.
    return qkv.device.type == "cpu" and width <= MATMUL_MAX_WIDTH and qkv.dtype in (torch.float32, torch.float64)


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Softmax attention ``[B, heads, L, d]`` written out; ``mask`` True = key may be attended."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    if causal:
        width = scores.shape[-1]
        scores.masked_fill_(torch.ones(width, width, dtype=torch.bool, device=scores.device).triu_(1), float("-inf"))
    return torch.matmul(scores.softmax(-1), v)
