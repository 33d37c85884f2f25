"""A plain consume → produce relay written with confluent-kafka (librdkafka) alone: the floor of
a Python service on librdkafka, next to bench/pipeline.py's kafka-python relay.

It does what that relay does and nothing more: join a consumer group, take a batch, parse each
request's JSON, answer it with a 32-float JSON result (acks=all, idempotent), wait for the
broker's acks (``flush``), then commit the batch's offsets. No model, no validation, no
batching beyond the poll. ``run_relay`` returns msgs/s from the moment the relay owns its
partitions to the last acked result, so process start and group join do not count.

bench/transports.py (``poolworker bench --transports``) runs it next to the worker.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RELAY_DIMS = 32  # as bench/pipeline.py's relay
FETCH_WAIT_MAX_MS = 20  # Tansu answers a fetch only when this runs out (docs/transports/librdkafka.md)
POLL_BATCH = 500


def run_relay(bootstrap: str, requests_topic: str, results_topic: str, n: int, *, timeout_s: float = 300.0,
              group_options: dict | None = None) -> float:
    """Relay the first ``n`` records of ``requests_topic`` to ``results_topic``; msgs/s."""
    from confluent_kafka import Consumer, Producer

    assigned_at: list[float] = []

    def on_assign(consumer, partitions) -> None:
        if partitions and not assigned_at:
            assigned_at.append(time.monotonic())

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"relay{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": FETCH_WAIT_MAX_MS, "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 600, **(group_options or {})})
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    consumer.subscribe([requests_topic], on_assign=on_assign)
    vector = [((i * 7919) % 1000) / 1000 - 0.5 for i in range(RELAY_DIMS)]
    acked = 0

    def delivered(err, _msg) -> None:
        nonlocal acked
        if err is None:
            acked += 1

    deadline = time.monotonic() + timeout_s
    try:
        while acked < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay: {acked} of {n} results after {timeout_s:.0f} s")
            batch = [m for m in consumer.consume(POLL_BATCH, 0.1) if m.error() is None]
            for record in batch:
                request = json.loads(record.value())
                body = {"request_id": request["request_id"], "object": "list", "model": request.get("model"),
                        "data": [{"object": "embedding", "index": 0, "embedding": vector}], "error": None}
                while True:
                    try:
                        producer.produce(results_topic, json.dumps(body).encode(), record.key(), on_delivery=delivered)
                        break
                    except BufferError:  # the local queue is full: serve delivery reports, then retry
                        producer.poll(0.05)
            if batch:
                producer.flush()
                consumer.commit(asynchronous=False)
        return n / (time.monotonic() - assigned_at[0])
    finally:
        consumer.close()
        producer.flush(10)
