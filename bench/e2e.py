"""End-to-end benchmark: the worker through Kafka + Redis vs the Engine alone vs a naive consumer.

All three run in this one process on the same machine and the same texts
(``../shared/corpus/docstrings.jsonl``); only ratios between them are reported as results.

- engine: ``Engine.embed`` over all texts at once (the ceiling for the worker);
- worker: N requests (one document each, like a stream) are produced to a fresh topic first,
  then a worker (Tansu broker, a private Redis, cold cache) serves them; the time runs from the
  moment it owns its partitions to the broker timestamp of the last result;
- naive: a kafka-python consumer that calls ``SentenceTransformer.encode`` per message and
  produces each result (the obvious way to build this), over a smaller sample.

Usage: python bench/e2e.py [--docs 2000] [--naive-docs 300] [--out bench/out/e2e.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
import uuid
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CORPUS = ROOT.parent / "shared" / "corpus" / "docstrings.jsonl"


def load_texts(n: int) -> list[str]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line, _ in zip(f, range(n))]


def bench_engine(engine, texts: list[str]) -> dict:
    engine.embed(texts[:64], truncate_prompt_tokens=-1, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    out = engine.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(o.num_prompt_tokens for o in out)
    return {"docs": len(texts), "tokens": tokens, "seconds": elapsed, "docs_per_s": len(texts) / elapsed, "tokens_per_s": tokens / elapsed}


def bench_worker(engine, texts: list[str], broker, redis_url: str) -> dict:
    from streaming import produce, read_topic, worker_settings

    from poolworker.cache import make_cache
    from poolworker.metrics import Metrics
    from poolworker.worker import Worker

    settings = worker_settings(broker, redis_url=redis_url, partitions=6)
    from poolworker.consumers.topics import ensure_topics

    ensure_topics(settings.admin_options(), [settings.requests_topic, settings.results_topic, settings.dlq_topic],
                  partitions=6, replication_factor=1)
    produce(broker.bootstrap_servers, settings.requests_topic, [
        (f"doc-{i}".encode(), json.dumps({"request_id": f"r{i}", "task": "embed", "input": t, "truncate_prompt_tokens": -1}).encode())
        for i, t in enumerate(texts)
    ])
    metrics = Metrics()
    worker = Worker(settings, engines={"minilm": engine}, cache=make_cache(redis_url, metrics=metrics), metrics=metrics)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    while not worker.loop.ready():
        time.sleep(0.01)
    start_ms = time.time() * 1000
    # Wait on the worker's own counter (reading the results topic meanwhile would compete for
    # the two cores); then read everything once it is done.
    deadline = time.monotonic() + 1800
    while (metrics.registry.get_sample_value("poolworker_requests_total", {"model": "minilm", "task": "embed", "status": "ok"}) or 0) < len(texts):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    stop.set()
    thread.join(120)
    results = read_topic(broker.bootstrap_servers, settings.results_topic, len(texts), timeout_s=60)
    errors = sum(1 for r in results if json.loads(r.value)["error"])
    end_ms = max(r.timestamp for r in results)
    elapsed = (end_ms - start_ms) / 1000
    tokens = sum(json.loads(r.value)["usage"]["prompt_tokens"] for r in results)
    return {"docs": len(results), "errors": errors, "tokens": tokens, "seconds": elapsed,
            "docs_per_s": len(results) / elapsed, "tokens_per_s": tokens / elapsed,
            "cache_misses": metrics.registry.get_sample_value("poolworker_cache_misses_total"),
            "inference_seconds": metrics.registry.get_sample_value("poolworker_inference_seconds_sum", {"model": "minilm"}),
            "batches": metrics.registry.get_sample_value("poolworker_inference_seconds_count", {"model": "minilm"})}


def bench_naive(texts: list[str], broker, model_path: str) -> dict:
    """One SentenceTransformer.encode call per consumed message, one produce per result."""
    from kafka import KafkaConsumer, KafkaProducer
    from sentence_transformers import SentenceTransformer
    from streaming import produce

    topic, out_topic = f"naive{uuid.uuid4().hex[:8]}", f"naive{uuid.uuid4().hex[:8]}.out"
    produce(broker.bootstrap_servers, topic, [(None, json.dumps({"input": t}).encode()) for t in texts])
    st = SentenceTransformer(model_path, device="cpu")
    st.encode(["warm-up"])
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap_servers, group_id=f"naive{uuid.uuid4().hex[:6]}",
                             auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=4000,
                             heartbeat_interval_ms=500, enable_incremental_fetch_sessions=False)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
    done = 0
    start = None
    while done < len(texts):
        for records in consumer.poll(timeout_ms=200, max_records=1).values():
            for rec in records:
                start = start or time.perf_counter()
                vec = st.encode([json.loads(rec.value)["input"]])[0]
                producer.send(out_topic, value=json.dumps({"embedding": vec.tolist()}).encode()).get(30)
                consumer.commit()
                done += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    producer.close()
    return {"docs": done, "seconds": elapsed, "docs_per_s": done / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--naive-docs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "e2e.json")
    args = parser.parse_args()

    import torch
    from services import RedisServer

    from poolworker import Engine
    from poolworker.broker import start_local_broker

    texts = load_texts(args.docs)
    engine = Engine("all-MiniLM-L6-v2")
    broker = start_local_broker()
    redis_dir = Path(f"/tmp/poolworker-bench-{uuid.uuid4().hex[:6]}")
    redis_dir.mkdir()
    redis = RedisServer(redis_dir)
    redis.start()
    try:
        engine_run = bench_engine(engine, texts)
        print(f"engine alone: {engine_run['docs_per_s']:.1f} docs/s, {engine_run['tokens_per_s']:.0f} tokens/s", flush=True)
        worker_run = bench_worker(engine, texts, broker, redis.url())
        print(f"worker e2e:   {worker_run['docs_per_s']:.1f} docs/s, {worker_run['tokens_per_s']:.0f} tokens/s", flush=True)
        naive_run = bench_naive(texts[: args.naive_docs], broker, str(engine.model.path))
        print(f"naive:        {naive_run['docs_per_s']:.1f} docs/s", flush=True)
    finally:
        broker.stop()
        redis.stop()
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": "all-MiniLM-L6-v2",
        "engine": engine_run,
        "worker": worker_run,
        "naive": naive_run,
        "worker_vs_engine": worker_run["docs_per_s"] / engine_run["docs_per_s"],
        "worker_vs_naive": worker_run["docs_per_s"] / naive_run["docs_per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"worker/engine = {result['worker_vs_engine']:.2f}x (target >= 0.9), worker/naive = {result['worker_vs_naive']:.1f}x (target >= 5)")


if __name__ == "__main__":
    main()
