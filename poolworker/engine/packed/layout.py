"""The packed batch: a flat token array plus ``cu_seqlens``, and how attention walks it.

Linear layers, norms and activations run on ``[T, H]`` rows with no padding at all. Attention is
the one step that needs sequences apart: sequences of similar length are grouped into *buckets*;
a bucket runs as one SDPA call on ``[B, heads, L, d]``, padded only up to its own longest member
(no padding at all when its lengths are equal).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

# A bucket closes when the next (shorter) sequence is under this fraction of its longest one, so
# attention pads at most ~1/BUCKET_RATIO - 1 of a bucket's keys.
BUCKET_RATIO = 0.8
# Once a bucket's longest member is this short, every shorter sequence joins it: padding a few
# keys costs less than another bucket's dozen tensor ops, which were a quarter of the model
# thread's time on short texts and a small model. Not wider: a bucket's attention grows with the
# square of its width, and at 64 the padded scores of short texts cost more than the ops saved
# (2 cores, 1-layer hidden-32 BERT, corpus first lines: 34 → 26 µs a text at 24; MiniLM the same
# at 16-64).
SHORT_WIDTH = 24


@dataclass
class Bucket:
    """Sequences attended together. ``rows`` are their packed rows in bucket order; with
    ``gather`` None they are one contiguous run of equal-length sequences (a plain view), whose
    ``key_mask`` is None unless some of their keys are not attended."""

    batch: int
    width: int
    rows: torch.Tensor | None  # [n_real] packed row of each real token (None: rows start..end)
    start: int
    end: int
    gather: torch.Tensor | None  # [batch*width] packed row for each padded slot
    keep: torch.Tensor | None  # [n_real] padded slot of each real token
    key_mask: torch.Tensor | None  # [batch, 1, 1, width] bool, True = real key


@dataclass
class Layout:
    """Everything a packed forward needs besides the weights, built once per batch."""

    cu_seqlens: torch.Tensor  # [N+1] int64
    positions: torch.Tensor  # [T] int64, restarting at 0 for every sequence
    buckets: list[Bucket]
    total: int


def build_layout(lengths: list[int], device: torch.device, attended: list[int | None] | None = None) -> Layout:
    """Layout of sequences with these lengths, back to back in the given order. ``attended``
    (per sequence, None = all) limits the keys to each sequence's first tokens: the rest still
    get outputs but no token attends to them (PyLate's non-attended query expansion)."""
    if not lengths or min(lengths) < 1:
        raise ValueError("every sequence needs at least one token")
    n = len(lengths)
    # None when every key is attended (no ``attended``): other models build their buckets as before.
    keys = None if attended is None else [k if k is not None else n_ for k, n_ in zip(attended, lengths)]
    lens = torch.tensor(lengths, dtype=torch.long)
    cu = torch.zeros(n + 1, dtype=torch.long)
    cu[1:] = lens.cumsum(0)
    total = int(cu[-1])
    starts = torch.repeat_interleave(cu[:-1], lens, output_size=total)
    positions = torch.arange(total, dtype=torch.long) - starts

    order = sorted(range(n), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        longest = lengths[groups[-1][0]] if groups else 0
        if groups and (lengths[i] >= BUCKET_RATIO * longest or longest <= SHORT_WIDTH):
            groups[-1].append(i)
        else:
            groups.append([i])
    buckets = [_bucket(g, lengths, keys, lens, cu, device) for g in groups]
    return Layout(cu_seqlens=cu.to(device), positions=positions.to(device), buckets=buckets, total=total)


def _bucket(members: list[int], lengths: list[int], keys: list[int] | None, lens: torch.Tensor, cu: torch.Tensor,
            device: torch.device) -> Bucket:
    width = lengths[members[0]]
    batch = len(members)
    contiguous = all(b == a + 1 for a, b in itertools.pairwise(members))
    if contiguous and all(lengths[i] == width for i in members):
        mask = None
        if keys is not None and any(keys[i] < width for i in members):
            mask = (torch.arange(width)[None, :] < torch.tensor([keys[i] for i in members])[:, None]).view(batch, 1, 1, width).to(device)
        return Bucket(batch, width, None, int(cu[members[0]]), int(cu[members[-1] + 1]), None, None, mask)
    # A fixed number of tensor ops per bucket, whatever its size (a per-member arange was
    # the model thread's largest Python cost on small models): token j of member b sits at
    # packed row cu[b] + j and at padded slot b * width + j.
    index = torch.tensor(members)
    blens = lens[index]
    real = int(blens.sum())
    before = blens.cumsum(0) - blens  # real tokens of the bucket's earlier members
    within = torch.arange(real) - torch.repeat_interleave(before, blens, output_size=real)
    rows = torch.repeat_interleave(cu[index], blens, output_size=real) + within
    keep = torch.repeat_interleave(torch.arange(batch) * width, blens, output_size=real) + within
    gather = torch.zeros(batch * width, dtype=torch.long)  # padded slots read row 0; they are masked
    gather[keep] = rows
    bkeys = blens if keys is None else torch.tensor([keys[i] for i in members])
    key_mask = (torch.arange(width)[None, :] < bkeys[:, None]).view(batch, 1, 1, width)
    return Bucket(batch, width, rows.to(device), 0, 0, gather.to(device), keep.to(device), key_mask.to(device))
