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
# Dataclasses and datetimes go to _plain, which refuses them, as json.dumps did.
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


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


def encode_message(message: Mapping[str, Any], *, checked: bool = False) -> bytes:
    """Compact UTF-8 JSON that ``json.loads`` reads back to the same values.

    Numpy arrays and scalars are written natively (orjson), float32 ones in their shortest
    float32 form (``0.1``, not ``0.10000000149011612``): parsed back and cast to float32 they
    are the same bits, and the JSON is a third of the size. A non-finite number anywhere (NaN
    from a broken model) raises ``ValueError`` rather than going out as ``NaN``, which strict
    parsers reject, or as orjson's ``null``, which would read as a missing value.

    What orjson refuses but ``json`` accepts (integers beyond 64 bits, non-string keys) goes
    through ``json``, so every message that could be encoded before still can, and what could
    not (a lone surrogate: ``UnicodeEncodeError``) fails as before.

    ``checked``: the caller vouches that no number in the message can be a NaN or an infinity,
    because each was checked once where it was made — the worker's results: decoding refuses
    them in a request (``metadata`` included), the model stage checks what it computes and the
    cache what it reads back (``all_finite``). Walking the message again cost more than orjson
    takes to write it.
    """
    if not checked and not all_finite(message):
        raise ValueError("Out of range float values are not JSON compliant: the message holds a NaN or an infinity")
    try:
        return orjson.dumps(message, default=_plain, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain).encode("utf-8")


def _plain(value: Any) -> Any:
    """What orjson hands back: a strided array (a cut view) becomes a contiguous copy, then
    written natively in the same float32 form as any other array; other numpy values become
    Python ones; anything else is refused, as ``json.dumps`` refused it. (orjson refuses
    byte-swapped arrays without asking; they go through ``json``, as lists.)"""
    if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def all_finite(value: Any) -> bool:
    """Whether every float in a JSON-like tree is finite, without a Python step per float.

    Float arrays are gathered and checked by numpy in one call (a call per small array would
    cost more than encoding it). A list is first summed in C: a NaN or infinity in it makes the
    sum non-finite, so a finite sum proves the whole list finite; only lists that are not all
    numbers (or whose sum overflowed) are walked item by item. An explicit stack, so a wide or
    deep tree costs no recursion; one dict lookup per node picks its branch.
    """
    arrays: list[np.ndarray | np.generic] = []
    stack = [value]
    while stack:
        item = stack.pop()
        kind = _KIND_OF.get(type(item)) or _kind_of(type(item))
        if kind is _LEAF:
            continue
        if kind is _MAPPING:
            stack.extend(item.values())
        elif kind is _FLOAT:
            if not math.isfinite(item):
                return False
        elif kind is _SEQUENCE:
            # a list of containers (``data``'s entries) is walked without trying to sum it first
            if (item and _KIND_OF.get(type(item[0])) in _CONTAINERS) or not _finite_sum(item):
                stack.extend(item)
        elif item.dtype.kind in "fc":  # _NUMPY
            arrays.append(item)
        elif item.dtype.kind == "O":  # Python objects: orjson writes them through _plain, so look inside
            stack.append(item.tolist())
    if not arrays:
        return True
    values = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=None)
    return bool(np.isfinite(values).all())


# How all_finite treats a node, by its type (subclasses included, resolved once per type).
_LEAF, _MAPPING, _FLOAT, _SEQUENCE, _NUMPY = "leaf", "mapping", "float", "sequence", "numpy"
_CONTAINERS = (_MAPPING, _SEQUENCE, _NUMPY)
_KIND_OF: dict[type, str] = {str: _LEAF, int: _LEAF, bool: _LEAF, type(None): _LEAF, dict: _MAPPING,
                             float: _FLOAT, list: _SEQUENCE, tuple: _SEQUENCE, np.ndarray: _NUMPY}


def _kind_of(cls: type) -> str:
    """The branch for a type not seen before; numpy first (``np.float64`` is also a float)."""
    if issubclass(cls, (np.ndarray, np.generic)):
        kind = _NUMPY
    elif issubclass(cls, float):
        kind = _FLOAT
    elif issubclass(cls, dict):
        kind = _MAPPING
    elif issubclass(cls, (list, tuple)):
        kind = _SEQUENCE
    else:  # str, int, None and what orjson does not write (it passes them to _plain, which refuses)
        kind = _LEAF
    _KIND_OF[cls] = kind
    return kind


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
