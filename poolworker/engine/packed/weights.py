"""Weights by name: straight from a checkpoint's safetensors files, or shared with a loaded
transformers module, under the backbone's own (unprefixed) names."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

# Prefixes a task model puts in front of its backbone's names (BertForSequenceClassification:
# "bert.", XLMRobertaModel exported from a task model: "roberta.", decoders: "model.").
BACKBONE_PREFIXES = ("bert.", "roberta.", "model.")
# Old BERT checkpoints name LayerNorm parameters like TF did.
_RENAMES = ((".gamma", ".weight"), (".beta", ".bias"))


def _canonical(name: str) -> str:
    for prefix in BACKBONE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    for old, new in _RENAMES:
        if name.endswith(old) and "LayerNorm" in name:
            name = name[: -len(old)] + new
    return name


def read_safetensors(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Backbone tensors of a checkpoint folder (single file or sharded), heads left out."""
    from safetensors.torch import load_file

    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for name in files:
        for key, tensor in load_file(str(folder / name), device=str(device)).items():
            out[_canonical(key)] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of a loaded transformers backbone, by name: the very ``Parameter`` objects,
    so the packed model shares their storage."""
    return {_canonical(k): v for k, v in module.state_dict(keep_vars=True).items()}


def param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach(), requires_grad=False)


def fuse(tensors: list[torch.Tensor]) -> nn.Parameter:
    """Concatenate along the output dimension. Originals that are ``Parameter``s of a transformers
    module that stays loaded are pointed at slices of the fused tensor: no weight is held twice."""
    fused = torch.cat([t.detach() for t in tensors], dim=0)
    offset = 0
    for t in tensors:
        n = t.shape[0]
        if isinstance(t, nn.Parameter):
            t.data = fused[offset : offset + n]
        offset += n
    return param(fused)
