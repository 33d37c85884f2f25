"""A plain fetch → publish → ack relay written with nats-py alone: the floor of a Python service
on NATS JetStream, next to the ``poolworker run --transport nats`` worker.

It does what bench/pipeline.py's Kafka relays do and nothing more: a durable pull consumer on
the requests stream, fetch a batch, parse each request's JSON, answer it with a 32-float JSON
result published to JetStream (``publish_async``, then wait for every PubAck), then ack the
batch. No model, no validation, no batching beyond the fetch. ``run_relay`` returns msgs/s from
the first fetched batch to the last ack.

``compare`` (this file's command line) measures, in one run on one private nats-server with the
same pre-loaded requests: this relay, and ``poolworker run --transport nats`` serving
pipeline.py's near-free tiny BERT (so the worker's own path is what is measured).

Usage: python bench/relay_nats.py [--docs 20000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RELAY_DIMS = 32  # as bench/pipeline.py's relays
FETCH_BATCH = 500
NATS_SERVER = "/usr/sbin/nats-server"


async def _stream_for(js, subject: str) -> str:
    """The stream capturing ``subject``, created (file storage) when there is none."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    try:
        return await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        name = re.sub(r"[.*>\s]", "_", subject)
        await js.add_stream(name=name, subjects=[subject], storage=api.StorageType.FILE)
        return name


async def _relay(url: str, requests_subject: str, results_subject: str, n: int, timeout_s: float) -> float:
    import nats
    from nats.js import api

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream = await _stream_for(js, requests_subject)
        await _stream_for(js, results_subject)
        durable = f"relay{uuid.uuid4().hex[:8]}"
        await js.add_consumer(stream, api.ConsumerConfig(durable_name=durable, filter_subject=requests_subject,
                                                         ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1))
        sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        vector = [((i * 7919) % 1000) / 1000 - 0.5 for i in range(RELAY_DIMS)]
        done, started = 0, None
        deadline = time.monotonic() + timeout_s
        while done < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay: {done} of {n} results after {timeout_s:.0f} s")
            try:
                batch = await sub.fetch(FETCH_BATCH, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            started = started or time.monotonic()
            acks = []
            for msg in batch:
                request = json.loads(msg.data)
                body = {"request_id": request["request_id"], "object": "list", "model": request.get("model"),
                        "data": [{"object": "embedding", "index": 0, "embedding": vector}], "error": None}
                acks.append(await js.publish_async(results_subject, json.dumps(body).encode(), headers=msg.headers))
            await asyncio.gather(*acks)  # every result stored before any request is acked
            for msg in batch:
                await msg.ack()
            done += len(batch)
        await nc.flush()
        return n / (time.monotonic() - started)
    finally:
        await nc.close()


def run_relay(url: str, requests_subject: str, results_subject: str, n: int, *, timeout_s: float = 300.0) -> float:
    """Relay the first ``n`` messages of ``requests_subject`` to ``results_subject``; msgs/s."""
    return asyncio.run(_relay(url, requests_subject, results_subject, n, timeout_s))


# ------------------------------------------------------------------------------------------------
# One run: the relay and the worker on one private server
# ------------------------------------------------------------------------------------------------
async def _preload(url: str, subject: str, messages: list[tuple[bytes, bytes]]) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await _stream_for(js, subject)
        for start in range(0, len(messages), 1000):
            await asyncio.gather(*[await js.publish_async(subject, value, headers={"poolworker-key": key.decode()})
                                   for key, value in messages[start:start + 1000]])
    finally:
        await nc.close()


async def _stored(url: str, subject: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return (await js.stream_info(await js.find_stream_name_by_subject(subject))).state.messages
    finally:
        await nc.close()


def _log_time_ms(log: str, pattern: str) -> float:
    """Epoch ms of the first log line matching ``pattern`` (logging's default asctime, local time)."""
    match = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*" + pattern, log, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in the worker's log")
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) * 1000 + int(match.group(2))


def run_worker(pool, url: str, messages: list[tuple[bytes, bytes]], model: str, path: Path, timeout_s: float = 600) -> dict:
    """``poolworker run --transport nats`` over its own copy of ``messages``; docs/s from the
    moment it consumes to the moment the results stream holds all ``n`` results."""
    n = len(messages)
    tag = uuid.uuid4().hex[:8]
    topics = {"requests_topic": f"w{tag}.requests", "results_topic": f"w{tag}.results", "dlq_topic": f"w{tag}.dlq",
              "group_id": f"w{tag}"}
    asyncio.run(_preload(url, topics["requests_topic"], messages))
    worker = pool.worker("unused:9092", topics, name=f"nats-{model}", models=[f"{model}={path}"], transport="nats",
                         transport_url=url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if asyncio.run(_stored(url, topics["results_topic"])) >= n:
                    break
            except Exception:  # noqa: BLE001, S110 - the worker has not created the results stream yet
                pass
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the nats worker stopped or stalled\n{worker.tail()}")
            time.sleep(0.05)
        finished_ms = time.time() * 1000
    finally:
        worker.stop(120)
    seconds = (finished_ms - _log_time_ms(worker.log(), "nats: consuming")) / 1000
    return {"docs": n, "seconds": seconds, "docs_per_s": n / seconds, "log": str(worker.log_path)}


def compare(docs: int = 20_000, out_dir: Path | None = None, log=print) -> dict:
    """The nats-py relay and the nats worker, one run, one private nats-server."""
    from reliability.procs import ProcessPool

    from bench import pipeline
    from bench.models import tiny_bert
    from poolworker.broker import free_port, wait_for_port
    from poolworker.corpus import find_corpus, find_minilm, load_texts

    texts = pipeline.short_texts(load_texts(None, find_corpus()), docs)
    messages = pipeline.embed_requests(texts, "tiny")
    work = Path(tempfile.mkdtemp(prefix="relay-nats-"))
    tiny = tiny_bert(work / "tiny-bert", find_minilm())
    out = Path(out_dir or pipeline.DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(work / "store")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    rows: dict = {}
    try:
        wait_for_port("127.0.0.1", port, 10)
        source = f"relay{uuid.uuid4().hex[:8]}.requests"
        asyncio.run(_preload(url, source, messages))
        rows["nats-py relay"] = {"docs_per_s": run_relay(url, source, f"{source}.results", docs)}
        log(f"  nats-py relay     {rows['nats-py relay']['docs_per_s']:9.0f} msgs/s")
        pool = ProcessPool(out / "relay_nats_logs")
        pool.tmp_path.mkdir(parents=True, exist_ok=True)
        try:
            rows["worker nats"] = run_worker(pool, url, messages, "tiny", tiny)
        finally:
            pool.close()
        log(f"  worker nats       {rows['worker nats']['docs_per_s']:9.0f} docs/s")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    result = {"docs": docs, "rows": rows,
              "worker/relay": rows["worker nats"]["docs_per_s"] / rows["nats-py relay"]["docs_per_s"]}
    (out / "relay_nats.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=20_000, help="one-document tiny-model requests per contender")
    p.add_argument("--out", type=Path, default=None, help="where relay_nats.json goes (default bench/out)")
    a = p.parse_args(argv)
    for path in (ROOT, ROOT / "tests"):  # bench.* and the real-process helpers of the reliability tests
        if str(path) not in sys.path:
            sys.path.append(str(path))
    compare(a.docs, a.out)


if __name__ == "__main__":
    main()
