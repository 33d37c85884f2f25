"""The ``kafka-librdkafka`` transport: confluent-kafka's consumer and producer (librdkafka, C).

Same topics, consumer group and guarantees as the ``kafka`` transport; only the client differs,
and with it the cost per record: librdkafka parses, batches and acknowledges in C threads, so the
Python side sees one call per poll and one callback per ack.

Threads. librdkafka is thread-safe, but its callbacks run on whichever thread serves its queues:
the consumer's (rebalance, commit results, logs) on the receive thread inside ``poll``, the
producer's delivery reports on this transport's own ``_DeliveryPump`` thread (and on the
publisher thread while ``flush`` or a full queue waits). Offsets are never stored or committed
automatically: ``commit`` sends each partition's contiguous point from the ``OffsetTracker``
(keyed by ``(topic, partition)``), and a partition about to be revoked gets its finished offsets
committed synchronously first.

Settings: ``WorkerSettings.kafka_options`` may use kafka-python's names (translated where
librdkafka has the same knob, ``KAFKA_PYTHON_TO_LIBRDKAFKA``) or librdkafka's own dotted names
(passed unchanged to the clients whose role accepts them); docs/transports/librdkafka.md lists
both.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from ..cache import redact_url
from ..config import WorkerSettings
from ..work import Source
from .offsets import OffsetTracker
from .transport import (
    Headers,
    OnRevoked,
    Record,
    RecordTooLarge,
    Reply,
    TransportUnavailable,
)

log = logging.getLogger(__name__)
client_log = logging.getLogger("poolworker.librdkafka")  # librdkafka's own log lines

#: How long ``start`` (and a channel) waits for the cluster's metadata before giving up.
START_TIMEOUT_S = 10.0
#: How long a client's fetch may wait on the broker (Tansu answers a fetch only when it runs out:
#: librdkafka's default 500 ms put ~215 ms on every idle-pipeline result here, 20 ms puts 3 ms).
CLIENT_FETCH_WAIT_MAX_MS = 20
#: How long a produce blocked by a full local queue waits between tries (never dropped).
QUEUE_FULL_WAIT_S = 0.05
PUMP_POLL_S = 0.05
#: librdkafka's name for the Java client's keyed partitioning (murmur2; null keys at random).
JAVA_PARTITIONER = "murmur2_random"

# -- options ---------------------------------------------------------------------------------------
#: kafka-python option → (librdkafka property, value conversion); the client roles it reaches
#: follow the property (``_ROLE_ONLY``).
KAFKA_PYTHON_TO_LIBRDKAFKA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "client_id": ("client.id", str),
    "security_protocol": ("security.protocol", str),
    "sasl_mechanism": ("sasl.mechanism", str),
    "sasl_plain_username": ("sasl.username", str),
    "sasl_plain_password": ("sasl.password", str),
    "sasl_kerberos_service_name": ("sasl.kerberos.service.name", str),
    "ssl_cafile": ("ssl.ca.location", str),
    "ssl_certfile": ("ssl.certificate.location", str),
    "ssl_keyfile": ("ssl.key.location", str),
    "ssl_password": ("ssl.key.password", str),
    "ssl_crlfile": ("ssl.crl.location", str),
    "ssl_ciphers": ("ssl.cipher.suites", str),
    "ssl_check_hostname": ("ssl.endpoint.identification.algorithm", lambda on: "https" if on else "none"),
    "request_timeout_ms": ("socket.timeout.ms", int),
    "metadata_max_age_ms": ("metadata.max.age.ms", int),
    "connections_max_idle_ms": ("connections.max.idle.ms", int),
    "reconnect_backoff_ms": ("reconnect.backoff.ms", int),
    "reconnect_backoff_max_ms": ("reconnect.backoff.max.ms", int),
    "retry_backoff_ms": ("retry.backoff.ms", int),
    "receive_buffer_bytes": ("socket.receive.buffer.bytes", int),
    "send_buffer_bytes": ("socket.send.buffer.bytes", int),
    # consumer
    "session_timeout_ms": ("session.timeout.ms", int),
    "heartbeat_interval_ms": ("heartbeat.interval.ms", int),
    "max_poll_interval_ms": ("max.poll.interval.ms", int),
    "fetch_max_wait_ms": ("fetch.wait.max.ms", int),
    "fetch_min_bytes": ("fetch.min.bytes", int),
    "fetch_max_bytes": ("fetch.max.bytes", int),
    "max_partition_fetch_bytes": ("max.partition.fetch.bytes", int),
    "auto_offset_reset": ("auto.offset.reset", str),
    "isolation_level": ("isolation.level", str),
    "check_crcs": ("check.crcs", bool),
    # producer
    "acks": ("acks", lambda acks: str(acks)),
    "enable_idempotence": ("enable.idempotence", bool),
    "linger_ms": ("linger.ms", int),
    "batch_size": ("batch.size", int),
    "compression_type": ("compression.type", lambda codec: codec or "none"),
    "max_request_size": ("message.max.bytes", int),
    "retries": ("retries", int),
    "max_in_flight_requests_per_connection": ("max.in.flight.requests.per.connection", int),
    "delivery_timeout_ms": ("delivery.timeout.ms", int),
    "buffer_memory": ("queue.buffering.max.kbytes", lambda size: max(1, int(size) // 1024)),
}

#: Properties only one client role accepts (from librdkafka's CONFIGURATION.md, the "C/P" column);
#: every other property is global and reaches consumer, producer and admin client alike.
_PRODUCER_ONLY = frozenset(
    ["acks", "batch.num.messages", "batch.size", "compression.codec", "compression.level", "compression.type", "delivery.report.only.error", "delivery.timeout.ms", "enable.gapless.guarantee", "enable.idempotence", "linger.ms", "message.send.max.retries", "message.timeout.ms", "partitioner", "produce.offset.report", "queue.buffering.backpressure.threshold", "queue.buffering.max.kbytes", "queue.buffering.max.messages", "queue.buffering.max.ms", "queuing.strategy", "request.required.acks", "request.timeout.ms", "retries", "sticky.partitioning.linger.ms", "transaction.timeout.ms", "transactional.id", "message.max.bytes"])
_CONSUMER_ONLY = frozenset(
    ["auto.commit.enable", "auto.commit.interval.ms", "auto.offset.reset", "check.crcs", "consume.callback.max.messages", "coordinator.query.interval.ms", "enable.auto.commit", "enable.auto.offset.store", "enable.partition.eof", "fetch.error.backoff.ms", "fetch.max.bytes", "fetch.message.max.bytes", "fetch.min.bytes", "fetch.queue.backoff.ms", "fetch.wait.max.ms", "group.id", "group.instance.id", "group.protocol", "group.protocol.type", "group.remote.assignor", "heartbeat.interval.ms", "isolation.level", "max.partition.fetch.bytes", "max.poll.interval.ms", "offset.store.method", "partition.assignment.strategy", "queued.max.messages.kbytes", "queued.min.messages", "session.timeout.ms"])
# message.max.bytes is global in librdkafka, but it is kafka-python's max_request_size: a producer
# limit. Given to the consumer it would cap what the worker can *read*, so only the producer gets it.
_ROLE_SPECIFIC = _PRODUCER_ONLY | _CONSUMER_ONLY
_ACCEPTS = {"producer": _PRODUCER_ONLY, "consumer": _CONSUMER_ONLY, "admin": frozenset()}


def _reaches(name: str, role: str) -> bool:
    """Whether librdkafka property ``name`` belongs in a ``role`` client's settings."""
    return name not in _ROLE_SPECIFIC or name in _ACCEPTS[role]


def _kafka_python_keys() -> frozenset[str]:
    """Every option name some kafka-python client accepts (empty without kafka-python)."""
    try:
        import kafka
    except ImportError:  # pragma: no cover - kafka-python is a base dependency
        return frozenset()
    return frozenset().union(*(getattr(kafka, c).DEFAULT_CONFIG for c in ("KafkaConsumer", "KafkaProducer", "KafkaAdminClient")))


def translate_options(options: Mapping[str, Any], role: str) -> dict[str, Any]:
    """``options`` (kafka-python names and/or librdkafka dotted names) as librdkafka settings
    for one client ``role`` (consumer, producer, admin).

    A kafka-python name without a librdkafka twin is ignored with a warning, unless it is a
    security setting (``ssl_*``, ``sasl_*``, ``security_*``): silently dropping one of those
    could connect without the protection asked for, so it is a ``ValueError``, as is a name
    neither client knows."""
    out: dict[str, Any] = {}
    kafka_python = None
    for key, value in options.items():
        if "." in key:  # librdkafka's own name
            if _reaches(key, role):
                out[key] = value
            continue
        if key in KAFKA_PYTHON_TO_LIBRDKAFKA:
            name, convert = KAFKA_PYTHON_TO_LIBRDKAFKA[key]
            if _reaches(name, role):
                out[name] = convert(value)
            continue
        kafka_python = _kafka_python_keys() if kafka_python is None else kafka_python
        if key.startswith(("ssl_", "sasl_", "security_")):
            raise ValueError(f"kafka option {key!r} has no librdkafka equivalent here; give librdkafka's own setting "
                             "(dotted name, e.g. ssl.key.pem or sasl.oauthbearer.config) instead")
        if key not in kafka_python:
            raise ValueError(f"unknown kafka option {key!r}: use a kafka-python name or a librdkafka property (dotted)")
        if role == "consumer":  # once per start, not once per client
            log.warning("kafka option %r has no librdkafka equivalent; ignored by the kafka-librdkafka transport", key)
    return out


def _client_config(servers: str, options: Mapping[str, Any], role: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` for one client, then the user's options (they win, as on the ``kafka``
    transport), plus the hooks that route librdkafka's log and errors to Python logging."""
    return {"bootstrap.servers": servers, **base, **translate_options(options, role),
            "logger": client_log, "error_cb": _log_client_error}


def _log_client_error(err: KafkaError) -> None:
    """librdkafka's global errors (a broker down, all brokers down, a fatal producer error): it
    retries the transient ones by itself, so they are only logged."""
    (log.error if err.fatal() else log.warning)("librdkafka: %s", err.str())


def _build(cls: type, config: dict[str, Any]) -> Any:
    """``cls(config)``, a rejected property (a typo, a wrong value) as a ``ValueError``."""
    try:
        return cls(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ValueError(f"librdkafka refused the settings: {exc}") from exc


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    """The worker's consumer: the group, no automatic commit *or offset store* (offsets are
    committed explicitly, up to the oldest unanswered record), the settings' group timings, and
    the cooperative-sticky assignor: a rebalance moves only the partitions that change owner, so
    a surviving worker's in-flight records are not revoked and replayed (two-worker kill -9
    test: 217 duplicates instead of 609 with the eager default)."""
    return _client_config(settings.bootstrap_servers, settings.kafka_options, "consumer", {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        "partition.assignment.strategy": "cooperative-sticky",
    })


def producer_config(settings: WorkerSettings) -> dict[str, Any]:
    """acks=all and idempotence (as the ``kafka`` transport); ``message.max.bytes`` is
    kafka-python's ``max_request_size`` default, so both transports refuse the same records;
    a keyed record goes where the Java client and the ``kafka`` transport put it (murmur2 of the
    key; librdkafka's own default hashes with CRC32), so a key's results stay in one partition
    when a pool mixes both transports or moves from one to the other."""
    return _client_config(settings.bootstrap_servers, settings.kafka_options, "producer", {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "message.max.bytes": 1_048_576,
        "partitioner": JAVA_PARTITIONER,
    })


def ensure_topics(admin: AdminClient, servers: str, topics: list[str], *, partitions: int, replication_factor: int) -> None:
    """Create the topics that are missing (an existing topic is left as it is). An unreachable
    cluster is a ``TransportUnavailable`` that names it."""
    try:
        existing = set(admin.list_topics(timeout=START_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise TransportUnavailable(f"no Kafka broker answered at {redact_url(servers)} within {START_TIMEOUT_S:.0f} s "
                                   f"({exc.args[0].str()}); check --bootstrap-servers and the kafka options") from exc
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in missing],
                                  operation_timeout=START_TIMEOUT_S, request_timeout=START_TIMEOUT_S)
    for topic, future in futures.items():
        try:
            future.result()
            log.info("created topic %s (%d partitions)", topic, partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else another worker created it first
                raise


def _tp(topic: str, partition: int, offset: int = OFFSET_INVALID) -> TopicPartition:
    return TopicPartition(topic, partition, offset)


def _labels(partitions: list[TopicPartition]) -> list[str]:
    """As the ``kafka`` transport logs them (the reliability tests read these lines)."""
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)


class _DeliveryPump:
    """A thread that serves the producer's delivery reports as they come, so ``on_acked`` /
    ``on_failed`` run promptly whatever the publisher is doing (librdkafka runs them only inside
    ``poll``/``flush``)."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poolworker-librdkafka-acks", daemon=True)

    def start(self) -> _DeliveryPump:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(PUMP_POLL_S)
            except Exception:  # a dead pump would stop every ack: log and keep serving
                log.exception("serving delivery reports failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _on_delivery(on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> Callable[[KafkaError | None, Any], None]:
    """The delivery report of one record. Nothing may escape it: confluent-kafka re-raises a
    callback's exception from whichever ``poll`` served it, which may be the publisher's wait on
    a full queue, and the record being sent there would be abandoned."""

    def report(err: KafkaError | None, _msg: Any) -> None:
        try:
            if err is None:
                on_acked()
            else:
                on_failed(KafkaException(err))
        except Exception:
            log.exception("a delivery callback failed")

    return report


def produce_waiting(producer: Producer, topic: str, value: bytes | None, key: bytes | None, headers: Headers | None,
                    on_delivery: Callable | None = None) -> None:
    """``producer.produce``, waiting while librdkafka's local queue is full (``BufferError``)
    instead of dropping the record; a record over ``message.max.bytes`` is ``RecordTooLarge``."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key, headers=headers or None)
            else:
                producer.produce(topic, value, key, headers=headers or None, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(QUEUE_FULL_WAIT_S)  # serves delivery reports, which frees the queue
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                raise RecordTooLarge(exc.args[0].str()) from exc
            raise


class LibrdkafkaTransport:
    """``Transport`` over confluent-kafka (librdkafka): ``kafka``'s semantics, C's speed."""

    name = "kafka-librdkafka"

    def __init__(self, settings: WorkerSettings, *, on_revoked: OnRevoked) -> None:
        self.settings = settings
        self.on_revoked = on_revoked
        self.tracker = OffsetTracker()  # keyed by (topic, partition)
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self._pump: _DeliveryPump | None = None
        self._paused = False
        self._incremental = False
        self._assigned: set[tuple[str, int]] = set()
        self._assigned_lock = threading.Lock()

    def start(self) -> None:
        s = self.settings
        consumer_conf = consumer_config(s)  # option errors first, before anything connects
        producer_conf = producer_config(s)
        admin = _build(AdminClient, _client_config(s.bootstrap_servers, s.kafka_options, "admin", {}))
        ensure_topics(admin, s.bootstrap_servers, [s.requests_topic, s.results_topic, s.dlq_topic], partitions=s.partitions,
                      replication_factor=s.replication_factor)
        self.producer = _build(Producer, producer_conf)
        self._pump = _DeliveryPump(self.producer).start()
        # cooperative assignors (and KIP-848's group protocol) hand out increments, not whole sets
        self._incremental = ("cooperative" in str(consumer_conf.get("partition.assignment.strategy", ""))
                             or str(consumer_conf.get("group.protocol", "")).lower() == "consumer")
        self.consumer = _build(Consumer, {**consumer_conf, "on_commit": self._committed})
        self.consumer.subscribe([s.requests_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    # -- the group (callbacks run on the receive thread, inside poll) ------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._assigned_lock:
            self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
            owned = sorted(f"{t}/{p}" for t, p in self._assigned)
        if partitions or not owned:  # every partition now owned (a cooperative increment adds to the rest)
            log.info("partitions assigned: %s", owned)
        if self._paused and partitions:  # partitions assigned while paused must not fetch either
            if self._incremental:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is finished for the partitions we lose, synchronously (the new owner starts
        from the commit), then forget them: their late results are duplicates, never losses."""
        keys = {(tp.topic, tp.partition) for tp in partitions}
        offsets = self.tracker.committable(keys)
        if offsets:
            try:
                consumer.commit(offsets=[_tp(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
            except KafkaException as exc:  # the new owner replays from the last commit
                log.warning("commit on revoke failed: %s", exc.args[0].str())
        self._forget(keys)
        log.info("partitions revoked: %s", _labels(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (our session expired): another member may
        own them already, so nothing is committed for them."""
        self._forget({(tp.topic, tp.partition) for tp in partitions})
        log.warning("partitions lost: %s", _labels(partitions))

    def _forget(self, keys: set[tuple[str, int]]) -> None:
        self.tracker.forget(keys)
        with self._assigned_lock:
            self._assigned -= keys
        self.on_revoked(sorted(keys))

    def _committed(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The result of an asynchronous commit: remember what the group now holds."""
        if err is not None:
            log.warning("commit failed (%s); will retry", err.str())
            return
        done = {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.error is None and tp.offset >= 0}
        failed = [tp for tp in partitions if tp.error is not None]
        if failed:
            log.warning("commit failed for %s (%s); will retry", _labels(failed), failed[0].error.str())
        self.tracker.mark_committed(done)

    # -- receiving ---------------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """What librdkafka has fetched already, else wait up to ``timeout_s`` for the first record
        and take what came with it (``consume`` alone would wait out the whole timeout for a
        full batch)."""
        messages = self.consumer.consume(max_records, 0)
        if not messages:
            first = self.consumer.poll(timeout_s)
            if first is None:
                return []
            messages = [first] + (self.consumer.consume(max_records - 1, 0) if max_records > 1 else [])
        records = []
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err.str())
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            self.tracker.add((topic, partition), offset)
            kind, stamp = message.timestamp()
            headers = tuple((k, v if v is not None else b"") for k, v in (message.headers() or ()))
            source = Source(topic, partition, offset, message.key(), stamp if kind else None, headers)
            records.append(Record(source, message.value()))
        return records

    def finish(self, source: Source) -> None:
        self.tracker.done((source.topic, source.partition), source.offset)

    def inflight(self) -> int:
        return self.tracker.inflight()

    def commit(self) -> None:
        """Each partition's contiguous point, asynchronously: the receive thread never waits on
        the group coordinator (a broker restart would stall it); ``_committed`` records the
        result, and a failure is simply committed again next time."""
        self._commit(asynchronous=True)

    def _commit(self, *, asynchronous: bool) -> None:
        offsets = self.tracker.committable()
        if not offsets or self.consumer is None:
            return
        try:
            result = self.consumer.commit(offsets=[_tp(t, p, o) for (t, p), o in offsets.items()], asynchronous=asynchronous)
        except KafkaException as exc:
            log.warning("commit failed (%s); will retry", exc.args[0].str())
            return
        if not asynchronous:
            self._committed(None, result or [])

    def pause(self) -> None:
        self._paused = True
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(assigned)

    def resume(self) -> None:
        """Resume, then seek each partition to the position it resumes from anyway: librdkafka
        looks at a resumed partition again only on its broker thread's next timer tick (700 ms
        from resume to the first record here), and a seek starts the fetch at once (20 ms)."""
        self._paused = False
        assigned = self.consumer.assignment()
        if not assigned:
            return
        self.consumer.resume(assigned)
        for tp in self.consumer.position(assigned):
            if tp.offset >= 0:  # no position yet: nothing was consumed, the fetch starts from the commit
                try:
                    self.consumer.seek(tp)
                except KafkaException as exc:
                    log.debug("seek after resume of %s/%d: %s", tp.topic, tp.partition, exc)

    def lag(self) -> Mapping[tuple[str, int], int]:
        """high watermark (as of the last fetch) − position, from the consumer: Tansu's
        ListOffsets LATEST is wrong, so the broker is never asked."""
        assigned = self.consumer.assignment()
        out = {}
        for tp in self.consumer.position(assigned) if assigned else []:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return out

    def ready(self) -> bool:
        with self._assigned_lock:
            return bool(self._assigned)

    # -- producing ---------------------------------------------------------------------------------
    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        try:
            produce_waiting(self.producer, topic, value, key, headers, _on_delivery(on_acked, on_failed))
        except KafkaException as exc:  # refused at once (e.g. a fatal producer state): retried like a failed ack
            on_failed(exc)

    def flush(self, timeout_s: float) -> None:
        if self.producer is not None:
            self.producer.flush(timeout_s)

    def close(self) -> None:
        if self.consumer is not None:
            self._commit(asynchronous=False)
            self.consumer.close()  # leaves the group: partitions move at once
            self.consumer = None
        if self.producer is not None:
            self.producer.flush(5)
            self._pump.stop()
            self.producer = None


class LibrdkafkaChannel:
    """``ClientChannel`` over confluent-kafka. The results topic is read without joining a group,
    from each partition's end as resolved when the channel is built (concrete offsets, so
    nothing appended between construction and the first ``receive`` is missed; on Tansu, whose
    ListOffsets LATEST can lag the true end, some older results are read too and skipped by
    ``request_id``)."""

    def __init__(self, servers: str, *, results_topic: str, options: dict) -> None:
        self._servers = servers
        self.producer = _build(Producer, _client_config(servers, options, "producer", {
            "acks": "all", "linger.ms": 2, "partitioner": JAVA_PARTITIONER, "on_delivery": self._delivered}))
        # librdkafka wants a group.id even for assign(): a fresh one that never joins or commits
        self.consumer = _build(Consumer, _client_config(servers, options, "consumer", {
            "group.id": f"poolworker-client-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "fetch.wait.max.ms": CLIENT_FETCH_WAIT_MAX_MS}))
        self._lock = threading.Lock()  # one reader at a time: consume + its follow-up belong together
        self.consumer.assign(self._ends(results_topic))

    def _ends(self, topic: str) -> list[TopicPartition]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                meta = self.consumer.list_topics(topic, timeout=max(0.1, deadline - time.monotonic()))
            except KafkaException as exc:
                raise TransportUnavailable(f"no Kafka broker answered at {redact_url(self._servers)} within "
                                           f"{START_TIMEOUT_S:.0f} s ({exc.args[0].str()})") from exc
            found = meta.topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                break
            if time.monotonic() > deadline:
                raise TransportUnavailable(f"topic {topic!r} does not exist (is a worker running? it creates its topics)")
            time.sleep(0.1)
        ends = []
        for partition in sorted(found.partitions):
            _low, high = self.consumer.get_watermark_offsets(_tp(topic, partition), timeout=START_TIMEOUT_S)
            ends.append(_tp(topic, partition, high))
        return ends

    @staticmethod
    def _delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            log.warning("request not delivered: %s", err.str())

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        produce_waiting(self.producer, topic, value, key, headers)
        self.producer.poll(0)  # serve delivery reports as we go, so they never fill the queue

    def flush(self, timeout_s: float) -> None:
        self.producer.flush(timeout_s)

    def receive(self, timeout_s: float) -> list[Reply]:
        with self._lock:
            messages = self.consumer.consume(500, 0)
            if not messages:
                first = self.consumer.poll(timeout_s)
                messages = [] if first is None else [first] + self.consumer.consume(499, 0)
        return [Reply(m.value(), tuple((k, v or b"") for k, v in m.headers() or ()))
                for m in messages if m.error() is None and m.value() is not None]

    def close(self) -> None:
        self.producer.flush(5)
        with self._lock:
            self.consumer.close()


__all__ = ["KAFKA_PYTHON_TO_LIBRDKAFKA", "LibrdkafkaChannel", "LibrdkafkaTransport", "consumer_config", "producer_config",
           "translate_options"]
