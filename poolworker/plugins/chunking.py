"""``text_chunker``: the example plugin. Splits a long document into overlapping passages of at
most ``max_tokens`` tokens and embeds each, so one request indexes a whole document for
retrieval (passages, their character spans and their vectors).

Request (task ``plugin``)::

    {"task": "plugin", "model": "minilm", "data": {"text": "...", "max_tokens": 128, "overlap_tokens": 16}}

Response data::

    {"passages": [{"index": 0, "start": 0, "end": 412, "text": "...", "embedding": [...]}, ...]}

Passages are exact substrings of the text (``text[start:end]``), cut at token boundaries of the
model's own tokenizer, so a passage never needs truncation by the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .interface import IOProcessor, PluginInputError, PluginOutput, PluginPrompts

DEFAULT_MAX_TOKENS = 256
DEFAULT_OVERLAP_TOKENS = 32


@dataclass(frozen=True)
class ChunkingInput:
    text: str
    max_tokens: int
    overlap_tokens: int
    spans: tuple[tuple[int, int], ...]  # character span of each passage


class TextChunker(IOProcessor):
    """Long document → passages → one embedding each (see the module docstring)."""

    def parse_request(self, body: Mapping[str, Any]) -> ChunkingInput:
        data = body.get("data")
        if not isinstance(data, dict):
            raise PluginInputError("data must be an object with a 'text' field")
        unknown = set(data) - {"text", "max_tokens", "overlap_tokens"}
        if unknown:
            raise PluginInputError(f"unknown field(s) {', '.join(sorted(unknown))} in data", f"data.{min(unknown)}")
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise PluginInputError("data.text must be a non-empty string", "data.text")
        limit = self.context.max_model_len - 2  # room for the special tokens the model adds
        max_tokens = _integer(data, "max_tokens", min(DEFAULT_MAX_TOKENS, limit), 1, limit)
        overlap = _integer(data, "overlap_tokens", min(DEFAULT_OVERLAP_TOKENS, max_tokens - 1), 0, max_tokens - 1)
        return ChunkingInput(text, max_tokens, overlap, self._spans(text, max_tokens, overlap))

    def _spans(self, text: str, max_tokens: int, overlap: int) -> tuple[tuple[int, int], ...]:
        """Windows of ``max_tokens`` tokens, each starting ``max_tokens - overlap`` tokens after
        the previous one, as character spans of the original text."""
        offsets = [o for o in self.context.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                   ["offset_mapping"] if o[1] > o[0]]
        if not offsets:
            raise PluginInputError("data.text has no tokens", "data.text")
        spans, step = [], max_tokens - overlap
        for first in range(0, len(offsets), step):
            window = offsets[first:first + max_tokens]
            spans.append((window[0][0], window[-1][1]))
            if first + max_tokens >= len(offsets):
                break
        return tuple(spans)

    def pre_process(self, parsed: ChunkingInput, request_id: str | None = None) -> PluginPrompts:
        return PluginPrompts(tuple(parsed.text[a:b] for a, b in parsed.spans), task="embed")

    def post_process(self, parsed: ChunkingInput, outputs: Sequence[PluginOutput], request_id: str | None = None) -> dict:
        passages = []
        for out, (start, end) in zip(outputs, parsed.spans, strict=True):
            passages.append({"index": out.index, "start": start, "end": end, "text": parsed.text[start:end],
                             "embedding": out.data})
        return {"passages": passages}


def _integer(data: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PluginInputError(f"data.{name} must be an integer from {low} to {high}", f"data.{name}")
    return value


__all__ = ["ChunkingInput", "TextChunker"]
