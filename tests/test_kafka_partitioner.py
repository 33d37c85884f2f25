"""Where a keyed result goes: the Java client's partition, computed more cheaply for kafka-python.

The references are Kafka's own test values for its murmur2 (``UtilsTest.testMurmur2``, signed
as Java returns them) and kafka-python's ``DefaultPartitioner``, whose choices the faster
partitioner must repeat exactly: a different choice would split a key's results over two
partitions when a pool mixes old and new workers.
"""

from __future__ import annotations

import random

import pytest
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from poolworker.config import WorkerSettings
from poolworker.consumers import kafka_partitioner
from poolworker.consumers.kafka_partitioner import KeyHashPartitioner, murmur2

JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


class _Cluster:
    """The three questions a partitioner asks of kafka-python's ``ClusterMetadata``."""

    def __init__(self, partitions: dict[str, list[int]], unavailable: frozenset[int] = frozenset()) -> None:
        self.partitions = partitions
        self.unavailable = unavailable

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.partitions[topic]) if topic in self.partitions else None

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic) - self.unavailable if topic in self.partitions else None


def test_murmur2_gives_the_java_clients_values_and_kafka_pythons():
    for data, java in JAVA_MURMUR2.items():
        assert murmur2(data) == java & 0xFFFFFFFF
    rng = random.Random(7)
    for length in range(70):  # every tail length, one to seventeen whole words
        for _ in range(20):
            data = rng.randbytes(length)
            assert murmur2(data) == kafka_python_murmur2(data), data


def test_keyed_records_go_where_kafka_pythons_default_partitioner_sends_them(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(kafka_partitioner.time, "monotonic", lambda: clock[0])
    ours, theirs = KeyHashPartitioner(), DefaultPartitioner()
    rng = random.Random(11)
    keys = [rng.randbytes(rng.randrange(1, 40)) for _ in range(300)] + [b"r1", b"doc-42", "ключ".encode()]
    previous = None
    for count in (1, 3, 6, 12):  # the same partitioner object as the topic grows
        cluster = _Cluster({"results": list(range(count))}, unavailable=frozenset({0}))  # keyed records ignore availability
        if previous is not None:  # until the partitions are read again, the old count holds
            assert {ours.partition("results", None, key, None, b"v", cluster) for key in keys} == set(range(previous))
            clock[0] += kafka_partitioner.PARTITIONS_REREAD_S
        chosen = [ours.partition("results", None, key, None, b"v", cluster) for key in keys]
        assert chosen == [theirs.partition("results", None, key, None, b"v", cluster) for key in keys]
        assert len(set(chosen)) == count
        previous = count


def test_records_without_a_key_go_to_an_available_partition_and_an_unknown_topic_is_refused():
    cluster = _Cluster({"results": [0, 1, 2, 3]}, unavailable=frozenset({1, 3}))
    chosen = {KeyHashPartitioner().partition("results", None, None, None, b"v", cluster) for _ in range(200)}
    assert chosen == {0, 2}
    with pytest.raises(ValueError, match="missing"):  # as kafka-python's partitioner refuses it
        KeyHashPartitioner().partition("missing", None, b"k", None, b"v", cluster)


def test_the_workers_producer_uses_it():
    assert isinstance(WorkerSettings().producer_options()["partitioner"], KeyHashPartitioner)
