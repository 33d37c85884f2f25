"""Run the backbone over many sequences and return their hidden states packed.

Two forward paths, one output (the packed layout the poolers work on: ``[total_tokens, H]`` plus
``cu_seqlens``, in the caller's order):

- **packed** (BERT family, Qwen2/Qwen3/Llama; ``LoadedModel.packed``): the TEI-style batcher.
  Sequences are sorted by length and cut into batches of at most ``max_batch_tokens`` *real*
  tokens; each batch is a flat token array plus ``cu_seqlens``, no padding anywhere except inside
  an attention bucket (``engine/packed/layout.py``).
- **generic** (every other architecture): transformers on right-padded, length-sorted batches
  under a *padded*-token budget; padding is dropped right after the backbone.

``Runner.pool`` pools each batch as it comes out and only reorders the pooled rows (sequence
tasks); ``Runner.forward`` returns every token's hidden state in the caller's order (token tasks).
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .loading import LoadedModel
from .packed import build_layout

# Tokens per forward pass (padded tokens on the generic path, real ones on the packed path). On
# CPU small batches win: activations stay in cache (2 cores, MiniLM: 1024 padded tokens ~1.5x
# faster than 8192; the packed path measured best at 2048). GPUs want large ones.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 1024, "cuda": 65536}
DEFAULT_PACKED_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536}
DEFAULT_MAX_BATCH_SIZE = 256


class WeightsNotLoaded(RuntimeError):
    """A forward pass asked of an engine loaded with ``weights=False``: a bug in the caller (a
    worker process runs its forwards in its model process), never a request's fault."""


@dataclass
class Packed:
    """Hidden states of N sequences back to back; sequence i is rows ``cu[i]:cu[i+1]``."""

    hidden: torch.Tensor  # [T, H]
    cu_seqlens: torch.Tensor  # [N + 1], int64
    input_ids: torch.Tensor  # [T], int64, the tokens the rows belong to

    def __len__(self) -> int:
        return self.cu_seqlens.numel() - 1


def configure_threads() -> int:
    """One intra-op thread per CPU this process may run on, unless the user pinned a count with
    OMP_NUM_THREADS / MKL_NUM_THREADS (torch's default counts the host's cores, which
    oversubscribes a container limited by affinity)."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    if torch.get_num_threads() != usable:
        torch.set_num_threads(usable)
    return usable


def plan_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each within the padded-token budget (a
    sequence longer than the budget runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # longest first: the first sets the width
        if current and ((len(current) + 1) * width > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def plan_packed_batches(lengths: list[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """TEI-style: indices sorted longest first, cut whenever the next sequence would take the
    batch's *real* token count past the budget (a sequence longer than the budget runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        if current and (tokens + lengths[i] > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches


class Runner:
    """Owns the forward pass of one loaded model."""

    def __init__(self, model: LoadedModel, max_batch_tokens: int | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        self.model = model
        self.packed = model.packed
        defaults = DEFAULT_PACKED_BATCH_TOKENS if self.packed is not None else DEFAULT_MAX_BATCH_TOKENS
        self.max_batch_tokens = max_batch_tokens or defaults.get(model.device.type, 8192)
        self.max_batch_size = max_batch_size
        pad = getattr(model.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        if model.device.type == "cpu":
            configure_threads()
        # No KV cache: a pooling forward is a single prefill.
        accepts = inspect.signature(model.backbone.forward).parameters
        self.extra_kwargs = {"use_cache": False} if "use_cache" in accepts else {}

    @torch.inference_mode()
    def forward(self, ids: list[list[int]], token_type_ids: list[list[int]] | None = None, use_tqdm: bool = False,
                attended: list[int | None] | None = None) -> Packed:
        """Hidden states of every token, in the caller's order (token tasks need them all).
        ``attended`` (per sequence, None = all) limits which leading tokens are attended to; the
        others still get hidden states (PyLate's non-attended query expansion)."""
        device = self.model.device
        lengths = [len(x) for x in ids]
        cu = torch.zeros(len(ids) + 1, dtype=torch.long)
        cu[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
        flat_ids = torch.tensor([t for x in ids for t in x], dtype=torch.long, device=device)
        hidden: torch.Tensor | None = None
        for batch, part in self.batches(ids, token_type_ids, use_tqdm, attended):
            if hidden is None:
                if len(batch) == len(ids) and batch == sorted(batch):
                    return Packed(hidden=part.hidden, cu_seqlens=cu.to(device), input_ids=flat_ids)
                hidden = part.hidden.new_empty(int(cu[-1]), part.hidden.shape[1])
            # The batch's rows go straight to where the caller's order puts them: one copy.
            starts = cu[torch.tensor(batch)]
            lens = part.cu_seqlens[1:].cpu() - part.cu_seqlens[:-1].cpu()
            dest = torch.repeat_interleave(starts - part.cu_seqlens[:-1].cpu(), lens, output_size=part.hidden.shape[0])
            dest += torch.arange(part.hidden.shape[0])
            hidden.index_copy_(0, dest.to(device), part.hidden)
        assert hidden is not None  # ids is never empty here: the engine returns early
        return Packed(hidden=hidden, cu_seqlens=cu.to(device), input_ids=flat_ids)

    @torch.inference_mode()
    def pool(self, ids: list[list[int]], pool_batch: Callable[[Packed], torch.Tensor], token_type_ids: list[list[int]] | None = None,
             use_tqdm: bool = False) -> torch.Tensor:
        """``pool_batch`` applied to each forward batch while its hidden states are fresh, rows put
        back in the caller's order: ``[N, ...]``. Sequence tasks never hold every token's hidden
        state at once, and skip the copy that ``forward`` needs to restore the order."""
        out: torch.Tensor | None = None
        for batch, part in self.batches(ids, token_type_ids, use_tqdm):
            rows = pool_batch(part)
            if out is None:
                out = rows.new_empty(len(ids), *rows.shape[1:])
            out[torch.tensor(batch, device=rows.device)] = rows
        assert out is not None
        return out

    @torch.inference_mode()
    def batches(self, ids: list[list[int]], token_type_ids: list[list[int]] | None = None,
                use_tqdm: bool = False, attended: list[int | None] | None = None) -> Iterator[tuple[list[int], Packed]]:
        """Forward batches in the order they run: the caller's indices of the batch's sequences and
        their hidden states, packed in that order."""
        if not self.model.weights:
            raise WeightsNotLoaded(f"{self.model.path.name} was loaded without weights (weights=False: a worker process "
                                   "whose model process runs the forwards); it cannot run a forward pass")
        lengths = [len(x) for x in ids]
        if self.packed is not None:
            batches = plan_packed_batches(lengths, self.max_batch_tokens, self.max_batch_size)
            run = self._forward_packed
        else:
            batches = plan_batches(lengths, self.max_batch_tokens, self.max_batch_size)
            run = self._forward_batch
        bar = tqdm(total=len(ids), desc="pooling", unit="seq", disable=not use_tqdm or len(batches) < 4, leave=False)
        try:
            for batch in batches:
                types = None if token_type_ids is None else [token_type_ids[i] for i in batch]
                yield batch, run([ids[i] for i in batch], types, None if attended is None else [attended[i] for i in batch])
                bar.update(len(batch))
        finally:  # also when the caller stops early
            bar.close()

    # -- packed path ----------------------------------------------------------------------------
    def _forward_packed(self, ids: list[list[int]], types: list[list[int]] | None, attended: list[int | None] | None = None) -> Packed:
        device = self.model.device
        flat = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long).to(device)
        use_types = types is not None and self.model.accepts_token_type_ids
        tt = torch.tensor([t for x in types for t in x], dtype=torch.long).to(device) if use_types else None  # type: ignore[union-attr]
        layout = build_layout([len(x) for x in ids], device, attended)
        return Packed(hidden=self.packed(flat, layout, tt), cu_seqlens=layout.cu_seqlens, input_ids=flat)

    # -- generic path ---------------------------------------------------------------------------
    def _forward_batch(self, ids: list[list[int]], types: list[list[int]] | None, attended: list[int | None] | None = None) -> Packed:
        width = max(len(x) for x in ids)
        device = self.model.device
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        real = torch.zeros((len(ids), width), dtype=torch.bool)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):  # right padding: real tokens keep positions 0..len-1
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            real[r, : len(x)] = True
            keys = len(x) if attended is None or attended[r] is None else attended[r]
            mask[r, :keys] = 1
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), **self.extra_kwargs}
        if self.model.accepts_token_type_ids:
            tt = torch.zeros_like(input_ids)
            if types is not None:
                for r, x in enumerate(types):
                    tt[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            kwargs["token_type_ids"] = tt.to(device)
        out = self.model.backbone(**kwargs)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        cu = torch.zeros(len(ids) + 1, dtype=torch.long)
        cu[1:] = real.sum(1).cumsum(0)
        real = real.to(device)
        # Padding dropped: the real rows of each sequence, back to back.
        return Packed(hidden=hidden[real], cu_seqlens=cu.to(device), input_ids=input_ids.to(device)[real])
