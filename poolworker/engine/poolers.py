"""Poolers = method × head (vLLM's split, much smaller).

A *method* reduces the packed hidden states of each sequence: CLS, MEAN, LAST to one row;
ALL, STEP to token rows; SPLADE to a sparse vocabulary vector. A *head* finishes the job:
Sentence-Transformers ``Dense`` projection, Matryoshka cut, normalize; or the model's classifier,
calibration and activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from poolworker import kernels

from .conversion import ModelKind
from .heads import HeadPath
from .loading import LoadedModel
from .pooler_config import PoolerConfig
from .runner import Packed
from .st_config import activation_from_name

_SEQ_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "CLS": kernels.segment_cls,
    "MEAN": kernels.segment_mean,
    "LAST": kernels.segment_last,
}
SPLADE_TOKEN_CHUNK = 2048  # rows of [tokens, vocab] logits alive at once


def classification_activation(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation transformers' loss implies: regression → identity, multi-label → sigmoid,
    otherwise sigmoid for a single label and softmax for several."""
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return lambda x: x
    if problem == "multi_label_classification":
        return torch.sigmoid
    return lambda x: torch.sigmoid(x) if x.shape[-1] < 2 else torch.softmax(x, dim=-1)


def cross_encoder_activation(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sentence-Transformers cross-encoders name their activation in config.json."""
    st = getattr(config, "sentence_transformers", None)
    name = st.get("activation_fn") if isinstance(st, dict) else None
    name = name or getattr(config, "sbert_ce_default_activation_function", None)
    if name:
        fn = activation_from_name(name)
        return lambda x: fn(x)
    return classification_activation(config)


@dataclass(frozen=True)
class HeadParams:
    """Per-request head options."""

    dimensions: int | None = None
    use_activation: bool | None = None


class Pooler:
    """Resolves the pooling settings of one model once and applies them to packed batches."""

    def __init__(self, model: LoadedModel, config: PoolerConfig) -> None:
        self.model = model
        self.config = config
        if config.seq_pooling_type and model.head_path is HeadPath.TRANSFORMERS_HEAD:
            raise ValueError(
                f"{model.architecture} runs its own transformers classifier on the full sequence, which pools by "
                f"itself; pooling_type={config.seq_pooling_type} cannot apply"
            )
        self.seq_pooling = config.seq_pooling_type or self._default_seq_pooling()
        self.tok_pooling = config.tok_pooling_type or "ALL"
        self._classify_act = classification_activation(model.config)
        self._score_act = cross_encoder_activation(model.config)

    # -- resolution -------------------------------------------------------------------------
    def _default_seq_pooling(self) -> str:
        # A classifier's head reads one particular row (heads.py): that wins over any
        # Sentence-Transformers Pooling file, which describes embeddings, not the head.
        if self.model.heads is not None:
            return self.model.heads.default_pooling
        if self.model.st.pooling_type:
            return self.model.st.pooling_type
        return "LAST" if self.model.is_decoder else "CLS"

    @property
    def normalize_default(self) -> bool:
        """Sentence-Transformers files decide when present (a ``Normalize`` module), else on."""
        if self.config.use_activation is not None:
            return self.config.use_activation
        if self.model.kind is ModelKind.SPLADE:
            return False
        return self.model.st.normalize if self.model.st.has_pooling else True

    @property
    def embedding_size(self) -> int:
        if self.model.kind is ModelKind.SPLADE:
            return self.model.vocab_size
        if self.model.projector is not None:
            linears = [m for m in self.model.projector.modules() if isinstance(m, torch.nn.Linear)]
            return linears[-1].out_features
        return int(self.model.config.hidden_size)

    def describe(self) -> dict:
        return {
            "seq_pooling_type": "SPLADE-MAX" if self.model.kind is ModelKind.SPLADE else self.seq_pooling,
            "tok_pooling_type": self.tok_pooling,
            "normalize": self.normalize_default,
            "projector": self.model.projector is not None,
            "embedding_size": self.embedding_size,
            **{k: v for k, v in self.config.model_dump().items() if v not in (None, False) and k != "pooling_type"},
        }

    # -- methods ----------------------------------------------------------------------------
    def pool_sequences(self, packed: Packed) -> torch.Tensor:
        """One row per sequence, before any head: ``[N, H]`` (``[N, vocab]`` for SPLADE)."""
        if self.model.kind is ModelKind.SPLADE:
            return self._splade(packed)
        return _SEQ_METHODS[self.seq_pooling](packed.hidden, packed.cu_seqlens)

    def pool_tokens(self, packed: Packed) -> list[torch.Tensor]:
        """Token rows per sequence, before any head (ALL and STEP keep every token here; STEP
        filters after the classifier, where the step-tag rows are known)."""
        return kernels.split_segments(packed.hidden, packed.cu_seqlens)

    def _splade(self, packed: Packed) -> torch.Tensor:
        """max over tokens of log(1 + relu(MLM logits)), chunked so [tokens, vocab] stays small."""
        head = self.model.mlm_head
        parts = []
        for start in range(0, packed.hidden.shape[0], SPLADE_TOKEN_CHUNK):
            logits = head(packed.hidden[start : start + SPLADE_TOKEN_CHUNK]).float()
            parts.append(torch.log1p(torch.relu(logits)))
        return kernels.segment_max(torch.cat(parts), packed.cu_seqlens)

    # -- heads ------------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.projector is not None:
            x = self.model.projector(x.to(self.model.dtype))
        return x.float()

    def embed_head(self, pooled: torch.Tensor, params: HeadParams) -> torch.Tensor:
        x = pooled.float() if self.model.kind is ModelKind.SPLADE else self._project(pooled)
        normalize = self.normalize_default if params.use_activation is None else params.use_activation
        return kernels.normalize_and_cut(x, params.dimensions, normalize)

    def token_embed_head(self, rows: torch.Tensor, params: HeadParams, token_ids: torch.Tensor) -> torch.Tensor:
        bge_m3 = self.model.bge_m3
        x = self._project(rows) if bge_m3 is None else bge_m3.colbert_rows(rows.to(self.model.dtype), token_ids).float()
        normalize = True if params.use_activation is None else params.use_activation
        return kernels.normalize_and_cut(x, params.dimensions, normalize)

    def _calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.config.logit_mean is not None:
            logits = logits - self.config.logit_mean
        if self.config.logit_sigma is not None:
            logits = logits / self.config.logit_sigma
        return logits

    def classify_head(self, pooled: torch.Tensor, params: HeadParams, *, for_score: bool = False) -> torch.Tensor:
        logits = self._calibrate(self.model.heads.sequence(pooled.to(self.model.dtype)))
        if params.use_activation is False or (params.use_activation is None and self.config.use_activation is False):
            return logits
        return (self._score_act if for_score else self._classify_act)(logits)

    def token_classify_head(self, rows: torch.Tensor, token_ids: torch.Tensor, params: HeadParams) -> torch.Tensor:
        if self.model.bge_m3 is not None:
            return self._sparse_head(rows, token_ids, params)
        logits = self.model.heads.token(rows.to(self.model.dtype)).float()
        if self.tok_pooling == "STEP":
            if self.config.returned_token_ids:
                logits = logits[:, self.config.returned_token_ids]
            if self.config.step_tag_id is not None:
                logits = logits[token_ids == self.config.step_tag_id]
        logits = self._calibrate(logits)
        if params.use_activation is False or (params.use_activation is None and self.config.use_activation is False):
            return logits
        return self._classify_act(logits)

    def _sparse_head(self, rows: torch.Tensor, token_ids: torch.Tensor, params: HeadParams) -> torch.Tensor:
        """bge-m3's token weights: relu of the sparse head (its activation), BOS/EOS rows left out."""
        logits = self.model.bge_m3.sparse_rows(rows.to(self.model.dtype), token_ids).float()  # type: ignore[union-attr]
        if params.use_activation is False or (params.use_activation is None and self.config.use_activation is False):
            return logits
        return torch.relu(logits)


__all__ = ["HeadParams", "Pooler"]
