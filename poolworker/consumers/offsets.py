"""Which offsets may be committed: per partition, everything below the oldest unfinished record.

Records finish out of order (a DLQ write can be acked before an earlier record's result), but a
commit must never pass an unfinished record, or a crash would lose it. Thread-safe: records are
added by the consumer thread and finished from the producer's callback thread.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from kafka.structs import TopicPartition


class OffsetTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[TopicPartition, set[int]] = defaultdict(set)
        self._next: dict[TopicPartition, int] = {}  # one past the highest offset seen
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        with self._lock:
            self._pending[tp].add(offset)
            self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """Mark a record finished; ignored for partitions no longer owned."""
        with self._lock:
            pending = self._pending.get(tp)
            if pending is not None:
                pending.discard(offset)

    def inflight(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())

    def _commit_point(self, tp: TopicPartition) -> int | None:
        pending = self._pending.get(tp)
        if tp not in self._next:
            return None
        return min(pending) if pending else self._next[tp]

    def committable(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Next offset to commit for each partition whose commit point moved since the last commit."""
        with self._lock:
            out = {}
            for tp in list(self._next) if partitions is None else [p for p in partitions if p in self._next]:
                point = self._commit_point(tp)
                if point is not None and point > self._committed.get(tp, -1):
                    out[tp] = point
            return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self._next:
                    self._committed[tp] = max(self._committed.get(tp, -1), offset)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop a revoked partition: its in-flight results may still be published (a duplicate
        for the new owner, which is at-least-once), but we must never commit for it again."""
        with self._lock:
            for tp in partitions:
                self._pending.pop(tp, None)
                self._next.pop(tp, None)
                self._committed.pop(tp, None)
