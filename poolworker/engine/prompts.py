"""Check prompts and turn them into token ids, with the model's truncation rules.

Everything a caller can get wrong is caught here with a typed error (``engine/errors.py``)
naming the field, so nothing malformed ever reaches torch. ``PromptTokenizer.encode_each`` is the
batch form the streaming worker uses: one tokenizer call for a whole poll, one outcome per prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import EngineError, InvalidInput, InvalidInputType

Prompt = str | list[int]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_token_ids(x: object) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_is_int(t) for t in x)


def normalize_prompts(prompts: object, field: str = "prompts") -> list[Prompt]:
    """``str | list[str] | list[int] | list[list[int]]`` → a list of prompts (text or ids)."""
    if isinstance(prompts, str):
        return [prompts]
    if _is_token_ids(prompts):
        return [list(prompts)]  # one prompt given as token ids
    if not isinstance(prompts, (list, tuple)):
        raise InvalidInputType(f"{field} must be a str, a list of str, or token ids (list of int), got {type(prompts).__name__}", field)
    out: list[Prompt] = []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            out.append(item)
        elif _is_token_ids(item):
            out.append(list(item))
        elif isinstance(item, (list, tuple)) and len(item) == 0:
            raise InvalidInput(f"{field}[{i}] is an empty list of token ids", f"{field}[{i}]")
        else:
            raise InvalidInputType(f"{field}[{i}] must be a str or a list of int token ids, got {_describe(item)}", f"{field}[{i}]")
    return out


def _describe(item: object) -> str:
    if isinstance(item, (list, tuple)):
        bad = next((x for x in item if not _is_int(x)), None)
        return f"a list containing {type(bad).__name__} {bad!r:.40}"
    return f"{type(item).__name__}"


def token_id_error(ids: Sequence[int], vocab_size: int, where: str) -> InvalidInput | None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is None:
        return None
    return InvalidInput(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size})", where)


@dataclass(frozen=True)
class Truncation:
    """How texts become token ids: keep at most ``max_tokens`` (None = no truncation) from
    ``side``; add the model's special tokens or not (vLLM's ``add_special_tokens``: chat
    templates write their own); pad every text to ``pad_to`` tokens (vLLM's
    ``padding="max_length"``, for models trained on fixed-length input). Hashable: requests
    whose texts tokenize alike share one tokenizer call."""

    max_tokens: int | None
    side: str
    special_tokens: bool = True
    pad_to: int | None = None
    refuse_above: int | None = None  # Cohere truncate=NONE with max_tokens: too long is an error, not a cut


def resolve_truncation(truncate_prompt_tokens: object, truncation_side: object, max_model_len: int, default_side: str) -> Truncation:
    """Validate ``truncate_prompt_tokens`` (-1 = the model's maximum) and ``truncation_side``."""
    side = default_side if truncation_side is None else truncation_side
    if side not in ("left", "right"):
        raise InvalidInput(f"truncation_side must be 'left' or 'right', got {truncation_side!r}", "truncation_side")
    if truncate_prompt_tokens is None:
        return Truncation(None, side)
    if not _is_int(truncate_prompt_tokens):
        raise InvalidInputType(f"truncate_prompt_tokens must be an int, got {type(truncate_prompt_tokens).__name__}",
                               "truncate_prompt_tokens")
    if truncate_prompt_tokens == -1:
        return Truncation(max_model_len, side)
    if truncate_prompt_tokens < 1:
        raise InvalidInput(f"truncate_prompt_tokens must be -1 (model maximum) or a positive int, got {truncate_prompt_tokens}",
                           "truncate_prompt_tokens")
    if truncate_prompt_tokens > max_model_len:
        raise InvalidInput(f"truncate_prompt_tokens={truncate_prompt_tokens} is larger than max_model_len={max_model_len}",
                           "truncate_prompt_tokens")
    return Truncation(truncate_prompt_tokens, side)


class PromptTokenizer:
    """Tokenizes prompts for one model. Text gets the model's special tokens; token-id prompts
    are used as given (checked against the vocabulary)."""

    def __init__(self, tokenizer, *, vocab_size: int, lowercase: bool = False) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.lowercase = lowercase
        self._lock = threading.Lock()  # truncation_side is tokenizer state

    @property
    def default_side(self) -> str:
        return getattr(self.tokenizer, "truncation_side", "right")

    def _min_tokens(self, pair: bool, special_tokens: bool) -> int:
        return (self.tokenizer.num_special_tokens_to_add(pair) if special_tokens else 0) + 1

    def _call(self, first: list[str], second: list[str] | None, trunc: Truncation) -> dict:
        if self.lowercase:
            first = [t.lower() for t in first]
            second = None if second is None else [t.lower() for t in second]
        kwargs = {"truncation": trunc.max_tokens is not None, "verbose": False, "add_special_tokens": trunc.special_tokens}
        if trunc.pad_to is not None:
            kwargs.update(padding="max_length", max_length=trunc.pad_to)
        if trunc.max_tokens is not None:
            if trunc.max_tokens < self._min_tokens(second is not None, trunc.special_tokens):
                raise InvalidInput(
                    f"truncate_prompt_tokens={trunc.max_tokens} leaves no room for text after the model's special tokens",
                    "truncate_prompt_tokens",
                )
            kwargs["max_length"] = trunc.max_tokens
        with self._lock:
            previous = self.tokenizer.truncation_side
            self.tokenizer.truncation_side = trunc.side
            try:
                if second is None and trunc.pad_to is None and self._backend is not None:
                    return {"input_ids": self._backend_ids(first, trunc)}
                return self.tokenizer(first, second, **kwargs)
            finally:
                self.tokenizer.truncation_side = previous

    @property
    def _backend(self):
        """The fast tokenizer's Rust ``tokenizers.Tokenizer``, when the wrapper is transformers'
        fast tokenizer (None otherwise: the wrapper's own call is used)."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        ok = hasattr(backend, "encode_batch") and hasattr(self.tokenizer, "set_truncation_and_padding")
        return backend if ok else None

    def _backend_ids(self, texts: list[str], trunc: Truncation) -> list[list[int]]:
        """What ``tokenizer(texts, truncation=..., max_length=...)["input_ids"]`` returns, from
        the Rust tokenizer directly: the same configuration steps the wrapper takes, without
        building a Python dict of every field per text (on short texts that conversion was
        most of the receive thread's tokenization time). Called under ``self._lock``."""
        from transformers.tokenization_utils_base import (
            PaddingStrategy,
            TruncationStrategy,
        )

        truncating = trunc.max_tokens is not None
        self.tokenizer.set_truncation_and_padding(
            padding_strategy=PaddingStrategy.DO_NOT_PAD,
            truncation_strategy=TruncationStrategy.LONGEST_FIRST if truncating else TruncationStrategy.DO_NOT_TRUNCATE,
            max_length=trunc.max_tokens, stride=0, pad_to_multiple_of=None, padding_side=None)
        backend = self._backend
        split = bool(getattr(self.tokenizer, "split_special_tokens", False))
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we never read: the
        # same ids for a third less of the tokenizer's time here (48 → 32 µs a short text); older versions have only encode_batch
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        return [e.ids for e in encode(texts, add_special_tokens=trunc.special_tokens)]

    def encode_each(self, prompts: Sequence[Prompt], trunc: Truncation, labels: Sequence[str]) -> list[list[int] | EngineError]:
        """Token ids for each prompt, truncated as requested, or the error that prompt alone
        earned (named by its label): one bad prompt never costs the others their ids. All texts
        go through the tokenizer in one call. Raises only for what fails every prompt alike
        (a truncation that leaves no room)."""
        out: list[list[int] | EngineError] = [[] for _ in prompts]
        text_idx = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        if text_idx:
            encoded = self._call([prompts[i] for i in text_idx], None, trunc)["input_ids"]  # type: ignore[misc]
            for i, ids in zip(text_idx, encoded):
                out[i] = ids
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                out[i] = token_id_error(p, self.vocab_size, labels[i]) or _cut(p, trunc)
        limit = trunc.refuse_above
        for i, ids in enumerate(out):
            if not isinstance(ids, EngineError) and not ids:
                out[i] = InvalidInput(f"{labels[i]} has no tokens after tokenization", labels[i])
            elif limit is not None and not isinstance(ids, EngineError) and len(ids) > limit:
                out[i] = InvalidInput(f"{labels[i]}: input of {len(ids)} tokens exceeds max_tokens={limit} with truncate=NONE; "
                                      "set truncate to END or START to allow truncation", labels[i])
        return out

    def encode_pairs(self, firsts: list[str], seconds: list[str], trunc: Truncation) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and token type ids of text pairs (cross-encoder input)."""
        encoded = self._call(firsts, seconds, trunc)
        ids = [list(x) for x in encoded["input_ids"]]
        types = [list(x) for x in encoded.get("token_type_ids", [[0] * len(x) for x in ids])]
        return ids, types


    # -- text before tokenization ------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, conversation: list[dict], where: str, *, add_generation_prompt: bool = False,
                    continue_final_message: bool = False, template_kwargs: Mapping[str, Any] | None = None) -> str:
        """One conversation → the prompt text the model's chat template makes of it (vLLM
        renders chat input this way for pooling models too). No template, or a template that
        fails on this conversation, is the caller's ``InvalidInput`` named by ``where``."""
        if not self.has_chat_template:
            raise InvalidInput(f"{where}: this model's tokenizer has no chat template, so it cannot take chat messages; "
                               "send the text as input instead", where)
        kwargs = dict(template_kwargs or {})
        kwargs.update(add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - jinja2 errors, raise_exception() in templates, bad continue_final_message
            raise InvalidInput(f"{where}: the chat template failed on this conversation: {exc}", where) from None
        return text if isinstance(text, str) else str(text)

    def cut_text(self, text: str, max_tokens: int) -> str:
        """``text`` cut at a character boundary to at most ``max_tokens`` tokens of content (no
        special tokens), as vLLM's ``max_tokens_per_query``/``max_tokens_per_doc`` cut a score
        side before the pair is built. Cutting at the token's character offsets, not decoding
        ids, keeps the text exactly as the caller wrote it; a cut can merge tokens differently,
        so it repeats until the text fits."""
        while text:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            offsets = encoded["offset_mapping"]
            if len(offsets) <= max_tokens:
                return text
            end = min(offsets[max_tokens - 1][1], offsets[max_tokens][0]) if max_tokens > 0 else 0
            text = text[: min(end, len(text) - 1)]
        return text


def raise_first(outcomes: Sequence[object]) -> None:
    """Raise the first error among per-prompt outcomes (the offline API fails as a whole)."""
    for outcome in outcomes:
        if isinstance(outcome, EngineError):
            raise outcome


def _cut(ids: Sequence[int], trunc: Truncation) -> list[int]:
    n = trunc.max_tokens
    if n is None or len(ids) <= n:
        return list(ids)
    return list(ids[:n]) if trunc.side == "right" else list(ids[-n:])
