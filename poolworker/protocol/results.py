"""Result messages: the task's vLLM response body plus the envelope, and its bytes on the wire."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import ErrorInfo


def result_message(
    *,
    request_id: str | None,
    task: str | None,
    model: str | None,
    metadata: dict[str, Any] | None,
    body: dict[str, Any] | None = None,
    error: ErrorInfo | None = None,
) -> dict[str, Any]:
    """The result for one request: the task's vLLM response body plus the envelope fields.

    ``request_id`` is None only for an ``InvalidRequest`` whose id could not be recovered; the
    result still goes out (same Kafka key) so that nothing is dropped silently. An error result
    carries no body fields, so a caller can never mistake a partial body for an answer.
    """
    if body is not None and error is not None:
        raise ValueError("a result has either a body or an error, not both")
    message = dict(body or {})
    message.update(
        request_id=request_id,
        task=task,
        model=model,
        metadata=metadata,
        error=None if error is None else error.model_dump(),
    )
    return message


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON. ``allow_nan=False``: a NaN from a broken model must fail loudly here
    (the worker then reports ``internal_error``) rather than emit JSON that strict parsers reject."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def status_of(message: Mapping[str, Any]) -> str:
    """The Kafka ``status`` header for a result message: ``ok`` or ``error``."""
    return "ok" if message.get("error") is None else "error"
