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
            f"as embeddings (LAST pooling + normalize)"
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
