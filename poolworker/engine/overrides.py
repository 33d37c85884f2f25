"""``hf_overrides``: config.json values replaced at load, as vLLM's ``hf_overrides`` does.

Some checkpoints can only be served once the loader is told what they are: the original
Qwen3-Reranker is a ``Qwen3ForCausalLM`` whose relevance score is its LM head's "yes" logit
against "no" at the last token; bge-m3 is an ``XLMRobertaModel`` with two extra head files. A
caller says so with the same dictionaries vLLM takes, e.g.::

    {"architectures": ["Qwen3ForSequenceClassification"],
     "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true}
    {"architectures": ["BgeM3EmbeddingModel"]}

Only keys whose effect is proven by a test are accepted; any other key is refused, because an
override that silently changes the model (a layer count, a rope setting) would make its outputs
differ from every reference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from transformers import PretrainedConfig

# The architecture names an override may set, beyond the transformers classes of the same name.
BGE_M3_ARCHITECTURE = "BgeM3EmbeddingModel"
_KNOWN_KEYS = frozenset({"architectures", "classifier_from_token", "method", "is_original_qwen3_reranker"})


class FromTokenMethod(str, Enum):
    """How LM-head rows become classifier rows (vLLM's ``method`` names)."""

    TWO_WAY_SOFTMAX = "from_2_way_softmax"  # one label: row[second] - row[first], sigmoid = softmax of the two
    NO_POST_PROCESSING = "no_post_processing"  # one label per token: the rows as they are


@dataclass(frozen=True)
class TokenClassifierSpec:
    """A classifier read off the LM head: ``tokens`` in label order and the ``method``."""

    tokens: tuple[str, ...]
    method: FromTokenMethod

    @property
    def num_labels(self) -> int:
        return 1 if self.method is FromTokenMethod.TWO_WAY_SOFTMAX else len(self.tokens)

    def describe(self) -> str:
        if self.method is FromTokenMethod.TWO_WAY_SOFTMAX:
            return f"LAST → LM head row {self.tokens[1]!r} − row {self.tokens[0]!r} (from_2_way_softmax)"
        return f"LAST → LM head rows {list(self.tokens)} (no_post_processing)"


def parse_hf_overrides(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``value`` as a checked dict: a mapping or its JSON text (how a command line passes it)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"hf_overrides is not valid JSON: {exc}") from exc
    if not isinstance(value, Mapping):
        raise TypeError(f"hf_overrides must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"hf_overrides keys {unknown} are not supported: only {sorted(_KNOWN_KEYS)} are, because their "
            f"effect is proven equal to a reference; other config changes would make outputs differ silently"
        )
    archs = value.get("architectures")
    if archs is not None and not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)):
        raise ValueError(f"hf_overrides['architectures'] must be a list of one architecture name, got {archs!r}")
    tokens = value.get("classifier_from_token")
    if tokens is not None and not (isinstance(tokens, list) and tokens and all(isinstance(t, str) and t for t in tokens)):
        raise ValueError(f"hf_overrides['classifier_from_token'] must be a non-empty list of token strings, got {tokens!r}")
    return dict(value)


def apply_hf_overrides(config: PretrainedConfig, overrides: Mapping[str, Any]) -> None:
    """Set each override on ``config`` (checked by ``parse_hf_overrides`` first)."""
    for key, val in overrides.items():
        setattr(config, key, list(val) if isinstance(val, list) else val)


def token_classifier_spec(config: PretrainedConfig) -> TokenClassifierSpec | None:
    """The LM-head classifier the (overridden) config asks for, or None. As in vLLM,
    ``is_original_qwen3_reranker`` means ``from_2_way_softmax`` over two tokens."""
    tokens = getattr(config, "classifier_from_token", None)
    method = getattr(config, "method", None)
    if getattr(config, "is_original_qwen3_reranker", False):
        if method not in (None, FromTokenMethod.TWO_WAY_SOFTMAX.value):
            raise ValueError(f"is_original_qwen3_reranker scores with from_2_way_softmax, not method={method!r}")
        method = FromTokenMethod.TWO_WAY_SOFTMAX.value
    if tokens is None and method is None:
        return None
    if not tokens:
        raise ValueError(f"method={method!r} needs classifier_from_token (the tokens whose LM-head rows make the classifier)")
    if method is None:
        raise ValueError(
            "classifier_from_token needs a method: 'from_2_way_softmax' (two tokens, one score) or "
            "'no_post_processing' (one label per token), or is_original_qwen3_reranker=true"
        )
    try:
        parsed = FromTokenMethod(method)
    except ValueError:
        raise ValueError(f"method must be one of {[m.value for m in FromTokenMethod]}, got {method!r}") from None
    if parsed is FromTokenMethod.TWO_WAY_SOFTMAX and len(tokens) != 2:
        raise ValueError(f"from_2_way_softmax needs exactly two classifier_from_token entries (false, true), got {tokens!r}")
    return TokenClassifierSpec(tuple(tokens), parsed)


__all__ = [
    "BGE_M3_ARCHITECTURE",
    "FromTokenMethod",
    "TokenClassifierSpec",
    "apply_hf_overrides",
    "parse_hf_overrides",
    "token_classifier_spec",
]
