"""Packed BERT-family encoder (BERT, MiniLM-style BERT checkpoints, RoBERTa, XLM-R, CamemBERT).

Every matrix product runs on ``[total_tokens, hidden]``; attention runs per length bucket
(``attention.py``). Query/key/value are one fused linear. The arithmetic follows transformers'
eager BERT step for step (post-LayerNorm residual blocks), so hidden states match it to float
rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .attention import packed_attention
from .layout import Layout
from .weights import fuse, param

BERT_TYPES = {"bert"}
ROBERTA_TYPES = {"roberta", "xlm-roberta", "camembert"}


def unsupported_reason(config) -> str | None:
    """Why this config cannot take the packed encoder (None: it can)."""
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "BERT used as a decoder"
    pos = getattr(config, "position_embedding_type", "absolute") or "absolute"
    if pos != "absolute":
        return f"position_embedding_type={pos}"
    if getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
        return "factorized embeddings"
    act = config.hidden_act
    if not isinstance(act, str) or act not in ACT2FN:
        return f"activation {act!r}"
    return None


class _Layer(nn.Module):
    def __init__(self, t: dict[str, torch.Tensor], prefix: str, heads: int, eps: float, act) -> None:
        super().__init__()
        a = prefix + "attention."
        self.heads = heads
        self.eps = eps
        self.act = act
        self.qkv_w = fuse([t[a + f"self.{n}.weight"] for n in ("query", "key", "value")])
        self.qkv_b = fuse([t[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
        self.attn_out_w = param(t[a + "output.dense.weight"])
        self.attn_out_b = param(t[a + "output.dense.bias"])
        self.ln1_w = param(t[a + "output.LayerNorm.weight"])
        self.ln1_b = param(t[a + "output.LayerNorm.bias"])
        self.ffn_in_w = param(t[prefix + "intermediate.dense.weight"])
        self.ffn_in_b = param(t[prefix + "intermediate.dense.bias"])
        self.ffn_out_w = param(t[prefix + "output.dense.weight"])
        self.ffn_out_b = param(t[prefix + "output.dense.bias"])
        self.ln2_w = param(t[prefix + "output.LayerNorm.weight"])
        self.ln2_b = param(t[prefix + "output.LayerNorm.bias"])

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        hidden = x.shape[1]
        qkv = F.linear(x, self.qkv_w, self.qkv_b).view(x.shape[0], 3 * self.heads, hidden // self.heads)
        a = packed_attention(qkv, self.heads, self.heads, layout, causal=False)
        a = F.linear(a, self.attn_out_w, self.attn_out_b)
        x = F.layer_norm(a + x, (hidden,), self.ln1_w, self.ln1_b, self.eps)
        h = self.act(F.linear(x, self.ffn_in_w, self.ffn_in_b))
        h = F.linear(h, self.ffn_out_w, self.ffn_out_b)
        return F.layer_norm(h + x, (hidden,), self.ln2_w, self.ln2_b, self.eps)


class PackedBertModel(nn.Module):
    """``forward(input_ids [T], layout, token_type_ids [T] | None) -> hidden [T, H]``."""

    causal = False

    def __init__(self, config, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        reason = unsupported_reason(config)
        if reason:
            raise ValueError(f"packed BERT cannot run this model: {reason}")
        t = tensors
        self.hidden = config.hidden_size
        self.eps = config.layer_norm_eps
        self.word = param(t["embeddings.word_embeddings.weight"])
        self.pos = param(t["embeddings.position_embeddings.weight"])
        tt = t.get("embeddings.token_type_embeddings.weight")
        self.token_type = None if tt is None else param(tt)
        self.emb_ln_w = param(t["embeddings.LayerNorm.weight"])
        self.emb_ln_b = param(t["embeddings.LayerNorm.bias"])
        # RoBERTa numbers positions from padding_idx + 1 and gives pad tokens position padding_idx.
        self.position_pad = config.pad_token_id if config.model_type in ROBERTA_TYPES else None
        act = ACT2FN[config.hidden_act]
        self.layers = nn.ModuleList(
            _Layer(t, f"encoder.layer.{i}.", config.num_attention_heads, self.eps, act) for i in range(config.num_hidden_layers)
        )

    def positions(self, input_ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        if self.position_pad is None:
            return layout.positions
        real = input_ids.ne(self.position_pad).long()
        run = real.cumsum(0)
        before = torch.cat([run.new_zeros(1), run])[layout.cu_seqlens[:-1]]  # count before each sequence
        lens = layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]
        run = run - torch.repeat_interleave(before, lens, output_size=input_ids.numel())
        return run * real + self.position_pad

    def forward(self, input_ids: torch.Tensor, layout: Layout, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = F.embedding(input_ids, self.word)
        if self.token_type is not None:
            x = x + (self.token_type[0] if token_type_ids is None else F.embedding(token_type_ids, self.token_type))
        x = x + F.embedding(self.positions(input_ids, layout), self.pos)
        x = F.layer_norm(x, (self.hidden,), self.emb_ln_w, self.emb_ln_b, self.eps)
        for layer in self.layers:
            x = layer(x, layout)
        return x
