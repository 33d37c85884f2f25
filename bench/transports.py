"""One row per transport: the worker (near-free tiny model) against a plain relay written with
that transport's own client, on the same pre-loaded requests, in the same run.

For each transport the queue comes from the reliability tests' peers (tests/reliability/
peers.py: the session's Tansu for both Kafka transports, a private redis-server and
nats-server for the others), so the benchmark and the reliability tests set queues up one way.
The relays are bench/pipeline.py's kafka-python relay and bench/relay_*.py; each reports msgs/s
from its first read to its last answer. The worker's docs/s is measured the same way from the
outside: from its first result to its ``n``-th, as the results are read back (the reader's own
cost is on the same 2 cores as the worker, so the worker's number is, if anything, low).

Usage: python bench/transports.py [--docs 20000] [--transports kafka,nats] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):  # bench.* and the reliability helpers (peers, process pool)
    if str(_path) not in sys.path:
        sys.path.append(str(_path))


def _names(prefix: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"requests_topic": f"{prefix}{tag}.requests", "results_topic": f"{prefix}{tag}.results",
            "dlq_topic": f"{prefix}{tag}.dlq", "group_id": f"{prefix}{tag}"}


def _servers(peer) -> str:
    settings = peer.worker_settings()
    return settings.get("transport_url") or settings["bootstrap_servers"]


def _relay(transport: str) -> Callable[[str, str, str, int], float]:
    """That transport's plain relay: (servers, requests, results, n) → msgs/s."""
    if transport == "kafka":
        from bench import pipeline

        def kafka_python(bootstrap: str, requests: str, results: str, n: int) -> float:
            return _kafka_python_relay(pipeline, bootstrap, requests, results, n)

        return kafka_python
    module = {"kafka-librdkafka": "relay_librdkafka", "redis-streams": "relay_redis_streams", "nats": "relay_nats"}[transport]
    return __import__(f"bench.{module}", fromlist=["run_relay"]).run_relay


def _kafka_python_relay(pipeline, bootstrap: str, requests: str, results: str, n: int) -> float:
    """pipeline.py's relay process over an already loaded topic, timed from its assignment."""
    from reliability.procs import TopicReader

    reader = TopicReader(bootstrap, results)
    try:
        with pipeline.relay_process(bootstrap, requests, results, pipeline.Sizes().group_options()) as (alive, assigned_at):
            return pipeline.summarize(pipeline.collect(reader, n, 600, alive), n, assigned_at.value)["docs_per_s"]
    finally:
        reader.close()


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by a worker process and by its children (the
    model process)."""
    import psutil

    proc = psutil.Process(pid)
    return sum(proc.cpu_times()[:2]), sum(sum(child.cpu_times()[:2]) for child in proc.children(recursive=True))


def _worker_rate(pool, peer, messages: list[tuple[bytes, bytes]], model_spec: str, timeout_s: float) -> dict:
    """A worker process over its own copy of ``messages``: docs/s while it answers them, from
    its own counter of answered requests (``poolworker_requests_total``, scraped every 50 ms:
    nothing reads the results meanwhile, so no reader competes with the worker for the CPU);
    then every request must be answered once and without error. Also the CPU the worker process
    and its model process spent per request over the same span: on a VM whose speed drifts from
    run to run, a steadier figure than docs/s (two workers' CPU per request compare in one run)."""
    import urllib.request

    from reliability.procs import metric_value

    n = len(messages)
    names = _names("w")
    peer.create(names, partitions=6)
    peer.produce(names["requests_topic"], messages)
    worker = pool.worker(peer.worker_settings().get("bootstrap_servers", "unused:9092"), names, name=f"bench-{peer.transport}",
                         models=[model_spec], partitions=6, **peer.worker_settings())
    try:
        url = f"http://127.0.0.1:{worker.metrics_port(120)}/metrics"
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + timeout_s
        while True:
            with urllib.request.urlopen(url, timeout=5) as reply:
                done = metric_value(reply.read().decode(), "poolworker_requests_total")
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done)
                cpu_first = _cpu_seconds(worker.pid)
            if done >= n:
                cpu_last = _cpu_seconds(worker.pid)
                break
            if not worker.alive() or now > deadline:
                raise RuntimeError(f"{done:.0f} of {n} answered; worker alive={worker.alive()}\n{worker.tail()}")
            time.sleep(0.05)
        reader = peer.reader(names["results_topic"])
        try:
            if not reader.until(lambda records: len(records) >= n, 120):
                raise RuntimeError(f"{len(reader.records)} of {n} results readable")
            bodies = [json.loads(r.value) for r in reader.records]
        finally:
            reader.close()
    finally:
        worker.stop(120)
    distinct = len({b["request_id"] for b in bodies})
    errors = sum(1 for b in bodies if b.get("error"))
    if distinct != n or errors:
        raise RuntimeError(f"{distinct} distinct answers of {n}, {errors} errors: not a valid run")
    seconds = max(now - first[0], 1e-3)
    answered = max(done - first[1], 1)
    return {"docs": n, "seconds": seconds, "docs_per_s": (done - first[1]) / seconds,
            "worker_cpu_us": (cpu_last[0] - cpu_first[0]) / answered * 1e6,
            "model_process_cpu_us": (cpu_last[1] - cpu_first[1]) / answered * 1e6}


def run_transports(transports: tuple[str, ...], docs: int, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """For each transport: its relay, then the worker, on one queue server; one JSON file."""
    from reliability.peers import start_peer
    from reliability.procs import ProcessPool

    from bench import pipeline
    from bench.models import tiny_bert
    from poolworker.broker import start_local_broker
    from poolworker.corpus import find_corpus, find_minilm, load_texts

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = pipeline.short_texts(load_texts(None, find_corpus()), docs)
    messages = pipeline.embed_requests(texts, "tiny")
    tiny = tiny_bert(out_dir / "tiny-bert", find_minilm())
    rows: dict[str, dict] = {}
    broker = start_local_broker()
    pool = ProcessPool(out_dir / "transport_logs")
    pool.tmp_path.mkdir(parents=True, exist_ok=True)
    try:
        for transport in transports:
            peer = start_peer(transport, broker)
            try:
                names = _names("r")
                peer.create(names, partitions=6)
                peer.produce(names["requests_topic"], messages)
                relay = _relay(transport)(_servers(peer), names["requests_topic"], names["results_topic"], len(messages))
                worker = _worker_rate(pool, peer, messages, f"tiny={tiny}", 600)
            finally:
                peer.stop()
            rows[transport] = {"relay_msgs_per_s": relay, "worker_docs_per_s": worker["docs_per_s"],
                               "worker/relay": worker["docs_per_s"] / relay, "worker_cpu_us": worker["worker_cpu_us"],
                               "model_process_cpu_us": worker["model_process_cpu_us"]}
            log(f"  {transport:17} relay {relay:8.0f} msgs/s   worker {worker['docs_per_s']:7.0f} docs/s   "
                f"worker/relay {rows[transport]['worker/relay']:.2f}x   CPU a request: worker process "
                f"{worker['worker_cpu_us']:.0f} us, model process {worker['model_process_cpu_us']:.0f} us")
    finally:
        pool.close()
        broker.stop()
    result = {"docs": docs, "rows": rows}
    if "kafka" in rows and "kafka-librdkafka" in rows:
        result["librdkafka/kafka-python worker"] = rows["kafka-librdkafka"]["worker_docs_per_s"] / rows["kafka"]["worker_docs_per_s"]
        result["kafka-python/librdkafka worker CPU a request"] = rows["kafka"]["worker_cpu_us"] / rows["kafka-librdkafka"]["worker_cpu_us"]
        log(f"  worker on librdkafka / on kafka-python: {result['librdkafka/kafka-python worker']:.2f}x "
            f"(worker-process CPU a request, kafka-python / librdkafka: {result['kafka-python/librdkafka worker CPU a request']:.2f}x)")
    (out_dir / "transports.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> None:
    from poolworker.consumers.transport import TRANSPORTS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20_000, help="one-document tiny-model requests per contender")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    a = p.parse_args(argv)
    run_transports(tuple(t for t in a.transports.split(",") if t), a.docs, a.out)


if __name__ == "__main__":
    main()
