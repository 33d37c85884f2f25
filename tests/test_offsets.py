"""OffsetTracker on its own: the commit point of a partition is its oldest unfinished record, it
never passes one, revoked partitions are forgotten, and all of it holds under concurrent use
(records are added by the consumer thread and finished from producer callbacks)."""

from __future__ import annotations

import queue
import random
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.structs import TopicPartition

from poolworker.consumers.offsets import OffsetTracker

TP = TopicPartition("requests", 0)
OTHER = TopicPartition("requests", 1)


def tracker_with(tp: TopicPartition, offsets: list[int]) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.add(tp, offset)
    return tracker


def commit(tracker: OffsetTracker) -> dict[TopicPartition, int]:
    """What the consumer loop does: take the committable points and record them as committed."""
    points = tracker.committable()
    tracker.mark_committed(points)
    return points


# ------------------------------------------------------------------------------------------------
# the commit point
# ------------------------------------------------------------------------------------------------
def test_commit_point_waits_for_the_oldest_unfinished_record():
    tracker = tracker_with(TP, [10, 11, 12])
    tracker.done(TP, 12)
    tracker.done(TP, 11)
    assert tracker.committable() == {TP: 10}  # 10 is still in flight: re-read from 10 after a crash
    tracker.done(TP, 10)
    assert tracker.committable() == {TP: 13}  # everything finished: the next offset to read


def test_offsets_with_gaps_commit_past_the_gap():
    """Compacted topics and transaction markers leave holes in the offsets."""
    tracker = tracker_with(TP, [5, 8])
    tracker.done(TP, 5)
    assert tracker.committable() == {TP: 8}
    tracker.done(TP, 8)
    assert tracker.committable() == {TP: 9}


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=25, unique=True).map(sorted),
    data=st.data(),
)
def test_commit_point_never_passes_an_unfinished_record(offsets, data):
    finish_order = data.draw(st.permutations(offsets))
    tracker = tracker_with(TP, offsets)
    unfinished = set(offsets)
    for offset in finish_order:
        tracker.done(TP, offset)
        unfinished.discard(offset)
        expected = min(unfinished) if unfinished else offsets[-1] + 1
        assert tracker.committable() == {TP: expected}
        assert tracker.inflight() == len(unfinished)


def test_committable_reports_only_partitions_whose_point_moved():
    tracker = tracker_with(TP, [0, 1])
    tracker.add(OTHER, 7)
    assert commit(tracker) == {TP: 0, OTHER: 7}
    assert tracker.committable() == {}
    tracker.done(TP, 0)
    assert commit(tracker) == {TP: 1}
    tracker.add(TP, 2)
    tracker.done(TP, 1)
    assert tracker.committable() == {TP: 2}


def test_committable_can_be_limited_to_some_partitions():
    """Commit-on-revoke commits only the partitions being revoked."""
    tracker = tracker_with(TP, [3])
    tracker.add(OTHER, 9)
    tracker.done(TP, 3)
    tracker.done(OTHER, 9)
    assert tracker.committable({TP}) == {TP: 4}
    assert tracker.committable({TopicPartition("requests", 5)}) == {}


def test_mark_committed_only_moves_forward():
    tracker = tracker_with(TP, [0, 1, 2])
    for offset in (0, 1, 2):
        tracker.done(TP, offset)
    tracker.mark_committed({TP: 3})
    tracker.mark_committed({TP: 1})  # a late answer to an older commit
    assert tracker.committable() == {}  # 3 still counts as committed: nothing to commit again
    tracker.add(TP, 3)
    tracker.done(TP, 3)
    assert tracker.committable() == {TP: 4}


def test_mark_committed_ignores_partitions_not_owned():
    tracker = OffsetTracker()
    tracker.mark_committed({TP: 100})
    tracker.add(TP, 40)
    assert tracker.committable() == {TP: 40}


# ------------------------------------------------------------------------------------------------
# revoke
# ------------------------------------------------------------------------------------------------
def test_forget_drops_a_revoked_partition_and_ignores_its_late_results():
    tracker = tracker_with(TP, [0, 1, 2])
    tracker.add(OTHER, 5)
    tracker.done(TP, 0)
    tracker.forget({TP})
    assert tracker.committable() == {OTHER: 5}
    assert tracker.inflight() == 1  # only OTHER's record
    tracker.done(TP, 1)  # an in-flight result acked after the revoke
    tracker.mark_committed({TP: 2})  # a commit that completed after the revoke
    assert tracker.committable() == {OTHER: 5}
    assert tracker.inflight() == 1


def test_a_partition_assigned_again_starts_afresh():
    tracker = tracker_with(TP, [0, 1, 2, 3])
    for offset in (0, 1, 2, 3):
        tracker.done(TP, offset)
    commit(tracker)
    tracker.forget({TP})
    tracker.add(TP, 2)  # the new assignment re-reads from an earlier committed offset
    assert tracker.committable() == {TP: 2}  # the old commit point does not hide it


# ------------------------------------------------------------------------------------------------
# concurrency
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def frequent_thread_switches():
    """Switch threads every microsecond so that races show up in a short test."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_concurrent_add_done_and_commit_never_pass_an_unfinished_record(frequent_thread_switches):
    partitions = [TopicPartition("requests", p) for p in range(4)]
    per_partition, finishers = 3000, 4
    tracker = OffsetTracker()
    # Offsets whose done() was called, recorded *before* the call: a commit point P is safe if
    # every offset below P is in here when P is observed.
    finished: dict[TopicPartition, set[int]] = {tp: set() for tp in partitions}
    finished_lock = threading.Lock()
    work: queue.Queue[tuple[TopicPartition, int] | None] = queue.Queue()
    stop = threading.Event()
    problems: list[str] = []
    last_point = {tp: -1 for tp in partitions}

    def consumer() -> None:  # one thread adds, in offset order per partition, as a poll loop does
        rng = random.Random(1)
        for offset in range(per_partition):
            for tp in rng.sample(partitions, len(partitions)):
                tracker.add(tp, offset)
                work.put((tp, offset))
        for _ in range(finishers):
            work.put(None)

    def finisher(seed: int) -> None:  # producer callbacks: results acked out of order
        rng = random.Random(seed)
        held: list[tuple[TopicPartition, int]] = []
        while (item := work.get()) is not None or held:
            if item is not None:
                held.append(item)
                if len(held) < 8 and rng.random() < 0.7:
                    continue
            tp, offset = held.pop(rng.randrange(len(held)))
            with finished_lock:
                finished[tp].add(offset)
            tracker.done(tp, offset)
            if item is None:
                work.put(None)  # keep the end marker until everything held is finished

    def committer() -> None:
        while not stop.is_set():
            points = tracker.committable()
            with finished_lock:
                for tp, point in points.items():
                    # offsets below the last point were checked then; the last point itself was not finished
                    missing = [o for o in range(max(last_point[tp], 0), point) if o not in finished[tp]]
                    if missing:
                        problems.append(f"{tp}: commit point {point} passes unfinished offset {missing[0]}")
                    if point <= last_point[tp]:
                        problems.append(f"{tp}: commit point went from {last_point[tp]} back to {point}")
                    last_point[tp] = point
            tracker.mark_committed(points)

    threads = [threading.Thread(target=consumer), *(threading.Thread(target=finisher, args=(s,)) for s in range(finishers))]
    watcher = threading.Thread(target=committer)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    watcher.join(60)

    assert not any(t.is_alive() for t in [*threads, watcher])
    assert problems == []
    assert all(finished[tp] == set(range(per_partition)) for tp in partitions)
    assert tracker.inflight() == 0
    assert commit(tracker) == {tp: per_partition for tp in partitions if last_point[tp] != per_partition}
    assert tracker.committable() == {}
