"""Packed (unpadded) forward passes: linear layers on ``[total_tokens, hidden]``, attention per
sequence via length buckets, weights by name from safetensors or shared with transformers.

``packed_support(config)`` says whether a model type has a packed implementation (and why not);
``build_packed`` makes one; anything else runs on the generic transformers path.
``POOLWORKER_FORWARD=transformers`` forces the generic path.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import bert, decoder
from .layout import Layout, build_layout
from .weights import module_tensors, read_safetensors

FORWARD_ENV = "POOLWORKER_FORWARD"
SUPPORTED_MODEL_TYPES = tuple(sorted(bert.BERT_TYPES | bert.ROBERTA_TYPES | decoder.DECODER_TYPES))

__all__ = [
    "FORWARD_ENV",
    "SUPPORTED_MODEL_TYPES",
    "Layout",
    "build_layout",
    "build_packed",
    "forced_generic",
    "packed_from_pretrained",
    "packed_support",
]


def forced_generic() -> bool:
    value = os.environ.get(FORWARD_ENV, "auto").strip().lower()
    if value not in ("auto", "packed", "transformers"):
        raise ValueError(f"{FORWARD_ENV} must be 'auto', 'packed' or 'transformers', got {value!r}")
    return value == "transformers"


def packed_support(config) -> str | None:
    """None when the packed forward can run this config, else the reason it cannot."""
    model_type = getattr(config, "model_type", "")
    if model_type in bert.BERT_TYPES | bert.ROBERTA_TYPES:
        return bert.unsupported_reason(config)
    if model_type in decoder.DECODER_TYPES:
        return decoder.unsupported_reason(config)
    return f"no packed implementation for model_type {model_type!r} (packed: {', '.join(SUPPORTED_MODEL_TYPES)})"


def build_packed(config, tensors: dict[str, torch.Tensor] | nn.Module) -> nn.Module:
    """The packed backbone for ``config`` from tensors by name, or from a loaded transformers
    backbone (whose storage it then shares). Raises ``ValueError`` when unsupported."""
    reason = packed_support(config)
    if reason:
        raise ValueError(reason)
    if isinstance(tensors, nn.Module):
        tensors = module_tensors(tensors)
    cls = decoder.PackedDecoderModel if config.model_type in decoder.DECODER_TYPES else bert.PackedBertModel
    return cls(config, tensors).eval()


def packed_from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> nn.Module:
    """A packed backbone straight from a checkpoint folder's config.json + safetensors."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    return build_packed(config, read_safetensors(path, dtype=dtype, device=device))
