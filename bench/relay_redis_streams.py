"""A plain XREADGROUP → XADD → XACK relay written with redis-py alone: the floor of a Python
service on Redis Streams, next to bench/pipeline.py's kafka-python relay.

It does what that relay does and nothing more: read a batch as one consumer of a fresh group,
parse each request's JSON, answer it with a 32-float JSON result (the XADDs of a batch in one
pipelined round trip), then XACK the batch. No model, no validation, no batching beyond the
read. ``run_relay`` returns msgs/s from its first read to the last result written.

bench/transports.py (``poolworker bench --transports``) runs it next to the worker.
"""

from __future__ import annotations

import json
import time
import uuid

RELAY_DIMS = 32  # as bench/pipeline.py's relay
READ_BATCH = 500


def run_relay(url: str, requests_stream: str, results_stream: str, n: int, *, timeout_s: float = 300.0) -> float:
    """Relay the first ``n`` entries of ``requests_stream`` to ``results_stream``; msgs/s."""
    import redis

    client = redis.Redis.from_url(url, protocol=2)
    group = f"relay{uuid.uuid4().hex[:8]}"
    client.xgroup_create(requests_stream, group, id="0", mkstream=True)
    vector = [((i * 7919) % 1000) / 1000 - 0.5 for i in range(RELAY_DIMS)]
    relayed, started = 0, None
    deadline = time.monotonic() + timeout_s
    try:
        while relayed < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay: {relayed} of {n} results after {timeout_s:.0f} s")
            reply = client.xreadgroup(group, "relay", {requests_stream: ">"}, count=READ_BATCH, block=100)
            if started is None:
                started = time.monotonic()
            if not reply:
                continue
            batch = reply[0][1]
            pipe = client.pipeline(transaction=False)
            for _id, fields in batch:
                request = json.loads(fields[b"value"])
                body = {"request_id": request["request_id"], "object": "list", "model": request.get("model"),
                        "data": [{"object": "embedding", "index": 0, "embedding": vector}], "error": None}
                result = {"value": json.dumps(body).encode()}
                if b"key" in fields:
                    result["key"] = fields[b"key"]
                pipe.xadd(results_stream, result)
            pipe.execute()  # every result written before its request is acknowledged
            client.xack(requests_stream, group, *[entry_id for entry_id, _ in batch])
            relayed += len(batch)
        return n / (time.monotonic() - started)
    finally:
        try:
            client.xgroup_destroy(requests_stream, group)
        finally:
            client.close()
