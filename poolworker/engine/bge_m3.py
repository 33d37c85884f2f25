"""bge-m3: dense, sparse and ColBERT outputs of one encoder, from its two extra head files.

A bge-m3 checkpoint is a plain encoder (``XLMRobertaModel``) plus ``sparse_linear`` (hidden → 1)
and ``colbert_linear`` (hidden → D) saved beside it. Served with
``hf_overrides={"architectures": ["BgeM3EmbeddingModel"]}`` (vLLM's name), the model answers:

- ``embed``: the dense vector, CLS pooled and normalized (the Sentence-Transformers files of the
  checkpoint say the same);
- ``token_embed``: ColBERT vectors, ``colbert_linear`` on every token row but the leading
  CLS/BOS, normalized;
- ``token_classify``: per-token sparse weights, ``relu(sparse_linear(h))`` on every row but the
  leading BOS and trailing EOS (vLLM's layout);
- ``lexical_weights``: FlagEmbedding's sparse output, ``{token id: max weight}`` over tokens that
  are not the tokenizer's cls / eos / pad / unk token and have a weight above zero.

Formulas from FlagEmbedding's ``BGEM3FlagModel`` (``_process_token_weights``,
``_colbert_embedding``); ``tests/test_engine_bge_m3.py`` proves them on transformers' encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .weights import UnsafeWeightsError

# Encoder families whose bge-m3 layout is proven by tests/test_engine_bge_m3.py.
BGE_M3_FAMILIES = frozenset({"xlm-roberta"})
SPARSE_FILE, COLBERT_FILE = "sparse_linear", "colbert_linear"


@dataclass
class BgeM3Heads:
    """The two extra heads and the token ids that frame (and are left out of) their outputs."""

    sparse: nn.Linear
    colbert: nn.Linear
    bos_id: int | None
    eos_id: int | None
    unused_ids: frozenset[int]

    @property
    def colbert_dim(self) -> int:
        return self.colbert.out_features

    def modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.sparse, self.colbert])

    def colbert_rows(self, rows: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """ColBERT vectors before normalization: every row but a leading BOS."""
        start = 1 if self.bos_id is not None and token_ids.numel() and int(token_ids[0]) == self.bos_id else 0
        return self.colbert(rows[start:])

    def sparse_rows(self, rows: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Sparse logits ``[m, 1]`` (before relu) of every row but a leading BOS and trailing EOS."""
        start = 1 if self.bos_id is not None and token_ids.numel() and int(token_ids[0]) == self.bos_id else 0
        end = token_ids.numel() - (1 if self.eos_id is not None and token_ids.numel() > start and int(token_ids[-1]) == self.eos_id else 0)
        return self.sparse(rows[start:end])

    def lexical_weights(self, rows: torch.Tensor, token_ids: torch.Tensor) -> dict[int, float]:
        """FlagEmbedding's lexical weights of one sequence: max ``relu(sparse(h))`` per token id."""
        weights = torch.relu(self.sparse(rows)).float().reshape(-1).tolist()
        out: dict[int, float] = {}
        for token, weight in zip(token_ids.tolist(), weights):
            if token not in self.unused_ids and weight > out.get(token, 0.0):
                out[token] = weight
        return out


def _load_linear(folder: Path, stem: str, hidden: int, *, allow_pickle: bool) -> nn.Linear:
    """``folder/stem.safetensors``, or ``stem.pt`` read with ``weights_only`` when pickles are
    allowed (bge-m3 ships ``.pt`` files), as an ``nn.Linear``."""
    safe, pickled = folder / f"{stem}.safetensors", folder / f"{stem}.pt"
    if safe.is_file():
        from safetensors.torch import load_file

        state = load_file(str(safe))
    elif pickled.is_file():
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{pickled} is a pickled file, which can run arbitrary code when loaded; convert it to "
                f"{stem}.safetensors, or pass allow_pickle=True if you trust it"
            )
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"BgeM3EmbeddingModel needs {stem}.safetensors (or {stem}.pt) in {folder}")
    weight, bias = state.get("weight"), state.get("bias")
    if weight is None or weight.dim() != 2 or weight.shape[1] != hidden:
        raise ValueError(f"{folder}/{stem}: expected a Linear weight [out, {hidden}], got {None if weight is None else tuple(weight.shape)}")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.load_state_dict({k: v for k, v in (("weight", weight), ("bias", bias)) if v is not None})
    return linear.eval()


def _special_id(tokenizer, *names: str) -> int | None:
    for name in names:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is not None:
            return int(value)
    return None


def load_bge_m3_heads(folder: Path, tokenizer, hidden: int, *, allow_pickle: bool) -> BgeM3Heads:
    """The sparse and ColBERT heads of a bge-m3 folder. BOS / EOS follow the tokenizer (CLS and
    SEP for BERT-style vocabularies); left out of lexical weights, as FlagEmbedding does: the
    cls, eos, pad and unk tokens the tokenizer names."""
    sparse = _load_linear(folder, SPARSE_FILE, hidden, allow_pickle=allow_pickle)
    if sparse.out_features != 1:
        raise ValueError(f"{folder}/{SPARSE_FILE}: expected one output (a weight per token), got {sparse.out_features}")
    colbert = _load_linear(folder, COLBERT_FILE, hidden, allow_pickle=allow_pickle)
    unused = {tokenizer.convert_tokens_to_ids(tok) for key, tok in tokenizer.special_tokens_map.items()
              if key in ("cls_token", "eos_token", "pad_token", "unk_token")}
    return BgeM3Heads(sparse, colbert, _special_id(tokenizer, "cls", "bos"), _special_id(tokenizer, "eos", "sep"),
                      frozenset(int(i) for i in unused if i is not None))


__all__ = ["BGE_M3_FAMILIES", "BgeM3Heads", "load_bge_m3_heads"]
