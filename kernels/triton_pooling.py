"""Triton versions of the pooling primitives in ``pooling.py``, same signatures and results.

Importing this module imports triton; ``kernels/__init__.py`` does so lazily, on the first CUDA
tensor, so the package imports (and runs on CPU) without triton. Under ``TRITON_INTERPRET=1`` the
kernels also run on CPU tensors, which is how the tests check them on a machine with no GPU.

No kernel reads ``cu_seqlens`` on the host: the launch grid depends only on shapes, so a call
never waits for the GPU. Segment reductions are one program per (sequence, feature block); when
there are too few sequences to fill the card, each sequence's tokens are split over several
programs that write float32 partials, and one small torch reduction finishes them.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

_FP32_DOT = "ieee"  # fp32 MaxSim must match the reference bit for bit in spirit: no TF32


# ----------------------------------------------------------------------------------------------
# Launch heuristics
# ----------------------------------------------------------------------------------------------
@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs_wanted(device: torch.device) -> int:
    """Enough programs to keep every SM busy a few times over (a fixed guess on CPU)."""
    if device.type != "cuda":
        return 8
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on the tensor's own card, whichever is current."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _pow2(n: int, lo: int = 1, hi: int | None = None) -> int:
    p = max(lo, triton.next_power_of_2(max(1, n)))
    return min(p, hi) if hi is not None else p


def _check_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [total_tokens, H], got shape {tuple(hidden.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D with N+1 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != hidden.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, hidden on {hidden.device}")


def _rows(hidden: torch.Tensor) -> torch.Tensor:
    """Kernels index features with stride 1; anything else is copied once."""
    return hidden if hidden.stride(-1) == 1 else hidden.contiguous()


# ----------------------------------------------------------------------------------------------
# CLS / LAST: one row per sequence
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["H"])
def _gather_rows_kernel(
    hidden_ptr, cu_ptr, out_ptr, H, stride_h, stride_o,
    LAST: tl.constexpr, BLOCK_H: tl.constexpr,
):
    seq = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    if LAST:
        row = tl.load(cu_ptr + seq + 1) - 1
    else:
        row = tl.load(cu_ptr + seq)
    vals = tl.load(hidden_ptr + row.to(tl.int64) * stride_h + cols, mask=mask)
    tl.store(out_ptr + seq.to(tl.int64) * stride_o + cols, vals, mask=mask)


def _gather(hidden: torch.Tensor, cu_seqlens: torch.Tensor, last: bool) -> torch.Tensor:
    _check_packed(hidden, cu_seqlens)
    hidden = _rows(hidden)
    n, h = cu_seqlens.numel() - 1, hidden.shape[1]
    out = torch.empty(n, h, dtype=hidden.dtype, device=hidden.device)
    if n == 0 or h == 0:
        return out
    block_h = _pow2(h, 16, 1024)
    grid = (n, triton.cdiv(h, block_h))
    with _on(hidden.device):
        _gather_rows_kernel[grid](hidden, cu_seqlens, out, h, hidden.stride(0), out.stride(0),
                                  LAST=last, BLOCK_H=block_h, num_warps=4 if block_h >= 512 else 2)
    return out


def segment_cls(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """First token of each sequence: ``[N, H]``."""
    return _gather(hidden, cu_seqlens, last=False)


def segment_last(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Last token of each sequence: ``[N, H]``."""
    return _gather(hidden, cu_seqlens, last=True)


# ----------------------------------------------------------------------------------------------
# MEAN / MAX: a reduction over each sequence's tokens
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["H", "N", "split"])
def _segment_reduce_kernel(
    hidden_ptr, cu_ptr, out_ptr, H, N, stride_h, stride_o, split,
    IS_MAX: tl.constexpr, SPLIT_TOKENS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    seq = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    part = tl.program_id(2)
    col_mask = cols < H
    start = tl.load(cu_ptr + seq)
    end = tl.load(cu_ptr + seq + 1)
    length = end - start
    if SPLIT_TOKENS:
        # this program's share of the sequence, in whole token blocks
        chunk = tl.cdiv(tl.cdiv(length, split), BLOCK_T) * BLOCK_T
        lo = start + part * chunk
        hi = tl.minimum(lo + chunk, end)
    else:
        lo = start
        hi = end
    offs_t = tl.arange(0, BLOCK_T)
    if IS_MAX:
        acc = tl.full((BLOCK_T, BLOCK_H), float("-inf"), tl.float32)
    else:
        acc = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
    for t in range(lo, hi, BLOCK_T):
        rows = t + offs_t
        mask = (rows < hi)[:, None] & col_mask[None, :]
        ptrs = hidden_ptr + rows.to(tl.int64)[:, None] * stride_h + cols[None, :]
        if IS_MAX:
            vals = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
            acc = tl.maximum(acc, vals)
        else:
            vals = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            acc += vals
    if IS_MAX:
        res = tl.max(acc, axis=0)
    else:
        res = tl.sum(acc, axis=0)
    if SPLIT_TOKENS:
        # float32 partials [split, N, H]; the caller reduces over split
        dst = out_ptr + (part * N + seq).to(tl.int64) * stride_o + cols
        tl.store(dst, res, mask=col_mask)
    else:
        if not IS_MAX:
            res = res / length.to(tl.float32)
        dst = out_ptr + seq.to(tl.int64) * stride_o + cols
        tl.store(dst, res.to(out_ptr.dtype.element_ty), mask=col_mask)


def _segment_reduce(hidden: torch.Tensor, cu_seqlens: torch.Tensor, is_max: bool) -> torch.Tensor:
    _check_packed(hidden, cu_seqlens)
    hidden = _rows(hidden)
    n, h = cu_seqlens.numel() - 1, hidden.shape[1]
    total = hidden.shape[0]
    if n == 0 or h == 0:
        return torch.empty(n, h, dtype=hidden.dtype, device=hidden.device)
    block_h = _pow2(h, 16, 128)
    h_blocks = triton.cdiv(h, block_h)
    block_t = 32 if hidden.element_size() >= 4 else 64
    # Split long sequences over several programs only when the sequences alone can't fill the
    # card and there are tokens enough to share (average length from shapes: no host sync).
    programs = n * h_blocks
    avg_len = total / n
    split = 1
    if programs < _programs_wanted(hidden.device) and avg_len >= 4 * block_t:
        split = min(triton.cdiv(_programs_wanted(hidden.device), programs), int(avg_len // (2 * block_t)), 64)
        split = max(1, split)
    grid = (n, h_blocks, split)
    if split == 1:
        out = torch.empty(n, h, dtype=hidden.dtype, device=hidden.device)
        with _on(hidden.device):
            _segment_reduce_kernel[grid](hidden, cu_seqlens, out, h, n, hidden.stride(0), out.stride(0), 1,
                                         IS_MAX=is_max, SPLIT_TOKENS=False, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
        return out
    partial = torch.empty(split, n, h, dtype=torch.float32, device=hidden.device)
    with _on(hidden.device):
        _segment_reduce_kernel[grid](hidden, cu_seqlens, partial, h, n, hidden.stride(0), partial.stride(1), split,
                                     IS_MAX=is_max, SPLIT_TOKENS=True, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
    if is_max:
        return partial.amax(0).to(hidden.dtype)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.float32)
    return (partial.sum(0) / lengths.unsqueeze(1)).to(hidden.dtype)


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, accumulated in float32, returned in ``hidden``'s dtype."""
    return _segment_reduce(hidden, cu_seqlens, is_max=False)


def segment_max(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over each sequence's tokens: ``[N, H]``."""
    return _segment_reduce(hidden, cu_seqlens, is_max=True)


def split_segments(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Views, no kernel needed: the torch version is the only one."""
    from .pooling import split_segments as _split

    return _split(hidden, cu_seqlens)


# ----------------------------------------------------------------------------------------------
# Matryoshka cut + L2 normalize, fused
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["M", "D", "eps"])
def _normalize_rows_kernel(
    x_ptr, out_ptr, M, D, stride_x, stride_o, eps,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_PASS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    offs = tl.arange(0, BLOCK_D)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    o_rows = out_ptr + rows.to(tl.int64)[:, None] * stride_o
    if ONE_PASS:
        mask = row_mask[:, None] & (offs < D)[None, :]
        x = tl.load(x_rows + offs[None, :], mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        y = x / tl.maximum(norm, eps)[:, None]
        tl.store(o_rows + offs[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # rows wider than one block (SPLADE's vocabulary): sum of squares, then scale
        sq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for d in range(0, D, BLOCK_D):
            cols = d + offs
            mask = row_mask[:, None] & (cols < D)[None, :]
            x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            sq += x * x
        denom = tl.maximum(tl.sqrt(tl.sum(sq, axis=1)), eps)[:, None]
        for d in range(0, D, BLOCK_D):
            cols = d + offs
            mask = row_mask[:, None] & (cols < D)[None, :]
            x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(o_rows + cols[None, :], (x / denom).to(out_ptr.dtype.element_ty), mask=mask)


def normalize_and_cut(x: torch.Tensor, dimensions: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Matryoshka cut to the first ``dimensions`` features, then L2-normalize, in one pass."""
    if dimensions is not None:
        x = x[..., :dimensions]
    if not normalize:
        return x
    d = x.shape[-1]
    lead = x.shape[:-1]
    rows = x.reshape(-1, d) if x.dim() != 2 else x
    rows = _rows(rows)
    m = rows.shape[0]
    out = torch.empty(m, d, dtype=x.dtype, device=x.device)
    if m == 0 or d == 0:
        return out.reshape(*lead, d)
    one_pass = d <= 8192
    block_d = _pow2(d, 16, 8192) if one_pass else 2048
    block_m = max(1, min(16, 4096 // block_d)) if one_pass else 1
    grid = (triton.cdiv(m, block_m),)
    with _on(x.device):
        _normalize_rows_kernel[grid](rows, out, m, d, rows.stride(0), out.stride(0), 1e-12,
                                     BLOCK_M=block_m, BLOCK_D=block_d, ONE_PASS=one_pass,
                                     num_warps=8 if block_d >= 4096 else 4)
    return out.reshape(*lead, d)


# ----------------------------------------------------------------------------------------------
# MaxSim (late interaction)
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["Lq", "D"])
def _maxsim_kernel(
    q_ptr, d_ptr, cu_ptr, out_ptr, Lq, D, stride_q, stride_d, stride_o,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr, PRECISION: tl.constexpr,
):
    qb = tl.program_id(0)
    doc = tl.program_id(1)
    start = tl.load(cu_ptr + doc)
    end = tl.load(cu_ptr + doc + 1)
    q_rows = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q_rows < Lq
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    q_base = q_ptr + q_rows.to(tl.int64)[:, None] * stride_q
    if ONE_K:
        q = tl.load(q_base + offs_k[None, :], mask=q_mask[:, None] & (offs_k < D)[None, :], other=0.0)
    best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    for n in range(start, end, BLOCK_N):
        d_rows = n + offs_n
        d_mask = d_rows < end
        d_base = d_ptr + d_rows.to(tl.int64)[:, None] * stride_d
        if ONE_K:
            dt = tl.load(d_base + offs_k[None, :], mask=d_mask[:, None] & (offs_k < D)[None, :], other=0.0)
            acc = tl.dot(q, tl.trans(dt), input_precision=PRECISION)
        else:
            acc = tl.zeros((BLOCK_Q, BLOCK_N), tl.float32)
            for k in range(0, D, BLOCK_K):
                cols = k + offs_k
                k_mask = (cols < D)[None, :]
                qk = tl.load(q_base + cols[None, :], mask=q_mask[:, None] & k_mask, other=0.0)
                dk = tl.load(d_base + cols[None, :], mask=d_mask[:, None] & k_mask, other=0.0)
                acc = tl.dot(qk, tl.trans(dk), acc, input_precision=PRECISION)
        acc = tl.where(d_mask[None, :], acc, float("-inf"))
        best = tl.maximum(best, tl.max(acc, axis=1))
    tl.store(out_ptr + doc.to(tl.int64) * stride_o + q_rows, best, mask=q_mask)


def _common(query: torch.Tensor, documents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(query.dtype, documents.dtype)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        dtype = torch.float32
    return _rows(query.to(dtype)), _rows(documents.to(dtype))


def _maxsim_packed(query: torch.Tensor, documents: torch.Tensor, cu_docs: torch.Tensor) -> torch.Tensor:
    """Per-document sums of per-query-token maxima: ``[num_docs]`` float32."""
    if query.dim() != 2 or documents.dim() != 2 or query.shape[1] != documents.shape[1]:
        raise ValueError(f"query [Lq, D] and documents [Ld, D] must share D, got {tuple(query.shape)} and {tuple(documents.shape)}")
    query, documents = _common(query, documents)
    lq, d = query.shape
    num_docs = cu_docs.numel() - 1
    best = torch.empty(num_docs, lq, dtype=torch.float32, device=query.device)
    if num_docs == 0 or lq == 0:
        return best.sum(1)
    block_k = _pow2(d, 16, 128)
    block_q = _pow2(lq, 16, 64)
    block_n = 64 if block_k <= 64 else 32
    grid = (triton.cdiv(lq, block_q), num_docs)
    with _on(query.device):
        _maxsim_kernel[grid](query, documents, cu_docs, best, lq, d, query.stride(0), documents.stride(0), best.stride(0),
                             BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_K=block_k, ONE_K=d <= block_k,
                             PRECISION=_FP32_DOT if query.dtype == torch.float32 else None, num_warps=4)
    return best.sum(1)


def maxsim(query: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """Late-interaction score (ColBERT's MaxSim) as a float32 scalar."""
    cu = torch.tensor([0, document.shape[0]], dtype=torch.int64, device=query.device)
    return _maxsim_packed(query, document, cu)[0]


def maxsim_many(query: torch.Tensor, documents: list[torch.Tensor]) -> torch.Tensor:
    """MaxSim of one query against many documents in one launch: ``[len(documents)]`` float32."""
    if len(documents) == 0:
        return torch.empty(0, dtype=torch.float32, device=query.device)
    lengths = [int(doc.shape[0]) for doc in documents]
    cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).to(query.device, non_blocking=True)
    return _maxsim_packed(query, torch.cat(list(documents)), cu)
