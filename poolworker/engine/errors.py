"""Typed input errors: what the engine refuses, as values a caller can act on without reading text.

Every error carries ``kind`` (the class of mistake, which the streaming worker sends to the caller
as ``error.type``) and ``param`` (the argument at fault: ``prompts[3]``, ``dimensions``), so no
caller ever has to match an English message. They stay ``ValueError``/``TypeError`` subclasses:
offline users of ``Engine`` catch them as they always did.
"""

from __future__ import annotations

from typing import ClassVar


class EngineError(Exception):
    """Base of the engine's input errors; ``message`` is for people, ``kind``/``param`` for code."""

    kind: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(EngineError, ValueError):
    """A value out of range or inconsistent with the model (a token id outside the vocabulary,
    ``dimensions`` larger than the embedding, an empty prompt)."""


class InvalidInputType(EngineError, TypeError):
    """A value of the wrong type (a float among token ids, a dict for a prompt)."""


class InputTooLong(InvalidInput):
    """A prompt longer than the model takes, with no truncation asked for."""

    kind = "input_too_long"


class UnsupportedTask(InvalidInput):
    """A task the model cannot do (``classify`` on an embedding model, ``score`` on a
    multi-label classifier)."""

    kind = "unsupported_task"


__all__ = ["EngineError", "InputTooLong", "InvalidInput", "InvalidInputType", "UnsupportedTask"]
