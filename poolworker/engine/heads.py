"""How each model family's classifier head runs, so that a classifier is served only on a path
proven equal to transformers on the same weights (``tests/test_fidelity.py`` is the proof).

Two paths (``HeadPath``):

- **pooled rows** (vLLM's method × head split): the backbone runs (packed or padded), the pooler
  reduces each sequence to the one row the family's head reads (CLS, MEAN or LAST), and the
  family's own head modules map ``[N, H]`` to ``[N, L]``. Heads differ between families
  (BERT's dense + tanh pooler, DeBERTa's context pooler, ModernBERT's prediction head after CLS
  or MEAN pooling, ...), so each family has a *recipe* here; a family without one is not guessed.
- **transformers head**: the family's whole ``*For*Classification`` model runs on each batch and
  its logits are taken as they come. For heads that are not a function of one row (Funnel pools
  the sequence inside its backbone, so its hidden states do not line up with the tokens).

A family on neither list is refused at load (``families.check_supported``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

Head = Callable[[torch.Tensor], torch.Tensor]


class HeadPath(str, Enum):
    POOLED_ROWS = "pooled-rows"
    TRANSFORMERS_HEAD = "transformers-head"


@dataclass
class ClassifierHeads:
    """``sequence`` maps pooled ``[N, H]`` to logits ``[N, L]``; ``token`` maps token rows
    ``[T, H]`` to ``[T, L]``. Either is None when the family has no proven way to run it.
    ``description`` is what ``poolworker models`` shows for the head."""

    sequence: Head | None
    token: Head | None
    default_pooling: str
    path: HeadPath = HeadPath.POOLED_ROWS
    description: str = ""


@dataclass(frozen=True)
class _SequenceHead:
    head: Head
    pooling: str
    description: str


def _first_token(module: nn.Module) -> Head:
    """Heads that read ``features[:, 0]`` themselves (BertPooler, RobertaClassificationHead, ...)."""
    return lambda pooled: module(pooled.unsqueeze(1))


# -- sequence recipes: the head of *ForSequenceClassification on one pooled row --------------------
def _bert(model: nn.Module) -> _SequenceHead:
    pooler, classifier = _first_token(model.base_model.pooler), model.classifier
    return _SequenceHead(lambda r: classifier(pooler(r)), "CLS", "CLS → pooler (dense + tanh) → classifier")


def _head_module(model: nn.Module) -> _SequenceHead:
    """RoBERTa, XLM-R, ELECTRA, MPNet: one head module (dense, activation, out_proj) on [CLS]."""
    return _SequenceHead(_first_token(model.classifier), "CLS", "CLS → classification head (dense + activation → out_proj)")


def _distilbert(model: nn.Module) -> _SequenceHead:
    pre, classifier = model.pre_classifier, model.classifier
    return _SequenceHead(lambda r: classifier(torch.relu(pre(r))), "CLS", "CLS → pre_classifier + ReLU → classifier")


def _albert(model: nn.Module) -> _SequenceHead:
    """ALBERT's pooler is a bare Linear; its tanh lives beside it in the backbone."""
    base, classifier = model.base_model, model.classifier
    return _SequenceHead(lambda r: classifier(base.pooler_activation(base.pooler(r))), "CLS", "CLS → pooler (linear + tanh) → classifier")


def _deberta(model: nn.Module) -> _SequenceHead:
    """DeBERTa keeps its ContextPooler (dense + pooler_hidden_act) on the classifier model, not
    on the backbone."""
    pooler, classifier = _first_token(model.pooler), model.classifier
    act = model.config.pooler_hidden_act
    return _SequenceHead(lambda r: classifier(pooler(r)), "CLS", f"CLS → context pooler (dense + {act}) → classifier")


def _modernbert(model: nn.Module) -> _SequenceHead:
    """ModernBERT pools by ``classifier_pooling`` (cls or mean), then its prediction head
    (dense + activation + norm) and the classifier."""
    mode = model.config.classifier_pooling
    pooling = {"cls": "CLS", "mean": "MEAN"}.get(mode)
    if pooling is None:
        raise ValueError(f"{type(model).__name__}: classifier_pooling={mode!r} is not supported (cls, mean)")
    head, classifier = model.head, model.classifier
    return _SequenceHead(lambda r: classifier(head(r)), pooling, f"{pooling} → prediction head (dense + act + norm) → classifier")


def _decoder(model: nn.Module) -> _SequenceHead:
    return _SequenceHead(model.score, "LAST", "LAST → score")


# -- token recipes: the head of *ForTokenClassification on every token row ----------------------
def _token_classifier(model: nn.Module) -> Head:
    return model.classifier


def _token_modernbert(model: nn.Module) -> Head:
    head, classifier = model.head, model.classifier
    return lambda rows: classifier(head(rows))


def _token_score(model: nn.Module) -> Head:
    return model.score


_ENCODERS_WITH_HEAD_MODULE = ("roberta", "xlm-roberta", "electra", "mpnet")
DECODER_FAMILIES = ("qwen2", "qwen3", "llama", "mistral")

SEQUENCE_RECIPES: dict[str, Callable[[nn.Module], _SequenceHead]] = {
    "bert": _bert,
    **dict.fromkeys(_ENCODERS_WITH_HEAD_MODULE, _head_module),
    "distilbert": _distilbert,
    "albert": _albert,
    "deberta-v2": _deberta,
    "modernbert": _modernbert,
    **dict.fromkeys(DECODER_FAMILIES, _decoder),
}
TOKEN_RECIPES: dict[str, Callable[[nn.Module], Head]] = {
    **dict.fromkeys(("bert", *_ENCODERS_WITH_HEAD_MODULE, "distilbert", "albert", "deberta-v2"), _token_classifier),
    "modernbert": _token_modernbert,
    **dict.fromkeys(DECODER_FAMILIES, _token_score),
}
# token_classify on a *sequence* classifier (vLLM's reward use): the head on every token row.
# Decoders: transformers computes exactly these logits before it picks the last token. BERT:
# vLLM's behaviour (the classifier without the pooler), kept for compatibility.
SEQUENCE_MODEL_TOKEN_RECIPES: dict[str, Callable[[nn.Module], Head]] = {
    "bert": _token_classifier,
    **dict.fromkeys(DECODER_FAMILIES, _token_score),
}

# Families whose classifier runs whole, as transformers runs it (see TransformersHead).
TRANSFORMERS_HEAD_FAMILIES = ("funnel",)


def pooled_row_heads(model: nn.Module, model_type: str, token_classifier: bool) -> ClassifierHeads:
    """The heads of a loaded ``*ForSequenceClassification`` / ``*ForTokenClassification`` of a
    family with a recipe (callers check ``SEQUENCE_RECIPES`` / ``TOKEN_RECIPES`` first)."""
    if token_classifier:
        return ClassifierHeads(None, TOKEN_RECIPES[model_type](model), "CLS", HeadPath.POOLED_ROWS, "every token row → classifier")
    seq = SEQUENCE_RECIPES[model_type](model)
    token_recipe = SEQUENCE_MODEL_TOKEN_RECIPES.get(model_type)
    token = token_recipe(model) if token_recipe else None
    return ClassifierHeads(seq.head, token, seq.pooling, HeadPath.POOLED_ROWS, seq.description)


class TransformersHead(nn.Module):
    """The family's whole classification model in the backbone's place.

    The runner feeds it right-padded batches and keeps the rows of real tokens; it returns the
    model's logits as if they were hidden states: per token for token classifiers, and for
    sequence classifiers the sequence's logits on every token row (so any pooled row *is* the
    logits and the sequence head is the identity). With ``exact_lengths`` every batch is split
    into groups of equal length and each runs without padding, for models whose outputs
    depend on padding (Funnel pools positions pairwise, pads included).
    """

    def __init__(self, model: nn.Module, *, per_token: bool, exact_lengths: bool) -> None:
        super().__init__()
        self.model = model
        self.per_token = per_token
        self.exact_lengths = exact_lengths
        self.takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        if not self.exact_lengths:
            return (self._logits(input_ids, attention_mask, token_type_ids),)
        lengths = attention_mask.sum(1)
        out: torch.Tensor | None = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().flatten()
            part = self._logits(
                input_ids[rows, :length],
                attention_mask[rows, :length],
                None if token_type_ids is None else token_type_ids[rows, :length],
            )
            if out is None:
                out = part.new_zeros(input_ids.shape[0], input_ids.shape[1], part.shape[-1])
            out[rows, :length] = part
        return (out,)

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        logits = self.model(**kwargs).logits
        if self.per_token:
            return logits
        return logits[:, None, :].expand(-1, input_ids.shape[1], -1)


def transformers_heads(token_classifier: bool) -> ClassifierHeads:
    """Heads for a ``TransformersHead`` backbone: its rows already are logits."""
    identity: Head = lambda rows: rows
    if token_classifier:
        return ClassifierHeads(None, identity, "CLS", HeadPath.TRANSFORMERS_HEAD, "the model's own classifier, per token")
    return ClassifierHeads(identity, None, "CLS", HeadPath.TRANSFORMERS_HEAD, "the model's own classifier on the full sequence")


def masked_lm_head(model: nn.Module) -> nn.Module:
    """The masked-LM head of a ``*ForMaskedLM`` model: its one child besides the backbone."""
    children = [c for c in model.children() if c is not model.base_model and not isinstance(c, nn.Dropout)]
    if len(children) != 1:
        raise ValueError(f"{type(model).__name__}: cannot find a single masked-LM head for SPLADE pooling")
    return children[0]
