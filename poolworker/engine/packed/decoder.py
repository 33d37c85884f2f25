"""Packed decoder (Qwen2, Qwen3, Llama): RMSNorm, rotary positions restarting per sequence,
grouped-query causal attention per length bucket, gated MLP.

Used for LAST-pooling embedders, reward models and ``*ForSequenceClassification`` decoders: a
pooling forward is one prefill, so there is no KV cache. The arithmetic follows transformers'
eager implementation (RMSNorm in float32, rotary tables cast to the activation dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .attention import packed_attention
from .layout import Layout
from .weights import fuse, param

DECODER_TYPES = {"qwen2", "qwen3", "llama"}


def _rope_settings(config) -> tuple[str, float]:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope_type, float(theta)


def unsupported_reason(config) -> str | None:
    layer_types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in layer_types or (getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None)):
        return "sliding-window attention"
    rope_type, _ = _rope_settings(config)
    if rope_type in ("dynamic", "longrope"):  # tables depend on the sequence length
        return f"rope_type={rope_type}"
    if not isinstance(config.hidden_act, str) or config.hidden_act not in ACT2FN:
        return f"activation {config.hidden_act!r}"
    return None


def _inv_freq(config, head_dim: int) -> tuple[torch.Tensor, float]:
    rope_type, theta = _rope_settings(config)
    if rope_type == "default":
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    return inv_freq.float(), float(scale)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Layer(nn.Module):
    def __init__(self, t: dict[str, torch.Tensor], prefix: str, n_q: int, n_kv: int, head_dim: int, eps: float, act) -> None:
        super().__init__()
        a = prefix + "self_attn."
        self.n_q, self.n_kv, self.head_dim, self.eps, self.act = n_q, n_kv, head_dim, eps, act
        self.ln1 = param(t[prefix + "input_layernorm.weight"])
        self.qkv_w = fuse([t[a + f"{n}_proj.weight"] for n in "qkv"])
        self.qkv_b = fuse([t[a + f"{n}_proj.bias"] for n in "qkv"]) if a + "q_proj.bias" in t else None
        self.q_norm = param(t[a + "q_norm.weight"]) if a + "q_norm.weight" in t else None
        self.k_norm = param(t[a + "k_norm.weight"]) if a + "k_norm.weight" in t else None
        self.o_w = param(t[a + "o_proj.weight"])
        self.o_b = param(t[a + "o_proj.bias"]) if a + "o_proj.bias" in t else None
        self.ln2 = param(t[prefix + "post_attention_layernorm.weight"])
        m = prefix + "mlp."
        self.gate_up_w = fuse([t[m + "gate_proj.weight"], t[m + "up_proj.weight"]])
        self.gate_up_b = fuse([t[m + "gate_proj.bias"], t[m + "up_proj.bias"]]) if m + "gate_proj.bias" in t else None
        self.down_w = param(t[m + "down_proj.weight"])
        self.down_b = param(t[m + "down_proj.bias"]) if m + "down_proj.bias" in t else None

    def forward(self, x: torch.Tensor, layout: Layout, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n_q, n_kv = self.n_q, self.n_kv
        h = _rms_norm(x, self.ln1, self.eps)
        qkv = F.linear(h, self.qkv_w, self.qkv_b).view(x.shape[0], n_q + 2 * n_kv, self.head_dim)
        q, k = qkv[:, :n_q], qkv[:, n_q : n_q + n_kv]
        if self.q_norm is not None:
            q = _rms_norm(q, self.q_norm, self.eps)
            k = _rms_norm(k, self.k_norm, self.eps)
        qkv = torch.cat([_rotate(q, cos, sin), _rotate(k, cos, sin), qkv[:, n_q + n_kv :]], dim=1)
        a = F.linear(packed_attention(qkv, n_q, n_kv, layout, causal=True), self.o_w, self.o_b)
        x = x + a
        h = _rms_norm(x, self.ln2, self.eps)
        gate, up = F.linear(h, self.gate_up_w, self.gate_up_b).chunk(2, dim=-1)
        return x + F.linear(self.act(gate) * up, self.down_w, self.down_b)


class PackedDecoderModel(nn.Module):
    """``forward(input_ids [T], layout, token_type_ids=None) -> hidden [T, H]`` (after the
    final norm, like the transformers base model's ``last_hidden_state``)."""

    causal = True

    def __init__(self, config, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        reason = unsupported_reason(config)
        if reason:
            raise ValueError(f"packed decoder cannot run this model: {reason}")
        t = tensors
        n_q = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_q
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_q
        self.eps = config.rms_norm_eps
        self.embed = param(t["embed_tokens.weight"])
        self.norm = param(t["norm.weight"])
        inv_freq, self.rope_scale = _inv_freq(config, self.head_dim)
        self.register_buffer("inv_freq", inv_freq.to(self.embed.device), persistent=False)
        act = ACT2FN[config.hidden_act]
        self.layers = nn.ModuleList(
            _Layer(t, f"layers.{i}.", n_q, n_kv, self.head_dim, self.eps, act) for i in range(config.num_hidden_layers)
        )

    def _rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(dtype)[:, None, :]  # [T, 1, d]: broadcast over heads
        sin = (emb.sin() * self.rope_scale).to(dtype)[:, None, :]
        return cos, sin

    def forward(self, input_ids: torch.Tensor, layout: Layout, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = F.embedding(input_ids, self.embed)
        cos, sin = self._rope_tables(layout.positions, x.dtype)
        for layer in self.layers:
            x = layer(x, layout, cos, sin)
        return _rms_norm(x, self.norm, self.eps)
