"""Which kind of pooling model an architecture is, and which tasks that kind supports.

The architecture name in config.json decides (vLLM's conversion rules), ``convert=`` overrides.
``*ForMaskedLM`` checkpoints are served as SPLADE sparse embedders, a poolworker extension.
"""

from __future__ import annotations

import re
from enum import Enum


class ModelKind(str, Enum):
    EMBED = "embed"  # hidden states → embed / token_embed
    CLASSIFY = "classify"  # hidden states → classifier head → classify / token_classify
    SPLADE = "splade"  # masked-LM logits → log(1 + relu) → max over tokens (sparse vocab vector)


CONVERT_CHOICES = ("auto", "embed", "classify")

_CLASSIFY = re.compile(r"(For\w*Classification|ClassificationModel)$")
_EMBED_SUFFIXES = ("ForTextEncoding", "EmbeddingModel", "ForRewardModeling", "RewardModel", "Model")
_GENERATIVE_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")


def kind_from_architecture(architecture: str, convert: str | None) -> ModelKind:
    """The model kind for ``architecture``, honouring an explicit ``convert``."""
    convert = convert or "auto"
    if convert not in CONVERT_CHOICES:
        raise ValueError(f"convert must be one of {CONVERT_CHOICES}, got {convert!r}")
    if convert != "auto":
        return ModelKind(convert)
    if _CLASSIFY.search(architecture):
        return ModelKind.CLASSIFY
    if architecture.endswith("ForMaskedLM"):
        return ModelKind.SPLADE
    if architecture.endswith(_GENERATIVE_SUFFIXES):
        raise ValueError(
            f"{architecture} is a generative model; pass convert='embed' to serve its hidden states "
            f"as embeddings (LAST pooling + normalize), or, for a reranker scored from its LM head (Qwen3-Reranker), "
            f"hf_overrides with architectures [...ForSequenceClassification] and classifier_from_token"
        )
    if architecture.endswith(_EMBED_SUFFIXES):
        return ModelKind.EMBED
    raise ValueError(
        f"cannot tell which pooling tasks {architecture} serves from its name; pass convert='embed' "
        f"or convert='classify'"
    )


def is_classifier_architecture(architecture: str) -> bool:
    return bool(_CLASSIFY.search(architecture))


def is_token_classifier(architecture: str) -> bool:
    return architecture.endswith("ForTokenClassification")


# -- which families are served: an allow-list, each entry proven by tests/test_fidelity.py -------
# Hidden states of these backbones, pooled, match transformers / sentence-transformers.
EMBED_FAMILIES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta-v2", "modernbert", "mpnet",
    "t5", "qwen2", "qwen3", "llama", "mistral", "gemma3_text",
})
# SPLADE needs the masked-LM head as one module applied per token (tests/test_engine_splade.py).
SPLADE_FAMILIES = frozenset({"bert"})


class UnsupportedArchitectureError(ValueError):
    """Raised at load for a family whose outputs are not proven equal to its reference: serving
    it would risk answers that look right and are not."""

    def __init__(self, architecture: str, model_type: str, kind: ModelKind, supported: list[str]) -> None:
        self.architecture = architecture
        self.model_type = model_type
        self.kind = kind
        self.supported = supported
        super().__init__(
            f"{architecture} (model_type {model_type!r}) is not supported for {kind.value}: poolworker serves a model "
            f"only on a path proven equal to transformers on the same weights. Supported for {kind.value}: "
            f"{', '.join(supported)}. See docs/models.md for how to serve another family."
        )


def check_supported(architecture: str, model_type: str, kind: ModelKind, *, token_classifier: bool = False) -> None:
    """Refuse (``UnsupportedArchitectureError``) a family not on the allow-list for ``kind``."""
    from .heads import SEQUENCE_RECIPES, TOKEN_RECIPES, TRANSFORMERS_HEAD_FAMILIES

    if kind is ModelKind.EMBED:
        allowed = EMBED_FAMILIES
    elif kind is ModelKind.SPLADE:
        allowed = SPLADE_FAMILIES
    else:
        allowed = frozenset(TOKEN_RECIPES if token_classifier else SEQUENCE_RECIPES) | frozenset(TRANSFORMERS_HEAD_FAMILIES)
    if model_type not in allowed:
        raise UnsupportedArchitectureError(architecture, model_type, kind, sorted(allowed))
