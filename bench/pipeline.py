"""Pipeline benchmark: is the worker the bottleneck, or the model?

One run, one Tansu broker, the same pre-loaded messages for every Kafka contender:

1. ``worker``: ``poolworker run`` (a subprocess, no cache) serving a near-free model, a random
   one-layer BERT with hidden 32 (``bench/models.tiny_bert``, MiniLM's tokenizer), over
   ``--docs`` one-document ``embed`` requests of short real texts (the first line of each corpus
   docstring); docs/s from the first result to the last (the results' broker timestamps), so
   process start and group join do not count;
2. ``engine``: ``Engine.embed`` on the same model and texts, in this process: the ceiling;
3. ``relay``: a plain kafka-python consume → produce loop (JSON in, a 32-float JSON result out,
   acks=all, idempotent, commit after flush) on the same broker and messages: what any Python
   Kafka service on this machine can move with no work at all;
4. the worker with ``--processes`` 1 and 2;
5. the worker with the bundled MiniLM against ``Engine.embed`` on the same texts (``--minilm-docs``),
   on kafka-python and, when confluent-kafka is installed, on librdkafka (``--transport
   kafka-librdkafka``: its client's idle fetching costs the model's forwards less CPU).

After each Kafka contender's throughput run, ``--latency-n`` requests are sent at a steady
``--latency-rate`` (MiniLM: a third as many at 25/s, under what it answers one at a time on two
cores): latency is the result's CreateTime minus the request's send time (one host clock), so it
is the per-request cost on an idle pipeline, not time spent queued behind the pre-loaded backlog.
Writes ``pipeline.json`` and ``pipeline.png`` to ``--out`` and prints a Markdown table. Only
ratios from one run mean anything on a shared machine.

Usage: python bench/pipeline.py [--docs 20000] [--minilm-docs 2000] [--processes 1,2] [--smoke]
       or: poolworker bench --pipeline [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):  # bench.* and the real-process helpers of the reliability tests
    if str(_path) not in sys.path:
        sys.path.append(str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from reliability.procs import ProcessPool, TopicReader, produce

DEFAULT_OUT = ROOT / "bench" / "out"
RELAY_DIMS = 32


@dataclass(frozen=True)
class Sizes:
    """How big a run is; ``smoke`` is the size a test can afford."""

    docs: int = 20_000
    minilm_docs: int = 2_000
    processes: tuple[int, ...] = (1, 2)
    partitions: int = 6
    latency_n: int = 300
    latency_rate: float = 100.0
    # MiniLM answers one short text in ~10-16 ms on 2 cores: at 100 requests/s its forwards are
    # saturated and the probe measures queueing (p50 28-74 ms from run to run), not the idle pipeline
    minilm_latency_rate: float = 25.0
    timeout_s: float = 600.0
    # Tansu holds a group's first JoinGroup for half the session timeout: 5 s is long enough for
    # every child of a pool to join generation 1, so no rebalance lands inside the measurement.
    session_timeout_ms: int = 10_000

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(docs=400, minilm_docs=32, partitions=4, latency_n=20, latency_rate=200.0, timeout_s=120.0, session_timeout_ms=4_000)

    def group_options(self) -> dict[str, int]:
        """Consumer settings the relay and the workers share: the group's timings, and the fetch
        wait a consumer of the local Tansu broker needs."""
        from poolworker.broker import FETCH_MAX_WAIT_MS

        return {"session_timeout_ms": self.session_timeout_ms, "heartbeat_interval_ms": max(100, self.session_timeout_ms // 10),
                "fetch_max_wait_ms": FETCH_MAX_WAIT_MS}


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def short_texts(corpus: list[str], n: int) -> list[str]:
    """``n`` short real texts: the first non-empty line of each docstring, cycled with a round
    number appended past the corpus's end so that every text is distinct (a cache never helps)."""
    firsts = (next((ln.strip() for ln in t.splitlines() if ln.strip()), "") for t in corpus)
    lines = [ln for ln in dict.fromkeys(firsts) if ln]  # some docstrings share a first line
    return [lines[i % len(lines)] + (f" ({i // len(lines)})" if i >= len(lines) else "") for i in range(n)]


def embed_requests(texts: list[str], model: str, prefix: str = "r") -> list[tuple[bytes, bytes]]:
    """One ``embed`` request per text, keyed by its index (so they spread over partitions)."""
    return [(f"{prefix}{i}".encode(), json.dumps({"request_id": f"{prefix}{i}", "task": "embed", "model": model, "input": t,
                                                 "truncate_prompt_tokens": -1}).encode())
            for i, t in enumerate(texts)]


def new_topic(bootstrap: str, name: str, partitions: int) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def preload(bootstrap: str, messages: list[tuple[bytes, bytes]], partitions: int) -> str:
    """A fresh topic holding every request (acked) before its contender starts: each contender
    reads its own copy of the same messages, so one's latency probes never reach another."""
    topic = new_topic(bootstrap, f"pipe{uuid.uuid4().hex[:8]}.requests", partitions)
    produce(bootstrap, topic, messages, batch_size=256 * 1024)
    return topic


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
def throughput(timestamps_ms: list[int], started_ms: float) -> dict:
    """docs/s from ``started_ms`` (the contender owns its partitions; start-up and group join
    are over) to the last result. First-to-last result (``n - 1`` intervals) is reported too,
    but it leaves out the first batch, which is most of a short run: 32 MiniLM requests come
    out of one batch within a few ms of each other."""
    first, last = min(timestamps_ms), max(timestamps_ms)
    seconds = max(last - started_ms, 1) / 1000
    between = max(last - first, 1) / 1000
    return {"docs": len(timestamps_ms), "seconds": seconds, "docs_per_s": len(timestamps_ms) / seconds,
            "first_to_last_s": between, "first_to_last_docs_per_s": (len(timestamps_ms) - 1) / between}


def percentiles(values_ms: list[float]) -> dict:
    """p50 / p99 / max of latencies in ms (``statistics.quantiles``, inclusive method)."""
    if len(values_ms) < 2:
        return {"n": len(values_ms), "p50_ms": values_ms[0] if values_ms else None, "p99_ms": values_ms[0] if values_ms else None}
    cuts = statistics.quantiles(values_ms, n=100, method="inclusive")
    return {"n": len(values_ms), "p50_ms": cuts[49], "p99_ms": cuts[98], "max_ms": max(values_ms)}


def collect(reader: TopicReader, n: int, timeout_s: float, alive: Callable[[], bool]) -> list:
    """Poll until ``n`` results have arrived; fails if the contender died or time ran out."""

    def done(records: list) -> bool:
        if not alive():
            raise RuntimeError(f"the contender stopped after {len(records)} of {n} results")
        return len(records) >= n

    if not reader.until(done, timeout_s):
        raise RuntimeError(f"{len(reader.records)} of {n} results after {timeout_s:.0f} s")
    return reader.records[:n]


def latency_probe(bootstrap: str, topic: str, reader: TopicReader, model: str, texts: list[str], rate: float, timeout_s: float) -> dict:
    """Send ``texts`` one by one at ``rate``/s to an idle contender; latency = the result's
    CreateTime minus the send time (both this host's clock)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    before = len(reader.records)
    sent: dict[str, float] = {}
    try:
        start = time.monotonic()
        for i, (key, value) in enumerate(embed_requests(texts, model, prefix="lat")):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[key.decode()] = time.time() * 1000
            producer.send(topic, key=key, value=value)
            reader.poll(0)
        producer.flush()
    finally:
        producer.close()
    reader.until(lambda records: len(records) - before >= len(texts), timeout_s)
    latencies = [r.timestamp - sent[rid] for r in reader.records[before:] if (rid := json.loads(r.value)["request_id"]) in sent]
    return percentiles(latencies)


def summarize(records: list, n: int, started_ms: float) -> dict:
    """Throughput of the first ``n`` results, plus the checks that make it a fair number: every
    request answered exactly once, without errors."""
    bodies = [json.loads(r.value) for r in records]
    out = throughput([r.timestamp for r in records], started_ms)
    out["distinct_request_ids"] = len({b["request_id"] for b in bodies})
    out["errors"] = sum(1 for b in bodies if b.get("error"))
    if out["distinct_request_ids"] != n or out["errors"]:
        first = next((b["error"] for b in bodies if b.get("error")), None)
        raise RuntimeError(f"{out['distinct_request_ids']} distinct answers of {n}, {out['errors']} errors (first: {first}): not a valid run")
    return out


# ----------------------------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------------------------
def relay_main(bootstrap: str, source: str, sink: str, group: str, group_options: dict, stop, assigned_at) -> None:
    """The plain relay (a child process): poll, parse, answer with a 32-float vector, flush,
    commit. No batching, no validation, no model: the floor of a Python Kafka service. Its
    kafka-python clients get the worker's own consumer and producer settings (fetch wait, poll
    size, acks, idempotence, linger, batch size), so the ratio measures the worker's path, not a
    tuning difference. ``assigned_at`` receives the epoch ms at which it first owned partitions."""
    from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer

    from poolworker.config import WorkerSettings

    class Assigned(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            pass

        def on_partitions_assigned(self, assigned) -> None:
            if assigned and not assigned_at.value:
                assigned_at.value = time.time() * 1000

    settings = WorkerSettings(bootstrap_servers=bootstrap, group_id=group, models=[], **group_options)
    consumer = KafkaConsumer(**settings.consumer_options())
    consumer.subscribe([source], listener=Assigned())
    producer = KafkaProducer(**settings.producer_options())
    vector = [((i * 7919) % 1000) / 1000 - 0.5 for i in range(RELAY_DIMS)]
    try:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    request = json.loads(record.value)
                    body = {"request_id": request["request_id"], "object": "list", "model": request.get("model"),
                            "data": [{"object": "embedding", "index": 0, "embedding": vector}], "error": None}
                    producer.send(sink, key=record.key, value=json.dumps(body).encode())
            if batches:
                producer.flush()
                consumer.commit()
    finally:
        producer.close()
        consumer.close()


@contextmanager
def relay_process(bootstrap: str, requests_topic: str, sink: str, group_options: dict):
    """The relay in a child process while the block runs; yields (is_alive, the epoch ms at
    which it first owned partitions — read it after results arrived)."""
    from multiprocessing import get_context

    ctx = get_context("spawn")
    stop, assigned_at = ctx.Event(), ctx.Value("d", 0.0)
    process = ctx.Process(target=relay_main, args=(bootstrap, requests_topic, sink, f"relay{uuid.uuid4().hex[:8]}", group_options,
                                                   stop, assigned_at), name="relay")
    process.start()
    try:
        yield process.is_alive, assigned_at
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()


def run_relay(bootstrap: str, messages: list[tuple[bytes, bytes]], model: str, sizes: Sizes, probe_texts: list[str]) -> dict:
    """The relay in a child process, over its own copy of ``messages``."""
    n = len(messages)
    requests_topic = preload(bootstrap, messages, sizes.partitions)
    sink = new_topic(bootstrap, f"relay{uuid.uuid4().hex[:8]}.results", sizes.partitions)
    reader = TopicReader(bootstrap, sink)
    try:
        with relay_process(bootstrap, requests_topic, sink, sizes.group_options()) as (alive, assigned_at):
            result = summarize(collect(reader, n, sizes.timeout_s, alive), n, assigned_at.value)
            result["latency"] = latency_probe(bootstrap, requests_topic, reader, model, probe_texts, sizes.latency_rate, 60)
    finally:
        reader.close()
    return result


def run_worker(pool: ProcessPool, bootstrap: str, messages: list[tuple[bytes, bytes]], model: str, path: Path, processes: int,
               sizes: Sizes, probe_texts: list[str], transport: str = "kafka", latency_rate: float | None = None) -> dict:
    """``poolworker run --processes N --transport T`` (model ``path`` served as ``model``) over its
    own copy of ``messages``, with a fresh group and results topic."""
    n = len(messages)
    requests_topic = preload(bootstrap, messages, sizes.partitions)
    tag = uuid.uuid4().hex[:8]
    topics = {"requests_topic": requests_topic, "results_topic": new_topic(bootstrap, f"w{tag}.results", sizes.partitions),
              "dlq_topic": f"w{tag}.dlq", "group_id": f"w{tag}"}
    reader = TopicReader(bootstrap, topics["results_topic"])
    worker = pool.worker(bootstrap, topics, name=f"{model}-p{processes}-{transport}", models=[f"{model}={path}"],
                         processes=processes, partitions=sizes.partitions, transport=transport, **sizes.group_options())
    try:
        records = collect(reader, n, sizes.timeout_s, worker.alive)
        result = summarize(records, n, _first_assignment_ms(worker.log()))
        result["inference_seconds"] = _inference_seconds(worker.log())
        result["latency"] = latency_probe(bootstrap, requests_topic, reader, model, probe_texts, latency_rate or sizes.latency_rate, 60)
    finally:
        result_code = worker.stop(120)
        reader.close()
    result["exit_code"] = result_code
    result["assignments"] = _assignments(worker.log())
    result["processes"] = processes
    result["transport"] = transport
    result["threads"] = threads_per_process(processes)
    result["log"] = str(worker.log_path)
    return result


def _first_assignment_ms(log: str) -> float:
    """Epoch ms of the first non-empty partition assignment in a worker's log (logging's
    default asctime, this host's local time)."""
    import re

    match = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*partitions assigned: \[.+\]", log, re.MULTILINE)
    if match is None:
        raise RuntimeError("no partition assignment in the worker's log")
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) * 1000 + int(match.group(2))


def _assignments(log: str) -> dict[str, int]:
    """How many partition assignments each process logged: 1 each means no rebalance mid-run."""
    import re

    counts: dict[str, int] = {}
    for match in re.finditer(r"(?:\[(worker-\d+)\] )?\S+: partitions assigned: \[.+\]", log):
        counts[match.group(1) or "worker"] = counts.get(match.group(1) or "worker", 0) + 1
    return counts


def _inference_seconds(log: str) -> float | None:
    """Model time summed over every worker process (their metrics servers), if exposed."""
    import re
    import urllib.request

    from reliability.procs import metric_value

    total = None
    for port in set(re.findall(r"metrics on :(\d+)", log)):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                total = (total or 0.0) + metric_value(r.read().decode(), "poolworker_inference_seconds_sum")
        except OSError:
            return None
    return total


def run_engine(path: Path, texts: list[str], threads: int | None = None) -> dict:
    """``Engine.embed`` over all texts at once, after a warm-up: the worker's ceiling. With the
    engine's own thread count (as a one-process worker has), or ``threads`` (as each child of a
    pool has)."""
    import torch

    from poolworker import Engine
    from poolworker.engine.runner import configure_threads

    default = configure_threads()
    torch.set_num_threads(threads or default)
    try:
        engine = Engine(str(path))
        engine.embed(texts[:64], truncate_prompt_tokens=-1, use_tqdm=False)
        start = time.perf_counter()
        outs = engine.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(default)
    tokens = sum(o.num_prompt_tokens for o in outs)
    return {"docs": len(texts), "tokens": tokens, "seconds": seconds, "docs_per_s": len(texts) / seconds,
            "tokens_per_s": tokens / seconds, "threads": threads or default}


def threads_per_process(processes: int) -> int:
    """The intra-op threads each worker process runs with: the engine's default for one process,
    the supervisor's split for a pool (the user's OMP_NUM_THREADS wins in both)."""
    from poolworker.processes import thread_env, usable_cpus

    pinned = os.environ.get("OMP_NUM_THREADS")
    if pinned:
        return int(pinned)
    return usable_cpus() if processes == 1 else int(thread_env(processes, os.environ, usable_cpus())["OMP_NUM_THREADS"])


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def run_pipeline(sizes: Sizes = Sizes(), out_dir: str | Path = DEFAULT_OUT, log: Callable[[str], None] = print) -> dict:
    """Every contender in one run; writes ``pipeline.json`` and ``pipeline.png`` to ``out_dir``."""
    import torch

    from bench.engine_race import machine_info
    from bench.models import tiny_bert
    from poolworker.broker import start_local_broker
    from poolworker.corpus import find_corpus, find_minilm, load_texts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_texts(None, find_corpus())
    texts = short_texts(corpus, sizes.docs)
    probe = short_texts(corpus[::-1], sizes.latency_n)  # other texts than the throughput run's
    minilm = find_minilm()
    work = Path(tempfile.mkdtemp(prefix="pipeline-"))
    tiny = tiny_bert(work / "tiny-bert", minilm)
    results: dict = {"machine": machine_info(torch.device("cpu")), "sizes": dataclasses.asdict(sizes), "tiny": {}, "minilm": {},
                     "load_average": {"start": os.getloadavg()}}
    log(f"machine: {results['machine']['processor']} | {results['machine']['cpus']} cpus | {sizes.docs} tiny-model requests, "
        f"{sizes.minilm_docs} MiniLM requests, {sizes.partitions} partitions")
    broker = start_local_broker()
    pool = ProcessPool(out / "pipeline_logs")
    pool.tmp_path.mkdir(parents=True, exist_ok=True)
    try:
        bs = broker.bootstrap_servers
        messages = embed_requests(texts, "tiny")
        r = results["tiny"]
        r["relay"] = run_relay(bs, messages, "tiny", sizes, probe)
        log(_line("relay", r["relay"]))
        for n in sizes.processes:
            r[f"worker_p{n}"] = run_worker(pool, bs, messages, "tiny", tiny, n, sizes, probe)
            log(_line(f"worker --processes {n}", r[f"worker_p{n}"]))
        r["engine"] = run_engine(tiny, texts)
        log(_line("Engine.embed", r["engine"]))
        if max(sizes.processes) > 1:  # the ceiling of one child of the largest pool
            r["engine_pool_threads"] = run_engine(tiny, texts, threads_per_process(max(sizes.processes)))
            log(_line(f"Engine.embed, {r['engine_pool_threads']['threads']} thread(s)", r["engine_pool_threads"]))
        if sizes.minilm_docs:
            m = results["minilm"]
            mtexts = texts[: sizes.minilm_docs]
            before = run_engine(minilm, mtexts)
            log(_line("MiniLM Engine.embed", before))
            workers = [("worker_p1", "kafka", "MiniLM worker")]
            if importlib.util.find_spec("confluent_kafka") is not None:  # the optional poolworker[librdkafka] extra
                workers.append(("worker_librdkafka_p1", "kafka-librdkafka", "MiniLM worker, librdkafka"))
            for key, transport, label in workers:
                m[key] = run_worker(pool, bs, embed_requests(mtexts, "minilm"), "minilm", minilm, 1, sizes,
                                    probe[: max(2, sizes.latency_n // 3)], transport=transport,
                                    latency_rate=sizes.minilm_latency_rate)
                log(_line(label, m[key]))
            after = run_engine(minilm, mtexts)
            log(_line("MiniLM Engine.embed", after))
            m["engine"] = bracketed(before, after)
    finally:
        pool.close()
        broker.stop()
    results["load_average"]["end"] = os.getloadavg()
    results["ratios"] = ratios(results)
    (out / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    chart = write_chart(results, out / "pipeline.png")
    results["files"] = [str(out / "pipeline.json")] + ([str(chart)] if chart else [])
    log("")
    log(format_table(results))
    return results


def bracketed(before: dict, after: dict) -> dict:
    """One baseline from the engine measured before and after the workers it is compared with:
    the mean rate, both runs kept. A 2,000-text MiniLM run lasts ~5 s, and on a shared VM the
    engine alone measured 409-464 docs/s in one session (one run each): a single baseline run
    moved the worker/engine ratio by as much as the gap being measured."""
    rates = [before["docs_per_s"], after["docs_per_s"]]
    return {**after, "docs_per_s": sum(rates) / 2, "seconds": (before["seconds"] + after["seconds"]) / 2, "runs_docs_per_s": rates}


def _line(name: str, row: dict) -> str:
    lat = row.get("latency")
    tail = f", latency p50/p99 {lat['p50_ms']:.0f}/{lat['p99_ms']:.0f} ms" if lat and lat.get("p50_ms") is not None else ""
    return f"  {name:<24} {row['docs_per_s']:9.0f} docs/s ({row['docs']} in {row['seconds']:.2f} s){tail}"


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------
def ratios(results: dict) -> dict[str, float]:
    """The headline numbers: each is a ratio of two contenders measured in the same run."""
    t, m = results["tiny"], results["minilm"]
    rate = {k: v["docs_per_s"] for k, v in t.items()}
    out: dict[str, float] = {}
    if "worker_p1" in rate:
        out["worker/relay"] = rate["worker_p1"] / rate["relay"]
        out["worker/engine"] = rate["worker_p1"] / rate["engine"]
    if "worker_p1" in rate and "worker_p2" in rate:
        out["2 procs/1 proc"] = rate["worker_p2"] / rate["worker_p1"]
        out["worker 2 procs/relay"] = rate["worker_p2"] / rate["relay"]
    if m:
        out["minilm worker/engine"] = m["worker_p1"]["docs_per_s"] / m["engine"]["docs_per_s"]
        if "worker_librdkafka_p1" in m:
            out["minilm worker (librdkafka)/engine"] = m["worker_librdkafka_p1"]["docs_per_s"] / m["engine"]["docs_per_s"]
    return out


TABLE_HEADER = ["model", "contender", "threads", "docs", "seconds", "docs/s", "p50 ms", "p99 ms", "model busy"]


def contender_name(key: str, row: dict) -> str:
    if key == "relay":
        return "kafka-python relay"
    if key.startswith("engine"):
        return "Engine.embed"
    transport = row.get("transport", "kafka")
    return f"worker --processes {row['processes']}" + (f" --transport {transport}" if transport != "kafka" else "")


def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for model in ("tiny", "minilm"):
        for key, row in results[model].items():
            lat = row.get("latency") or {}
            busy = row.get("inference_seconds")
            rows.append([
                "tiny BERT (h32, 1 layer)" if model == "tiny" else "all-MiniLM-L6-v2",
                contender_name(key, row),
                str(row.get("threads", "")),
                str(row["docs"]),
                f"{row['seconds']:.2f}",
                f"{row['docs_per_s']:.0f}",
                f"{lat['p50_ms']:.1f}" if lat.get("p50_ms") is not None else "",
                f"{lat['p99_ms']:.1f}" if lat.get("p99_ms") is not None else "",
                f"{busy / row['processes'] / row['seconds']:.0%}" if busy is not None else "",
            ])
    return rows


def format_table(results: dict) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    lines.append("")
    lines += [f"- {name}: **{value:.2f}x**" for name, value in results["ratios"].items()]
    load = results.get("load_average")
    lines.append("\n(docs/s: from owning partitions to the last result; threads: intra-op threads per process; model busy: "
                 "the workers' inference seconds per process over that span; latency: one request at a time at a steady "
                 "rate, request sent -> result produced" + (f"; load average {load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end)"
                                                             if load and "end" in load else ")"))
    return "\n".join(lines)


def write_chart(results: dict, path: Path) -> Path | None:
    """docs/s per contender, one panel per model, each bar labelled with its rate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(model, results[model]) for model in ("tiny", "minilm") if results[model]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], panels):
        labels = [contender_name(k, row).replace(" --", "\n--") + (f"\n{row['threads']} thr" if "threads" in row else "") for k, row in rows.items()]
        values = [row["docs_per_s"] for row in rows.values()]
        bars = ax.bar(range(len(values)), values, color=["tab:gray" if k == "relay" else "tab:green" if k.startswith("engine") else "tab:blue" for k in rows])
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_ylabel("docs / s")
        ax.set_title("tiny BERT (hidden 32, 1 layer)" if model == "tiny" else "all-MiniLM-L6-v2", fontsize=9)
    m = results["machine"]
    fig.suptitle(f"pipeline: {m['processor']} ({m['cpus']} cpus), {m['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, not the speed")
    p.add_argument("--docs", type=int, help=f"tiny-model requests (default {Sizes.docs})")
    p.add_argument("--minilm-docs", type=int, help=f"MiniLM requests, 0 to skip (default {Sizes.minilm_docs})")
    p.add_argument("--processes", help="worker process counts to run, comma-separated (default 1,2)")
    p.add_argument("--partitions", type=int, help=f"partitions of the request topics (default {Sizes.partitions})")
    p.add_argument("--latency-n", type=int, help=f"latency requests per contender (default {Sizes.latency_n})")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    a = p.parse_args(argv)
    run_pipeline(sizes_from(a.smoke, docs=a.docs, minilm_docs=a.minilm_docs, processes=a.processes, partitions=a.partitions,
                            latency_n=a.latency_n), a.out)


def sizes_from(smoke: bool, **given) -> Sizes:
    """``Sizes`` (or the smoke sizes) with the options that were given."""
    base = Sizes.smoke() if smoke else Sizes()
    if isinstance(given.get("processes"), str):
        given["processes"] = tuple(int(x) for x in given["processes"].split(",") if x)
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


if __name__ == "__main__":
    main()
