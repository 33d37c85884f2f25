"""A plain consume → produce relay written with confluent-kafka (librdkafka) alone: the floor of
a Python service on librdkafka, next to bench/pipeline.py's kafka-python relay.

It does what that relay does and nothing more: join a consumer group, take a batch, parse each
request's JSON, answer it with a 32-float JSON result (acks=all, idempotent), wait for the
broker's acks (``flush``), then commit the batch's offsets. No model, no validation, no
batching beyond the poll. ``run_relay`` returns msgs/s from the moment the relay owns its
partitions to the last acked result, so process start and group join do not count.

``compare`` (this file's command line) measures, in one run on one Tansu broker with the same
pre-loaded requests: this relay, bench/pipeline.py's kafka-python relay, and ``poolworker run``
serving pipeline.py's near-free tiny BERT on ``--transport kafka`` and ``kafka-librdkafka``
(pipeline.py's own measuring functions, imported).

Usage: python bench/relay_librdkafka.py [--docs 20000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
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


def _pool_class():
    """pipeline.py's process pool, with every worker on one transport (pipeline.py starts its
    workers with the default transport)."""
    from reliability.procs import ProcessPool

    @dataclass
    class TransportPool(ProcessPool):
        transport: str = "kafka"

        def worker(self, bootstrap, topics, name="worker", **settings):
            return super().worker(bootstrap, topics, f"{name}-{self.transport}", transport=self.transport, **settings)

    return TransportPool


def compare(docs: int = 20_000, out_dir: Path | None = None, log=print) -> dict:
    """The relays and the worker on both Kafka transports, one run, one broker."""
    from bench import pipeline
    from bench.models import tiny_bert
    from poolworker.broker import start_local_broker
    from poolworker.corpus import find_corpus, find_minilm, load_texts

    sizes = dataclasses.replace(pipeline.Sizes(), docs=docs, minilm_docs=0, processes=(1,))
    corpus = load_texts(None, find_corpus())
    texts = pipeline.short_texts(corpus, docs)
    probe = pipeline.short_texts(corpus[::-1], sizes.latency_n)
    tiny = tiny_bert(Path(tempfile.mkdtemp(prefix="relay-librdkafka-")) / "tiny-bert", find_minilm())
    messages = pipeline.embed_requests(texts, "tiny")
    out = Path(out_dir or pipeline.DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    broker = start_local_broker()
    rows: dict = {}
    try:
        bs = broker.bootstrap_servers
        source = pipeline.preload(bs, messages, sizes.partitions)
        sink = pipeline.new_topic(bs, f"rrelay{uuid.uuid4().hex[:8]}.results", sizes.partitions)
        rows["librdkafka relay"] = {"docs_per_s": run_relay(bs, source, sink, docs, group_options={
            k.replace("_", "."): v for k, v in sizes.group_options().items()})}  # session_timeout_ms → session.timeout.ms
        log(f"  librdkafka relay          {rows['librdkafka relay']['docs_per_s']:9.0f} msgs/s")
        rows["kafka-python relay"] = pipeline.run_relay(bs, messages, "tiny", sizes, probe)
        log(pipeline._line("kafka-python relay", rows["kafka-python relay"]))
        for transport in ("kafka", "kafka-librdkafka"):
            pool = _pool_class()(out / "relay_librdkafka_logs", transport=transport)
            pool.tmp_path.mkdir(parents=True, exist_ok=True)
            try:
                rows[f"worker {transport}"] = pipeline.run_worker(pool, bs, messages, "tiny", tiny, 1, sizes, probe)
            finally:
                pool.close()
            log(pipeline._line(f"worker {transport}", rows[f"worker {transport}"]))
    finally:
        broker.stop()
    ratio = rows["worker kafka-librdkafka"]["docs_per_s"] / rows["worker kafka"]["docs_per_s"]
    result = {"docs": docs, "rows": rows, "librdkafka/kafka-python worker": ratio}
    (out / "relay_librdkafka.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"worker kafka-librdkafka / worker kafka: {ratio:.2f}x")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20_000, help="one-document tiny-model requests per contender")
    p.add_argument("--out", type=Path, default=None, help="where relay_librdkafka.json goes (default bench/out)")
    a = p.parse_args(argv)
    for path in (ROOT, ROOT / "tests"):  # bench.* and the real-process helpers of the reliability tests
        if str(path) not in sys.path:
            sys.path.append(str(path))
    compare(a.docs, a.out)


if __name__ == "__main__":
    main()
