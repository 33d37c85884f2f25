"""Soak: N requests at a steady rate through a real worker process (Tansu broker, the bundled
MiniLM), measuring end-to-end latency (scheduled send -> result received by the client),
throughput, and the worker's RSS over time. Writes bench/out/soak.json and bench/out/soak.png.

Each request is one short text (a few words, unique, so the cache never answers); the rate
should sit below the machine's capacity (a soak measures steady state, not the ceiling).

Usage: python bench/soak.py [--requests 20000] [--rate 100] [--redis-url none] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reliability.procs import ProcessPool, TopicReader, create_topics

from poolworker.broker import start_local_broker


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run(n: int, rate: float, redis_url: str, out: Path) -> dict:
    from kafka import KafkaProducer

    out.mkdir(parents=True, exist_ok=True)
    broker = start_local_broker()
    pool = ProcessPool(out)
    try:
        tag = uuid.uuid4().hex[:8]
        topics = {"requests_topic": f"soak{tag}.requests", "results_topic": f"soak{tag}.results",
                  "dlq_topic": f"soak{tag}.dlq", "group_id": f"soak{tag}"}
        bs = broker.bootstrap_servers
        create_topics(bs, topics, partitions=3)
        worker = pool.worker(bs, topics, "soak-worker", redis_url=redis_url, max_wait_ms=5)
        worker.wait_for(r"partitions assigned: \[.+\]", 120)
        reader = TopicReader(bs, topics["results_topic"])
        producer = KafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=1)
        sent_at: dict[str, float] = {}
        start = time.monotonic() + 0.5

        def send() -> None:
            for i in range(n):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                rid = f"s{i}"
                sent_at[rid] = due  # latency counts from the schedule: a late sender is the system's delay too
                body = {"request_id": rid, "task": "embed", "model": "minilm", "input": f"soak document {i} of the stream"}
                producer.send(topics["requests_topic"], key=str(i).encode(), value=json.dumps(body).encode())
            producer.flush()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        latency: dict[str, float] = {}
        received: list[float] = []
        rss: list[tuple[float, float]] = []
        last_rss = 0.0
        deadline = start + n / rate + 300
        seen = 0
        while len(latency) < n and time.monotonic() < deadline:
            reader.poll(100)
            now = time.monotonic()
            for record in reader.records[seen:]:
                rid = json.loads(record.value)["request_id"]
                if rid not in latency and rid in sent_at:
                    latency[rid] = now - sent_at[rid]
                    received.append(now - start)
            seen = len(reader.records)
            if now - last_rss >= 1.0:
                rss.append((now - start, worker.rss_bytes() / 2**20))
                last_rss = now
        sender.join(30)
        elapsed = max(received) if received else float("nan")
        errors = sum(1 for r in reader.records if json.loads(r.value).get("error"))
        reader.close()
        producer.close()
        worker.stop()
    finally:
        pool.close()
        broker.stop()

    values = sorted(latency.values())
    per_second: dict[int, list[float]] = {}
    for rid, lat in latency.items():
        per_second.setdefault(int(sent_at[rid] - start), []).append(lat)
    result = {
        "requests": n, "rate_per_s": rate, "answered": len(latency), "errors": errors,
        "duration_s": round(elapsed, 1), "throughput_per_s": round(len(latency) / elapsed, 1),
        "latency_ms": {k: round(1000 * percentile(values, q), 1) for k, q in
                       (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))},
        "rss_mb": {"start": round(rss[0][1], 1) if rss else None, "max": round(max(r for _, r in rss), 1) if rss else None,
                   "end": round(rss[-1][1], 1) if rss else None},
        "rss_series": [(round(t, 1), round(r, 1)) for t, r in rss],
        "latency_p50_p99_per_s": [(s, round(1000 * percentile(sorted(v), 0.5), 1), round(1000 * percentile(sorted(v), 0.99), 1))
                                  for s, v in sorted(per_second.items())],
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "redis_url": redis_url,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    _chart(result, out / "soak.png")
    return result


def _chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    secs = [s for s, _, _ in result["latency_p50_p99_per_s"]]
    ax1.plot(secs, [p for _, p, _ in result["latency_p50_p99_per_s"]], label="p50")
    ax1.plot(secs, [p for _, _, p in result["latency_p50_p99_per_s"]], label="p99")
    ax1.set_ylabel("end-to-end latency (ms)")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.set_title(f"soak: {result['requests']} requests at {result['rate_per_s']:g}/s "
                  f"(p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms, "
                  f"{result['throughput_per_s']} req/s)")
    ax2.plot([t for t, _ in result["rss_series"]], [r for _, r in result["rss_series"]], color="tab:red")
    ax2.set_ylabel("worker RSS (MiB)")
    ax2.set_xlabel("seconds since the first send (latency by send second)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second, steady")
    parser.add_argument("--redis-url", default="none")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    result = run(args.requests, args.rate, args.redis_url, args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rss_series", "latency_p50_p99_per_s")}, indent=1))


if __name__ == "__main__":
    main()
