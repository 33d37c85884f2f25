"""What can go wrong with a message, as values the worker acts on (DESIGN.md §4).

``UnparseableMessage`` means "dead-letter the raw bytes"; ``InvalidRequest`` means "publish
``error`` as the result". ``ErrorInfo`` is the error as the caller sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # only for the hint: request.py does not need this module at import time
    from .request import PoolingRequest


#: The record header holding a request's deadline: absolute Unix epoch milliseconds, ASCII digits
#: (set by the HTTP gateway; any producer may).
DEADLINE_HEADER = "deadline_ms"
#: ``ErrorInfo.type`` of a request answered uncomputed because its deadline had passed.
EXPIRED = "expired"


class ErrorInfo(BaseModel):
    """Why a request failed, as sent to the caller in ``error``.

    ``type`` is one of: ``invalid_request`` (the body is wrong), ``unsupported_task`` (no such
    task, or the model cannot do it), ``unknown_model``, ``input_too_long``, ``internal_error``,
    ``result_too_large``, ``expired`` (``EXPIRED``: its deadline passed before its forward pass).
    ``param`` names the offending field as a path (``input[3]``, ``metadata.tags[0]``) when one
    field is to blame, so a caller can fix it without reading the message.
    """

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    param: str | None = None


class UnparseableMessage(Exception):
    """A message that cannot be answered at all; the worker dead-letters its raw bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequest(Exception):
    """A readable request that is wrong; the worker publishes ``error`` as its result.

    The other attributes are recovered on a best-effort basis (from the body, then the Kafka
    headers) so that the error result still reaches the caller and carries its metadata; each is
    None when it could not be recovered in a form that is safe to echo.
    """

    def __init__(
        self,
        error: ErrorInfo,
        *,
        request_id: str | None = None,
        task: str | None = None,
        model: str | None = None,
        reply_to: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        self.task = task
        self.model = model
        self.reply_to = reply_to
        self.metadata = metadata

    @classmethod
    def for_request(cls, request: PoolingRequest, error: ErrorInfo) -> InvalidRequest:
        """An error about an already-parsed request (found later, e.g. while planning)."""
        return cls(
            error,
            request_id=request.request_id,
            task=request.task,
            model=request.model,
            reply_to=request.reply_to,
            metadata=request.metadata,
        )
