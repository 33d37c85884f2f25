"""The values that travel between the worker's three stages, each immutable once handed on.

receive (``prepare.Preparer``) ──Prepared──▶ infer (``batching.MicroBatcher``) ──Finished──▶
publish (``consumers.publisher.Publisher``); what cannot be answered at all goes from receive to
publish as a ``DeadLetter``. No stage writes into a value another stage made: the model thread
makes a new ``Finished`` instead of filling a shared job, so no object is ever shared mutable
between threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .plugins.interface import PluginRequest
    from .protocol import ErrorInfo, PoolingRequest
    from .tasks import ItemResult, ModelCall, ModelInput, Plan


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from (for ordering, acknowledgement, the DLQ and latency).

    ``topic``/``partition``/``offset`` are the transport's coordinates (see
    ``consumers.transport``); ``handle`` is the transport's own acknowledgement token (a Redis
    entry id, a NATS message; None on Kafka), ``deliveries`` how often the queue has handed
    this record out (1 where the queue does not count)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()
    handle: Any = field(default=None, compare=False, repr=False)
    deliveries: int = 1

    @property
    def label(self) -> str:
        where = self.handle if isinstance(self.handle, str) else self.offset
        return f"{self.topic}/{self.partition}@{where}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be answered (not JSON, a tombstone, …): its bytes go to the DLQ."""

    source: Source
    value: bytes | None
    reason: str


class Prepared(NamedTuple):
    """One request, ready for the model thread: everything checked, looked up and tokenized.

    ``error`` set means it is answered with that error (it still travels through the ordered
    queue, so per-partition order holds for errors too). Otherwise ``cached`` holds the items
    the cache answered (None for the others), and ``inputs`` the token ids of the others, as
    ``(item index, ModelInput)``, all for one ``call``.

    A named tuple rather than a frozen dataclass: as immutable, and made in one step (a frozen
    dataclass sets each of its fields through ``object.__setattr__``, which on a near-free model
    cost ~4 µs a request on the receive thread).
    """

    source: Source
    request_id: str
    task: str | None
    model: str | None
    reply_topic: str
    metadata: dict | None = None
    error: ErrorInfo | None = None
    request: PoolingRequest | None = None
    plan: Plan | None = None
    labels: Mapping[int, str] | None = None  # classify label names (the model config's id2label)
    call: ModelCall | None = None
    cache_keys: tuple[str, ...] = ()
    cached: tuple[ItemResult | None, ...] = ()
    inputs: tuple[tuple[int, ModelInput], ...] = ()
    plugin: PluginRequest | None = None  # task plugin: the parsed input its post_process needs
    cost_tokens: int = 0  # tokens the model must still process: the batch budget's unit


class Finished(NamedTuple):
    """A request's outcome from the model thread: every item's result in order, or an error;
    ``fresh`` are the items computed now (to be cached). A named tuple, as ``Prepared``."""

    prepared: Prepared
    results: tuple[ItemResult, ...] = ()
    error: ErrorInfo | None = None
    fresh: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.results) if self.error is None else 0


__all__ = ["DeadLetter", "Finished", "Prepared", "Source"]
