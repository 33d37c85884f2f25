"""A classifier read off a generative model's LM head (vLLM's ``classifier_from_token``).

Rerankers such as the original Qwen3-Reranker are ``*ForCausalLM`` checkpoints: the relevance of
a (query, document) prompt is the probability of "yes" against "no" as the next token after the
prompt. Only those rows of the LM head matter, so the head is cut down to a ``Linear`` over them
and runs on the LAST pooled row like any decoder classifier:

- ``from_2_way_softmax``: one output, ``(W[yes] - W[no]) · h`` (+ bias difference), because
  ``softmax([no, yes])[1] == sigmoid(yes - no)``: the sigmoid the one-label classifier applies
  gives exactly the model card's ``log_softmax(...)[:, 1].exp()``.
- ``no_post_processing``: one output per token, the rows as they are.

``tests/test_engine_reranker.py`` proves both equal to the LM logits computed with transformers.
"""

from __future__ import annotations

import torch
from torch import nn

from .overrides import FromTokenMethod, TokenClassifierSpec

# Families whose ``*ForCausalLM`` is proven by tests/test_engine_reranker.py.
FROM_TOKEN_FAMILIES = frozenset({"qwen2", "qwen3", "llama"})


def token_id(tokenizer, token: str) -> int:
    """The vocabulary id of ``token`` as one token, or a ValueError: a token the tokenizer does
    not know would silently become the unknown token's row."""
    found = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    if found is None or (found == unk and token != getattr(tokenizer, "unk_token", None)):
        raise ValueError(
            f"classifier_from_token: {token!r} is not a single token of this tokenizer; give the token strings "
            f"exactly as the vocabulary spells them"
        )
    return int(found)


@torch.no_grad()
def lm_head_classifier(causal_lm: nn.Module, tokenizer, spec: TokenClassifierSpec) -> nn.Linear:
    """``spec``'s classifier from ``causal_lm``'s output embeddings, in float32 (the loader casts
    it with the model); the LM head itself is not kept."""
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(causal_lm).__name__}: its LM head is not a Linear layer; classifier_from_token cannot read it")
    ids = [token_id(tokenizer, t) for t in spec.tokens]
    bad = [i for i in ids if i >= head.out_features]
    if bad:
        raise ValueError(f"classifier_from_token ids {bad} are outside the LM head's {head.out_features} rows")
    weight = head.weight[ids].float()
    bias = None if head.bias is None else head.bias[ids].float()
    if spec.method is FromTokenMethod.TWO_WAY_SOFTMAX:
        weight = (weight[1] - weight[0])[None]
        bias = None if bias is None else (bias[1] - bias[0])[None]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    return linear.eval()


__all__ = ["FROM_TOKEN_FAMILIES", "lm_head_classifier", "token_id"]
