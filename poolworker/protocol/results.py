"""Result messages: the task's vLLM response body plus the envelope, and its bytes on the wire."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .errors import ErrorInfo

# Vectors travel as numpy arrays so that orjson writes them in C, without a Python float each.
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


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
    """Compact UTF-8 JSON that ``json.loads`` reads back to the same values.

    Numpy arrays and scalars are written natively (orjson), float32 ones in their shortest
    float32 form (``0.1``, not ``0.10000000149011612``): parsed back and cast to float32 they
    are the same bits, and the JSON is a third of the size. A non-finite number anywhere (NaN
    from a broken model) raises ``ValueError`` rather than going out as ``NaN``, which strict
    parsers reject, or as orjson's ``null``, which would read as a missing value.

    What orjson refuses but ``json`` accepts (integers beyond 64 bits, non-string keys) goes
    through ``json``, so every message that could be encoded before still can, and what could
    not (a lone surrogate: ``UnicodeEncodeError``) fails as before.
    """
    if not _all_finite(message):
        raise ValueError("Out of range float values are not JSON compliant: the message holds a NaN or an infinity")
    try:
        return orjson.dumps(message, default=_plain, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain).encode("utf-8")


def _plain(value: Any) -> Any:
    """Numpy values orjson does not take natively (non-contiguous, other byte order) as Python ones."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _all_finite(value: Any) -> bool:
    """Whether every float in a JSON-like tree is finite, without a Python step per float.

    Arrays are checked by numpy. A list is first summed in C: a NaN or infinity in it makes the
    sum non-finite, so a finite sum proves the whole list finite; only lists that are not all
    numbers (or whose sum overflowed) are walked item by item. An explicit stack, so a wide or
    deep tree costs no recursion.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            if not _finite_sum(item):
                stack.extend(item)
        elif isinstance(item, (np.ndarray, np.generic)):
            kind = item.dtype.kind
            if kind in "fc" and not np.isfinite(item).all():
                return False
            if kind == "O":  # Python objects: orjson would write them through _plain, so look inside
                stack.append(item.tolist())
    return True


def _finite_sum(items: list | tuple) -> bool:
    """True when the items are plain numbers with a finite sum (then each is finite); False
    means "look at each item", never "not finite"."""
    try:
        total = sum(items)
    except (TypeError, ValueError, OverflowError):  # not all numbers; arrays of unequal shapes; a huge int
        return False
    return isinstance(total, int) or (isinstance(total, float) and math.isfinite(total))


def status_of(message: Mapping[str, Any]) -> str:
    """The Kafka ``status`` header for a result message: ``ok`` or ``error``."""
    return "ok" if message.get("error") is None else "error"
