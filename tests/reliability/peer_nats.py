"""The NATS JetStream peer of the reliability tests: a private ``nats-server -js`` on a free port,
written and read with nats-py alone (not the worker's transport), so the tests check the worker
against JetStream itself.

The server stores streams on disk (``-sd``, file storage), so ``restart`` keeps the streams, the
durable consumer, its ack state and every stored message. Its ``max_payload`` is raised to 8 MiB
(the default is 1 MiB) so the hostile test can send its 4 MiB requests; the worker's results and
dead letters may then be as large.

The peer creates the streams under names of its own (``rel1.requests`` → ``rel1-requests``), not
the worker's derived ones: the worker must find an existing stream by the subject it captures.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.js import api

from poolworker.broker import free_port, stop_process, wait_for_port

from .peers import Reader, Received

NATS_SERVER = "/usr/sbin/nats-server"
MAX_PAYLOAD = 8 * 1024 * 1024
KEY_HEADER = "poolworker-key"  # the worker's documented key header (docs/transports/nats.md)


class _Loop:
    """An event loop on a thread: the peer's readers keep subscriptions between sync calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="peer-nats", daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class StreamReader(Reader):
    """A subject's stream from its first message, through a JetStream ordered consumer (it
    re-creates itself after a reconnect and never skips or repeats a message)."""

    def __init__(self, loop: _Loop, url: str, subject: str) -> None:
        super().__init__()
        self.io = loop
        self.arrived: list[Received] = []
        self.cond = threading.Condition()
        self.nc, self.sub = self.io.run(self._open(url, subject))

    async def _open(self, url: str, subject: str):
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL,
                                             cb=self._on_msg)
        return nc, sub

    async def _on_msg(self, msg) -> None:
        headers = dict(msg.headers or {})
        key = headers.pop(KEY_HEADER, None)
        with self.cond:
            self.arrived.append(Received(msg.data, key.encode() if key is not None else None,
                                         [(k, v.encode()) for k, v in headers.items()]))
            self.cond.notify_all()

    def fetch(self, timeout_s: float) -> list[Received]:
        with self.cond:
            if not self.arrived:
                self.cond.wait(timeout_s)
            out, self.arrived = self.arrived, []
        return out

    def close(self) -> None:
        self.io.run(self._close(), 15)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):  # the server may be gone already
            await self.sub.unsubscribe()
        await self.nc.close()


class NatsPeer:
    """A private nats-server with JetStream file storage, for ``--transport nats``."""

    transport = "nats"
    max_record_bytes = MAX_PAYLOAD

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="peer-nats-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        (self.workdir / "server.conf").write_text(f"max_payload: {MAX_PAYLOAD}\n")
        self.proc: subprocess.Popen | None = None
        self.io = _Loop()
        self._start()

    # -- the server ------------------------------------------------------------------------------
    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.workdir / "server.conf"), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.workdir / "store"), "-l", str(self.workdir / "server.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port, 15)
        deadline = time.monotonic() + 15
        while True:  # JetStream answers a moment after the port opens
            try:
                self._call(lambda js: js.account_info())
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _halt(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self._halt()
        time.sleep(down_s)
        self._start()

    def stop(self) -> None:
        self._halt()
        self.io.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- QueuePeer -------------------------------------------------------------------------------
    def worker_settings(self) -> dict[str, Any]:
        return {"transport": "nats", "transport_url": self.url}

    def _call(self, action, timeout_s: float = 60.0):
        """``action(js)`` on a fresh connection (the peer's calls outlive server restarts)."""
        async def run():
            nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=2)
            try:
                return await action(nc.jetstream(timeout=10))
            finally:
                await nc.close()
        return self.io.run(run(), timeout_s)

    def create(self, topics: dict[str, str], partitions: int) -> None:
        async def create(js):
            for role in ("requests_topic", "results_topic", "dlq_topic"):
                subject = topics[role]
                await js.add_stream(name=subject.replace(".", "-"), subjects=[subject], storage=api.StorageType.FILE)
        self._call(create)

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
                headers: list[tuple[str, bytes]] | None = None) -> None:
        base = {name: value.decode() for name, value in headers or ()}

        async def produce(js):
            for key, value in messages:
                hdrs = dict(base)
                if key is not None:
                    hdrs[KEY_HEADER] = key.decode()
                await js.publish(topic, value or b"", headers=hdrs or None)  # waits for the PubAck
        self._call(produce, 300)

    def reader(self, topic: str) -> Reader:
        return StreamReader(self.io, self.url, topic)

    def unacknowledged(self, topics: dict[str, str]) -> int:
        """The group's durable consumer: pending (not yet delivered) plus ack-pending messages;
        before the consumer exists, every message of the requests stream."""
        durable = topics["group_id"].replace(".", "_")

        async def count(js):
            stream = await js.find_stream_name_by_subject(topics["requests_topic"])
            try:
                info = await js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                return (await js.stream_info(stream)).state.messages
            return info.num_pending + info.num_ack_pending
        return self._call(count)


def start_peer(broker) -> NatsPeer:
    """The peer factory of ``peers.PEERS`` (``broker``, the session's Tansu, is not used)."""
    return NatsPeer()
