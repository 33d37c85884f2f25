"""The Redis Streams peer of the reliability tests: a private redis-server, written and read with
redis-py alone (not the worker's transport), so the tests check the worker against Redis itself.

The server keeps its data on disk (``appendonly yes``, ``appendfsync always``: every write the
server acknowledged is on disk before the reply), so ``restart`` keeps the streams, the
consumer group, its pending entries and every XACK, as a production Redis with AOF would.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
from services import RedisServer

from poolworker.consumers.redis_streams import MAX_ENTRY_BYTES

from .peers import Reader, Received

DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


class StreamReader(Reader):
    """A stream from its first entry (plain XREAD, no group); entries come back as ``Received``
    (field ``value`` → value, ``key`` → key, the other fields → headers, in order). A server that
    is down reads as nothing: the position is kept."""

    def __init__(self, url: str, stream: str) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url, protocol=2, socket_timeout=10)
        self.client.set_response_callback("XREAD", lambda reply, **_: reply)  # the fields as sent, in order
        self.stream = stream
        self.last_id = "0-0"

    def fetch(self, timeout_s: float) -> list[Received]:
        try:
            reply = self.client.execute_command("XREAD", "COUNT", 1000, "BLOCK", max(1, int(timeout_s * 1000)),
                                                "STREAMS", self.stream, self.last_id)
        except redis.ConnectionError:
            time.sleep(timeout_s)
            return []
        if not reply:
            return []
        entries = reply[0][1]
        self.last_id = entries[-1][0].decode()
        return [_received(fields) for _id, fields in entries]

    def close(self) -> None:
        self.client.close()


def _received(fields: list[bytes]) -> Received:
    key = value = None
    headers: list[tuple[str, bytes]] = []
    for name, raw in zip(fields[::2], fields[1::2]):
        if name == b"value" and value is None:
            value = raw
        elif name == b"key" and key is None:
            key = raw
        else:
            headers.append((name.decode(), raw))
    return Received(value, key, headers)


class RedisStreamsPeer:
    """A private redis-server with AOF persistence on a free port, for ``--transport redis-streams``."""

    transport = "redis-streams"
    max_record_bytes = MAX_ENTRY_BYTES  # the worker's own cap on an entry (Redis takes far more)

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="peer-redis-"))
        self.server = RedisServer(self.workdir, *DURABLE)
        self.server.start()
        self.url = self.server.url()
        self.client = redis.Redis.from_url(self.url, protocol=2, socket_timeout=30)
        self._wait_loaded()

    def _wait_loaded(self, timeout_s: float = 30) -> None:
        """Until the server serves commands: it answers -LOADING while it replays the AOF."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client.ping()
                return
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def worker_settings(self) -> dict[str, Any]:
        return {"transport": self.transport, "transport_url": self.url}

    def create(self, topics: dict[str, str], partitions: int) -> None:
        """Nothing to create: the worker makes its group (at id 0) and XADD makes streams."""

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """XADD each (key, value); a None value is an entry without a ``value`` field (the Redis
        form of a tombstone). Every XADD has returned (the entry is on disk) when this returns."""
        pipe = self.client.pipeline(transaction=False)
        for queued, (key, value) in enumerate(messages, 1):
            fields: list[bytes | str] = []
            if value is not None:
                fields += ["value", value]
            if key is not None:
                fields += ["key", key]
            for name, raw in headers or ():
                fields += [name, raw]
            if not fields:
                fields = ["tombstone", b""]  # an entry needs one field; still no value
            pipe.execute_command("XADD", topic, "*", *fields)
            if queued % 500 == 0:
                pipe.execute()
        pipe.execute()

    def reader(self, topic: str) -> StreamReader:
        return StreamReader(self.url, topic)

    def unacknowledged(self, topics: dict[str, str]) -> int:
        """Entries of the requests stream the group has not XACKed: pending plus not yet read."""
        stream, group = topics["requests_topic"], topics["group_id"]
        if not self.client.exists(stream):
            return 0
        for info in self.client.xinfo_groups(stream):
            if info["name"].decode() == group:
                unread = info.get("lag")
                if unread is None:  # Redis cannot say after deletions: count past the last delivered id
                    unread = len(self.client.xrange(stream, min=f"({info['last-delivered-id'].decode()}", max="+"))
                return int(info["pending"]) + int(unread)
        return int(self.client.xlen(stream))  # no worker has created the group yet

    def restart(self, down_s: float = 0.0) -> None:
        """SIGTERM the server, wait ``down_s``, start it again on the same port and data."""
        self.client.close()
        self.server.stop()
        time.sleep(down_s)
        self.server.start()
        self._wait_loaded()

    def stop(self) -> None:
        self.client.close()
        self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_peer(broker) -> RedisStreamsPeer:
    """The peer for ``PEERS["redis-streams"]`` (``broker``, the session's Tansu, is not used)."""
    return RedisStreamsPeer()
