"""PyLate ColBERT checkpoints: the input preparation ``pylate.models.ColBERT.encode`` does, done
the same way, so such checkpoints are served with PyLate's vectors.

A PyLate checkpoint (``modules.json`` naming ``pylate.*`` modules, or PyLate's keys in
``config_sentence_transformers.json``) is Transformer → Dense; what sets it apart is how
``encode(texts, is_query=...)`` prepares inputs and filters outputs (PyLate 1.6,
``pylate/models/colbert.py``: ``tokenize``, ``insert_prefix_token``, ``encode``,
``skiplist_mask``). Every text has a *role*, query or document:

1. the text is stripped (and lowercased when ``do_lower_case``), then tokenized with the model's
   special tokens, truncated to ``query_length`` / ``document_length`` minus one when a marker
   goes in;
2. the role's marker token (``query_prefix`` ``"[Q] "``, ``document_prefix`` ``"[D] "``) is
   inserted after the first token;
3. with ``do_query_expansion``, queries are padded to ``query_length`` with the expansion token
   (``[MASK]``; EOS, then pad, when the tokenizer has none). Real tokens do not attend to the
   expansion tokens unless ``attend_to_expansion_tokens``, but every expansion token gets a vector;
4. outputs: a query keeps every token's vector; a document drops the vectors of tokens whose id
   is in the skiplist (``skiplist_words`` → ids, punctuation by default). The skiplist filters
   *outputs*: those tokens are still part of the document the model reads.

Steps 1-3 happen when the text is tokenized (the worker's receive thread); the model thread gets
the ids and the role. Non-attended expansion tokens are found from the ids alone: they are the
run of expansion ids after the tokenizer's closing special token, which a text cannot produce
(checked at load). What the engine cannot reproduce is refused at load, naming it: a marker that
is not one token of the vocabulary (PyLate would add it with a freshly initialized embedding),
no Dense module (PyLate would add a random one), a ``default_prompt_name``, a tokenizer padding on
the left (PyLate's marker would land after a padding token), non-attended expansion on a causal
model or a tokenizer without a closing special token, and expansion to more than
``max_model_len`` tokens (the position embeddings: PyLate ignores the saved ``max_seq_length``).
Missing keys take PyLate's defaults.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Role = Literal["query", "document"]
ROLES: tuple[Role, ...] = ("query", "document")
# PyLate's ``encode(is_query=True)`` default: a text without a role is a query.
DEFAULT_ROLE: Role = "query"

_PYLATE_KEYS = frozenset({
    "query_prefix", "document_prefix", "query_length", "document_length", "do_query_expansion",
    "attend_to_expansion_tokens", "skiplist_words",
})
# PyLate's defaults for keys a checkpoint leaves out (``ColBERT.__init__``).
_DEFAULTS = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32, "document_length": 180,
             "do_query_expansion": True, "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation)}


def _read(path: Path) -> object:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def is_pylate(folder: Path) -> bool:
    modules = _read(folder / "modules.json")
    types = [str(m.get("type", "")) for m in modules] if isinstance(modules, list) else []
    config = _read(folder / "config_sentence_transformers.json")
    return any(t.startswith("pylate.") for t in types) or (isinstance(config, dict) and bool(_PYLATE_KEYS & set(config)))


@dataclass(frozen=True)
class PyLatePreparation:
    """One checkpoint's PyLate settings, resolved against its tokenizer."""

    query_prefix_id: int | None  # None: no marker (an empty prefix)
    document_prefix_id: int | None
    query_length: int
    document_length: int
    do_query_expansion: bool
    attend_to_expansion_tokens: bool
    expansion_id: int
    skiplist_ids: tuple[int, ...]

    def prefix_id(self, role: Role) -> int | None:
        return self.query_prefix_id if role == "query" else self.document_prefix_id

    def length(self, role: Role) -> int:
        return self.query_length if role == "query" else self.document_length

    def text_tokens(self, role: Role) -> int:
        """How many tokens the tokenizer may produce (special tokens included) before the marker."""
        return self.length(role) - (self.prefix_id(role) is not None)

    @staticmethod
    def clean(text: str) -> str:
        """Sentence-Transformers' ``Transformer.tokenize`` strips every text (PyLate tokenizes
        through it); lowercasing is the tokenizer wrapper's (``do_lower_case``)."""
        return text.strip()

    def prepare(self, ids: list[int], role: Role) -> list[int]:
        """Tokenizer output (already cut to ``text_tokens``) → the ids PyLate feeds the model."""
        prefix = self.prefix_id(role)
        out = ids[:1] + [prefix] + ids[1:] if prefix is not None else list(ids)
        if role == "query" and self.do_query_expansion and len(out) < self.query_length:
            out += [self.expansion_id] * (self.query_length - len(out))
        return out

    def attended(self, ids: list[int], role: Role) -> int | None:
        """How many leading tokens are attended to (None: all): a query's expansion tokens are
        not when ``attend_to_expansion_tokens`` is off."""
        if role != "query" or not self.do_query_expansion or self.attend_to_expansion_tokens:
            return None
        n = len(ids)
        while n > 0 and ids[n - 1] == self.expansion_id:
            n -= 1
        return n if n < len(ids) else None

    def keep(self, token_ids: torch.Tensor, role: Role) -> torch.Tensor | None:
        """Which output rows a text keeps (None: all): documents drop skiplist tokens."""
        if role != "document" or not self.skiplist_ids:
            return None
        skip = torch.tensor(self.skiplist_ids, dtype=token_ids.dtype, device=token_ids.device)
        return ~torch.isin(token_ids, skip)

    def describe(self) -> list[str]:
        """What PyLate's ``encode`` does to this checkpoint's inputs and outputs, in words
        (``poolworker models``)."""
        steps = [f"a text without a role is a {DEFAULT_ROLE}; text is stripped"]
        for role in ROLES:
            marker = self.prefix_id(role)
            plural = "queries" if role == "query" else "documents"
            steps.append(f"{plural} cut to {self.length(role)} tokens" + (f", marker id {marker} after the first token" if marker is not None else ""))
        if self.do_query_expansion:
            attended = "attended" if self.attend_to_expansion_tokens else "not attended"
            steps.append(f"queries padded to {self.query_length} tokens with id {self.expansion_id} ({attended})")
        if self.skiplist_ids:
            steps.append(f"{len(self.skiplist_ids)} skiplist token ids dropped from document vectors")
        return steps


def _settings(folder: Path) -> dict:
    found = _read(folder / "config_sentence_transformers.json")
    found = found if isinstance(found, dict) else {}
    # PyLate treats a null value as unset (``x if x is not None else default``).
    return {**_DEFAULTS, **{k: v for k, v in found.items() if v is not None}}


def _marker_id(tokenizer, prefix: str, vocab_size: int, side: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(prefix)
    if token_id is None or token_id == tokenizer.unk_token_id or not 0 <= int(token_id) < vocab_size:
        raise ValueError(
            f"its {side}_prefix {prefix!r} is not one token of the tokenizer (with an embedding row): PyLate would add "
            f"it to the vocabulary with a freshly initialized embedding, which the engine cannot reproduce"
        )
    return int(token_id)


def _expansion_id(tokenizer) -> int:
    """PyLate pads queries with the mask token, else EOS, else the pad token."""
    for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("its tokenizer has no mask, EOS or pad token to expand queries with (PyLate refuses it too)")


def _check_unattended_expansion(tokenizer, expansion_id: int, causal: bool) -> None:
    """Non-attended expansion tokens are recovered from the ids as the run after the closing
    special token; that needs a tokenizer that always closes with a special token of its own."""
    if causal:
        raise ValueError("it expands queries with tokens the other tokens do not attend to, on a causal model; "
                         "only bidirectional encoders are proven for that")
    closing = tokenizer("a", add_special_tokens=True)["input_ids"][-1]
    if closing == expansion_id or closing not in set(tokenizer.all_special_ids):
        raise ValueError("it expands queries with tokens the other tokens do not attend to, and its tokenizer does not "
                         "end every text with a special token other than the expansion token, so the engine could not "
                         "tell expansion tokens from text")


def load_pylate(folder: Path, tokenizer, *, vocab_size: int, max_model_len: int, causal: bool,
                has_dense: bool) -> PyLatePreparation | None:
    """The checkpoint's PyLate preparation (None when ``folder`` is not a PyLate checkpoint);
    ``ValueError`` naming what the engine cannot reproduce."""
    if not is_pylate(folder):
        return None
    try:
        return _load(folder, tokenizer, vocab_size, max_model_len, causal, has_dense)
    except ValueError as exc:
        raise ValueError(f"{folder} is a PyLate ColBERT checkpoint that cannot be served as PyLate encodes it: {exc}") from None


def _load(folder: Path, tokenizer, vocab_size: int, max_model_len: int, causal: bool, has_dense: bool) -> PyLatePreparation:
    config = _settings(folder)
    if not has_dense:
        raise ValueError("it has no Dense module, and PyLate would add a randomly initialized projection")
    prompts = config.get("prompts")
    default_prompt = config.get("default_prompt_name")
    if default_prompt and isinstance(prompts, dict) and prompts.get(default_prompt):
        raise ValueError(f"its default_prompt_name {default_prompt!r} puts a prompt before every text, which the engine "
                         "does not do for PyLate checkpoints")
    prefixes = {side: str(config[f"{side}_prefix"]) for side in ROLES}
    ids = {side: _marker_id(tokenizer, p, vocab_size, side) if p else None for side, p in prefixes.items()}
    lengths = {side: int(config[f"{side}_length"]) for side in ROLES}
    for side, n in lengths.items():
        if n < 3:
            raise ValueError(f"its {side}_length={n} leaves no room for text between the special tokens and the marker")
    expansion = bool(config["do_query_expansion"])
    attend = expansion and bool(config["attend_to_expansion_tokens"])  # PyLate: no expansion, nothing to attend
    expansion_id = _expansion_id(tokenizer)
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError("its tokenizer pads on the left: PyLate would put a query's expansion tokens (and a shorter "
                         "document's batch padding) before the text and insert the marker after the first padding token")
    if expansion and lengths["query"] > max_model_len:
        raise ValueError(f"it pads every query to query_length={lengths['query']} tokens, more than max_model_len={max_model_len}")
    if expansion and not attend:
        _check_unattended_expansion(tokenizer, expansion_id, causal)
    words = config["skiplist_words"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError("its skiplist_words is not a list of strings")
    found = (tokenizer.convert_tokens_to_ids(w) for w in words)  # an unknown word maps to the unknown token, as in PyLate
    skiplist = tuple(sorted({int(t) for t in found if t is not None}))
    return PyLatePreparation(ids["query"], ids["document"], lengths["query"], lengths["document"], expansion, attend,
                             expansion_id, skiplist)


__all__ = ["DEFAULT_ROLE", "ROLES", "PyLatePreparation", "Role", "is_pylate", "load_pylate"]
