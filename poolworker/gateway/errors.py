"""What the gateway answers when a call fails, in the two dialects it speaks.

One value, ``GatewayError`` (status, type, message, param), comes from three places: a body the
gateway cannot forward (not JSON), the gateway itself (429 at its in-flight cap, 504 past the
deadline) and the worker's ``error`` in a result. It is written as vLLM's error body
(``{"error": {"message", "type", "param", "code"}}``) on vLLM's routes, and as TEI's
(``{"error", "error_type"}``) on TEI's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from ..protocol import EXPIRED

# The worker's ``error.type`` → HTTP status. vLLM answers a bad field 400 with its ``param``, an
# unknown model 404, and a task the model cannot do 404 (the route does not exist for it).
# A type not listed is the server's fault until proven otherwise: 500.
STATUS_OF_POOL_ERROR: dict[str, HTTPStatus] = {
    "invalid_request": HTTPStatus.BAD_REQUEST,
    "input_too_long": HTTPStatus.BAD_REQUEST,
    "unknown_model": HTTPStatus.NOT_FOUND,
    "unsupported_task": HTTPStatus.NOT_FOUND,
    EXPIRED: HTTPStatus.GATEWAY_TIMEOUT,
}

# vLLM's ``error.type`` for the statuses it names itself; others get the status phrase, as
# vLLM's HTTPException handler writes them.
_VLLM_TYPES: dict[int, str] = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}

# TEI's ``error_type`` per status (router/src/http/server.rs maps the other way).
_TEI_TYPES: dict[int, str] = {400: "Empty", 413: "Validation", 422: "Validation", 424: "Backend", 429: "Overloaded",
                              503: "Unhealthy"}


@dataclass
class GatewayError(Exception):
    """A failed call: the HTTP status, vLLM's error type, a message for people and the field at
    fault (``param``) when one is. ``retry_after_s`` is sent as ``Retry-After``; ``pool_type``
    is the worker's ``error.type`` when the worker said it."""

    status: int
    message: str
    param: str | None = None
    type: str | None = None
    retry_after_s: int | None = None
    pool_type: str | None = None

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    @property
    def vllm_type(self) -> str:
        return self.type or _VLLM_TYPES.get(self.status) or HTTPStatus(self.status).phrase

    def vllm_body(self) -> dict[str, Any]:
        """vLLM's ``ErrorResponse``."""
        return {"error": {"message": self.message, "type": self.vllm_type, "param": self.param, "code": self.status}}

    def tei(self) -> tuple[int, dict[str, Any]]:
        """TEI's status and ``ErrorResponse``. TEI answers a bad request 422 ``Validation``
        (never 400/404), a failed model 424 ``Backend``."""
        if self.status in (400, 404):
            status = 422
        elif self.status == 500:
            status = 424
        else:
            status = self.status
        return status, {"error": self.message, "error_type": _TEI_TYPES.get(status, HTTPStatus(status).phrase)}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(HTTPStatus.BAD_REQUEST, message, param)


def from_pool(error: Mapping[str, Any]) -> GatewayError:
    """The worker's ``error`` ({type, message, param}) as the HTTP error vLLM would answer."""
    kind = str(error.get("type") or "internal_error")
    status = STATUS_OF_POOL_ERROR.get(kind, HTTPStatus.INTERNAL_SERVER_ERROR)
    param = error.get("param")  # vLLM names the field of a 400 only
    param = param if isinstance(param, str) and status == HTTPStatus.BAD_REQUEST else None
    return GatewayError(int(status), str(error.get("message") or kind), param, pool_type=kind)


__all__ = ["STATUS_OF_POOL_ERROR", "GatewayError", "bad_request", "from_pool"]
