"""Run the backbone over many sequences and return their hidden states packed.

Sequences are sorted by length and grouped under a padded-token budget, so padding stays small
and memory bounded; the output is the packed layout the poolers work on (``[total_tokens, H]``
plus ``cu_seqlens``, in the caller's order), with padding already dropped.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .loading import LoadedModel

# Padded tokens per forward pass. On CPU small batches win (measured on 2 cores, MiniLM: 1024
# tokens ~1.5x faster than 8192: activations stay in cache); GPUs want large ones.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 1024, "cuda": 65536}
DEFAULT_MAX_BATCH_SIZE = 256


@dataclass
class Packed:
    """Hidden states of N sequences back to back; sequence i is rows ``cu[i]:cu[i+1]``."""

    hidden: torch.Tensor  # [T, H]
    cu_seqlens: torch.Tensor  # [N + 1], int64
    input_ids: torch.Tensor  # [T], int64, the tokens the rows belong to

    def __len__(self) -> int:
        return self.cu_seqlens.numel() - 1


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


class Runner:
    """Owns the forward pass of one loaded model."""

    def __init__(self, model: LoadedModel, max_batch_tokens: int | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(model.device.type, 8192)
        self.max_batch_size = max_batch_size
        pad = getattr(model.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        # No KV cache: a pooling forward is a single prefill.
        accepts = inspect.signature(model.backbone.forward).parameters
        self.extra_kwargs = {"use_cache": False} if "use_cache" in accepts else {}

    @torch.inference_mode()
    def forward(self, ids: list[list[int]], token_type_ids: list[list[int]] | None = None, use_tqdm: bool = False) -> Packed:
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, self.max_batch_tokens, self.max_batch_size)
        rows: list[torch.Tensor | None] = [None] * len(ids)
        bar = tqdm(total=len(ids), desc="pooling", unit="seq", disable=not use_tqdm or len(batches) < 4, leave=False)
        for batch in batches:
            hidden = self._forward_batch([ids[i] for i in batch], None if token_type_ids is None else [token_type_ids[i] for i in batch])
            for row, i in enumerate(batch):
                rows[i] = hidden[row, : lengths[i]]
            bar.update(len(batch))
        bar.close()
        device = self.model.device
        cu = torch.zeros(len(ids) + 1, dtype=torch.long)
        cu[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
        flat_ids = torch.tensor([t for x in ids for t in x], dtype=torch.long, device=device)
        return Packed(hidden=torch.cat(rows), cu_seqlens=cu.to(device), input_ids=flat_ids)  # type: ignore[arg-type]

    def _forward_batch(self, ids: list[list[int]], types: list[list[int]] | None) -> torch.Tensor:
        width = max(len(x) for x in ids)
        device = self.model.device
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):  # right padding: real tokens keep positions 0..len-1
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), **self.extra_kwargs}
        if self.model.accepts_token_type_ids:
            tt = torch.zeros_like(input_ids)
            if types is not None:
                for r, x in enumerate(types):
                    tt[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            kwargs["token_type_ids"] = tt.to(device)
        out = self.model.backbone(**kwargs)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state
