"""A plain fetch → publish → ack relay written with nats-py alone: the floor of a Python service
on NATS JetStream, next to the ``poolworker run --transport nats`` worker.

It does what bench/pipeline.py's Kafka relays do and nothing more: a durable pull consumer on
the requests stream, fetch a batch, parse each request's JSON, answer it with a 32-float JSON
result published to JetStream (``publish_async``, then wait for every PubAck), then ack the
batch. No model, no validation, no batching beyond the fetch. ``run_relay`` returns msgs/s from
the first fetched batch to the last ack.

bench/transports.py (``poolworker bench --transports``) runs it next to the worker.
"""

from __future__ import annotations

import asyncio
import json
import re
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
