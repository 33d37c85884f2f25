"""Split a transformers classification model into backbone and head.

A classify pooler applies the model's own head to pooled hidden states (vLLM's method × head
split), so the head must be callable on ``[N, hidden]`` rather than on a padded batch. Each
family keeps its head in a different place; this module knows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Head = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ClassifierHeads:
    """``sequence`` maps pooled ``[N, H]`` to logits ``[N, L]``; ``token`` maps token rows
    ``[T, H]`` to ``[T, L]``. Either may be None when the layout does not allow it."""

    sequence: Head | None
    token: Head | None
    default_pooling: str


def _first_token_head(module: nn.Module) -> Head:
    """Heads that read ``features[:, 0]`` themselves (BertPooler, RobertaClassificationHead)."""
    return lambda pooled: module(pooled.unsqueeze(1))


def classifier_heads(model: nn.Module) -> ClassifierHeads:
    """The heads of a ``*ForSequenceClassification`` / ``*ForTokenClassification`` model."""
    score = getattr(model, "score", None)
    if isinstance(score, nn.Linear):  # decoders: one linear head, read at the last token
        return ClassifierHeads(sequence=score, token=score, default_pooling="LAST")

    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        pooler = getattr(model.base_model, "pooler", None)
        pre = getattr(model, "pre_classifier", None)
        if isinstance(pre, nn.Linear):  # DistilBERT: linear + ReLU before the classifier
            sequence: Head = lambda pooled: classifier(torch.relu(pre(pooled)))  # noqa: E731
        elif pooler is not None:  # BERT: dense + tanh on [CLS], then the classifier
            sequence = lambda pooled: classifier(_first_token_head(pooler)(pooled))  # noqa: E731
        else:
            sequence = classifier
        return ClassifierHeads(sequence=sequence, token=classifier, default_pooling="CLS")
    if isinstance(classifier, nn.Module):  # RoBERTa / XLM-R style head module on features[:, 0]
        return ClassifierHeads(sequence=_first_token_head(classifier), token=None, default_pooling="CLS")
    raise ValueError(f"{type(model).__name__}: no classifier head found (expected a 'score' or 'classifier' module)")


def masked_lm_head(model: nn.Module) -> nn.Module:
    """The masked-LM head of a ``*ForMaskedLM`` model: its one child besides the backbone."""
    children = [c for c in model.children() if c is not model.base_model and not isinstance(c, nn.Dropout)]
    if len(children) != 1:
        raise ValueError(f"{type(model).__name__}: cannot find a single masked-LM head for SPLADE pooling")
    return children[0]
