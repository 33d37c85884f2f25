"""Request and result messages: the Kafka-facing contract (DESIGN.md §4).

One module per job: ``errors`` (what can go wrong, as values), ``fields`` (which fields each
task's vLLM request class reads; the rest are dropped with a warning), ``chat`` (the shape of
chat messages), ``request`` (the request model and its checks), ``decoding`` (hostile bytes →
request), ``results`` (result messages and their encoding). Import from here; the split is an
implementation detail. docs/contract.md is the field-by-field contract.
"""

from .decoding import DEFAULT_MAX_DEPTH, DEFAULT_MAX_REQUEST_BYTES, parse_request
from .errors import (
    DEADLINE_HEADER,
    EXPIRED,
    ErrorInfo,
    InvalidRequest,
    UnparseableMessage,
)
from .request import DEFAULT_MAX_ITEMS, TASKS, PoolingRequest, PoolingTask, Task
from .results import all_finite, encode_message, result_message, status_of

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "EXPIRED",
    "TASKS",
    "ErrorInfo",
    "InvalidRequest",
    "PoolingRequest",
    "PoolingTask",
    "Task",
    "UnparseableMessage",
    "all_finite",
    "encode_message",
    "parse_request",
    "result_message",
    "status_of",
]
