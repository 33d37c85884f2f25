"""The ``nats`` transport: NATS JetStream through nats-py.

Layout (docs/transports/nats.md): the requests, results and DLQ subjects are each captured by a
JetStream stream (an existing stream that captures the subject is used; else one named after the
subject, ``.``/``*``/``>`` → ``_``, file storage, is created). All workers share one durable pull
consumer named ``--group-id`` on the requests stream: explicit ack, ``ack_wait`` =
``redelivery_timeout_s``, no JetStream ``max_deliver`` limit (the worker's own rule dead-letters a
record handed out more than ``max_deliveries`` times — a server-side limit would instead park the
message silently after its last delivery). A request is acked only after its answer's publish
was acked by JetStream (the ``PubAck``); every message delivered to a worker and not yet acked
(being computed, queued, or buffered while paused) gets ``+WPI`` (in progress) every third of
``ack_wait``, so ``ack_wait`` bounds how long a *dead* worker holds a message, not how long a
live one may take.

nats-py is asyncio, the ``Transport`` interface is synchronous and called from two threads: one
event loop runs on a thread this transport owns, and the interface hands it work through
``asyncio.run_coroutine_threadsafe`` (waited on: poll, lag, start, close) or a batched
``call_soon_threadsafe`` (not waited on: produce, finish). ``on_acked``/``on_failed`` run on
the loop's thread.

NATS messages have no key: the key travels as the header ``poolworker-key`` (UTF-8 text) or
``poolworker-key-b64`` (any other bytes, base64). Header values are UTF-8 text on NATS; headers
whose names start with ``Nats-`` are JetStream's controls and are never copied onto a record we
publish (a copied ``Nats-Expected-Stream`` would make the DLQ publish fail forever).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from ..cache import redact_url
from ..config import WorkerSettings
from ..work import Source
from .transport import (
    Headers,
    OnRevoked,
    Record,
    RecordTooLarge,
    Reply,
    TransportUnavailable,
)

log = logging.getLogger(__name__)

KEY_HEADER = "poolworker-key"
KEY_HEADER_B64 = "poolworker-key-b64"
CONNECT_TIMEOUT_S = 10.0  # the whole first connection (every retry included) before start gives up
RECONNECT_WAIT_S = 0.5
API_TIMEOUT_S = 5.0  # JetStream API calls and PubAcks
CLOSE_TIMEOUT_S = 10.0
PULL_EXPIRES_S = 1.0  # a pull request outlives the poll that sent it; its messages are buffered
FAILURE_LOG_INTERVAL_S = 5.0
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_IN_NAMES = re.compile(r"[.*>\s/\\]")


# ------------------------------------------------------------------------------------------------
# Names, URLs, headers
# ------------------------------------------------------------------------------------------------
def stream_name(subject: str) -> str:
    """The stream created for ``subject`` when none captures it: ``poolworker.requests`` →
    ``poolworker_requests`` (stream and consumer names may not hold ``.``, ``*``, ``>``,
    whitespace or path separators)."""
    return _NOT_IN_NAMES.sub("_", subject)


def server_urls(url: str | None) -> list[str]:
    """The server list of ``--transport-url`` (comma-separated for a cluster), checked here so a
    bad URL fails at start with what to write instead."""
    if not url:
        raise ValueError("--transport nats needs --transport-url nats://HOST:PORT "
                         "(nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT with auth)")
    urls = [u.strip() for u in url.split(",") if u.strip()]
    for one in urls:
        parts = urlsplit(one)
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ValueError(f"--transport-url {redact_url(one)!r} is not a NATS URL: expected nats://HOST:PORT")
    return urls


def nats_headers(key: bytes | None, headers: Headers) -> dict[str, str] | None:
    """Our (name, bytes) headers and key as NATS headers (text values; see the module docstring)."""
    out: dict[str, str] = {}
    for name, raw in headers:
        if name.lower().startswith("nats-") or name in (KEY_HEADER, KEY_HEADER_B64) or not _HEADER_NAME.fullmatch(name):
            continue
        out[name] = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    if key is not None:
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text and text == text.strip() and "\r" not in text and "\n" not in text:
            out[KEY_HEADER] = text
        else:  # bytes a header value cannot carry as they are (binary, edge whitespace, empty)
            out[KEY_HEADER_B64] = base64.b64encode(key).decode()
    return out or None


def headers_size(headers: dict[str, str] | None) -> int:
    """Bytes the header block takes on the wire (``NATS/1.0``, ``name: value`` lines, blank line):
    the server's ``max_payload`` counts it with the payload."""
    if not headers:
        return 0
    return 12 + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


def key_and_headers(headers: Mapping[str, str] | None) -> tuple[bytes | None, tuple[tuple[str, bytes], ...]]:
    """The record key and the remaining headers of a received NATS message."""
    if not headers:
        return None, ()
    key = None
    if KEY_HEADER_B64 in headers:
        try:
            key = base64.b64decode(headers[KEY_HEADER_B64], validate=True)
        except ValueError:
            key = headers[KEY_HEADER_B64].encode()
    elif KEY_HEADER in headers:
        key = headers[KEY_HEADER].encode()
    rest = tuple((k, v.encode()) for k, v in headers.items() if k not in (KEY_HEADER, KEY_HEADER_B64))
    return key, rest


# ------------------------------------------------------------------------------------------------
# The event loop thread
# ------------------------------------------------------------------------------------------------
class LoopThread:
    """One asyncio event loop on a daemon thread, and the two ways synchronous code reaches it:
    ``run`` (wait for a coroutine's result) and ``call`` (queue a plain function; calls made
    while the loop is busy share one wake-up, so thousands of acks cost one self-pipe write)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._woken = False

    def start(self) -> LoopThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        """The coroutine's result, waiting at most ``timeout_s`` (then it is cancelled)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._calls.append(fn)
            if self._woken:
                return
            self._woken = True
        self.loop.call_soon_threadsafe(self._run_calls)

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, collections.deque()
            self._woken = False
        for fn in calls:
            try:
                fn()
            except Exception:
                log.exception("nats: a queued call failed")

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class Throttled:
    """Logs a recurring failure at most once per interval (a server down for a minute must not
    write ten log lines a second)."""

    def __init__(self, interval_s: float = FAILURE_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last = 0.0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            log.warning(message, *args)


async def connect(urls: list[str], name: str, options: dict[str, Any] | None = None) -> nats.NATS:
    """A connection that reconnects forever once up; the first connection must succeed within
    ``CONNECT_TIMEOUT_S`` or ``TransportUnavailable`` says why (credentials never printed)."""
    shown = ", ".join(redact_url(u) for u in urls)
    last_error: list[BaseException] = []
    throttled = Throttled()

    async def on_error(exc: BaseException) -> None:
        last_error[:] = [exc]
        throttled.warning("nats %s: %s", shown, exc or type(exc).__name__)

    async def on_disconnected() -> None:
        if not client.is_closed:  # close() disconnects too
            log.warning("nats: disconnected from %s; reconnecting", shown)

    async def on_reconnected() -> None:
        log.info("nats: reconnected to %s", shown)

    settings = {"name": name, "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": RECONNECT_WAIT_S,
                "connect_timeout": 2, "error_cb": on_error, "disconnected_cb": on_disconnected,
                "reconnected_cb": on_reconnected, **(options or {})}
    client = nats.NATS()
    try:
        await asyncio.wait_for(client.connect(servers=urls, **settings), CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        cause = last_error[0] if last_error else exc
        with contextlib.suppress(Exception):
            await client.close()
        raise TransportUnavailable(f"cannot connect to NATS at {shown} within {CONNECT_TIMEOUT_S:.0f}s: "
                                   f"{type(cause).__name__} {cause}".rstrip()) from None
    return client


# ------------------------------------------------------------------------------------------------
# Streams and the consumer
# ------------------------------------------------------------------------------------------------
async def ensure_stream(js, subject: str, *, max_msgs: int | None = None) -> str:
    """The name of the stream capturing ``subject``, creating one (file storage) when none does."""
    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        pass
    except nats.js.errors.ServiceUnavailableError:
        raise TransportUnavailable("JetStream is not enabled on that NATS server (start nats-server with -js)") from None
    name = stream_name(subject)
    config = api.StreamConfig(name=name, subjects=[subject], storage=api.StorageType.FILE,
                              max_msgs=max_msgs if max_msgs is not None else -1)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        try:  # a worker starting at the same time created it first
            return await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            raise TransportUnavailable(f"cannot create stream {name!r} for subject {subject!r}: {exc.description} "
                                       f"(another stream of that name captures other subjects: create a stream for "
                                       f"{subject!r} yourself, under any name)") from None
    log.info("nats: created stream %s for subject %s", name, subject)
    return name


def consumer_config(settings: WorkerSettings) -> api.ConsumerConfig:
    """The shared durable pull consumer of the requests subject."""
    name = stream_name(settings.group_id)
    return api.ConsumerConfig(
        name=name, durable_name=name, filter_subject=settings.requests_topic,
        deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.redelivery_timeout_s,
        max_deliver=-1,  # the worker dead-letters past max_deliveries; JetStream must never drop first
        max_ack_pending=-1,  # each worker's max_inflight_requests bounds what it holds
    )


async def ensure_consumer(js, stream: str, config: api.ConsumerConfig) -> None:
    """Create the durable consumer, or bring an existing one's ack_wait/max_deliver/
    max_ack_pending to ``config`` (its subject filter cannot change: that is an error; its
    start — deliver policy and start sequence — is kept: JetStream cannot change it either)."""
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None:
        have = info.config
        if have.filter_subject not in (None, "", config.filter_subject):
            raise TransportUnavailable(f"consumer group {config.durable_name!r} of stream {stream!r} reads "
                                       f"{have.filter_subject!r}, not {config.filter_subject!r}: choose another --group-id")
        if (have.ack_wait, have.max_deliver, have.max_ack_pending) == (config.ack_wait, config.max_deliver, config.max_ack_pending):
            return
        log.info("nats: updating consumer %s (ack_wait %ss, max_deliver %s)", config.durable_name, config.ack_wait,
                 config.max_deliver)
        config = dataclasses.replace(config, deliver_policy=have.deliver_policy, opt_start_seq=have.opt_start_seq,
                                     opt_start_time=have.opt_start_time)
    await js.add_consumer(stream, config)


def resumed_config(config: api.ConsumerConfig, ack_floor: int) -> api.ConsumerConfig:
    """``config`` for a consumer made again after it was lost: it starts just above the group's
    last known ack floor (every message up to it was answered and acked), so what the group had
    answered is not served again, and nothing after it is skipped. Without a known floor it
    starts at the stream's first message, as a new group does."""
    if ack_floor <= 0:
        return config
    return dataclasses.replace(config, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=ack_floor + 1)


# ------------------------------------------------------------------------------------------------
# The worker side
# ------------------------------------------------------------------------------------------------
class Puller:
    """The receiving half of ``NatsTransport``, on the event loop: pull requests to the durable
    consumer, the messages they deliver, and the keep-alive of every message delivered and not
    yet acked.

    nats-py's ``fetch`` gives up on its own timer, and messages of a pull request that arrive
    after it did wait unseen in the subscription — no ``+WPI`` reaches them, so under load they
    were redelivered to another worker while this one still held them (duplicates). Here a
    callback takes every delivered message into ``delivered`` and ``inflight`` as it arrives,
    whenever that is; a pull request is open until the server ends it (its batch delivered, or
    a 404/408/409 status), and ``take`` only hands over what has arrived."""

    def __init__(self, nc: nats.NATS, stream: str, consumer: str, keepalive_s: float) -> None:
        self.nc = nc
        self.inflight: dict[int, Msg] = {}  # stream sequence → message delivered and not yet acked
        self.delivered: collections.deque[Msg] = collections.deque()  # not yet handed to the worker
        self.arrived = asyncio.Event()
        self.inbox = ""
        self._sub = None
        self._open_until = 0.0  # when the open pull request is over at the latest (0: none open)
        self._awaited = 0  # messages the open pull request may still deliver
        self._keepalive_s = keepalive_s
        self._keepalive: asyncio.Task | None = None
        self._throttled = Throttled()
        self.retarget(stream, consumer)

    def retarget(self, stream: str, consumer: str) -> None:
        """Pull from ``stream``'s ``consumer`` (at start, or made again after it was lost) from
        the next ``take`` on; a pull request sent to a lost one is not waited for."""
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._open_until = 0.0

    async def start(self) -> None:
        self.inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_message)
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())

    async def take(self, max_records: int, timeout_s: float) -> list[Msg]:
        """Up to ``max_records`` delivered messages, waiting at most ``timeout_s`` for the first;
        asks the server for more unless a request is still open."""
        wanted = max_records - len(self.delivered)
        if wanted > 0 and time.monotonic() >= self._open_until:
            await self._request(wanted)
        if not self.delivered:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout_s)
        out = []
        while self.delivered and len(out) < max_records:
            out.append(self.delivered.popleft())
        return out

    async def _request(self, batch: int) -> None:
        request = {"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)}
        await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
        self._awaited = batch
        self._open_until = time.monotonic() + PULL_EXPIRES_S + API_TIMEOUT_S  # lost in a reconnect: retried then

    async def _on_message(self, msg: Msg) -> None:
        if not msg.reply:  # a status: 404/408 end the request, 409 too (and says why), 100 is a heartbeat
            status = (msg.headers or {}).get(api.Header.STATUS, "")
            if status != "100":
                self._open_until = 0.0
            if status not in ("100", "404", "408"):
                self._throttled.warning("nats: pull request ended with %s %s", status,
                                        (msg.headers or {}).get(api.Header.DESCRIPTION, ""))
            return
        self.inflight[msg.metadata.sequence.stream] = msg
        self.delivered.append(msg)
        self._awaited -= 1
        if self._awaited <= 0:
            self._open_until = 0.0
        self.arrived.set()

    async def ack(self, msg: Msg, sequence: int) -> None:
        if self.inflight.get(sequence) is msg:
            del self.inflight[sequence]
        try:
            await msg.ack()
        except nats.errors.MsgAlreadyAckdError:
            pass
        except Exception as exc:  # noqa: BLE001 - not acked: redelivered after ack_wait, a duplicate
            self._throttled.warning("nats: ack failed (%s); the request will be redelivered", exc)

    async def _keep_alive(self) -> None:
        """``+WPI`` for every message delivered and not acked, so a live worker's backlog is not
        redelivered: ``ack_wait`` then only bounds how long a dead worker holds messages."""
        while True:
            await asyncio.sleep(self._keepalive_s)
            if not self.nc.is_connected:
                continue
            for msg in list(self.inflight.values()):
                try:
                    await msg.in_progress()
                except Exception as exc:  # noqa: BLE001 - the connection dropped; redelivery covers it
                    self._throttled.warning("nats: in-progress ack failed (%s)", exc)
                    break

    async def stop(self) -> None:
        """Stop pulling; messages held and not acked go back at once (``nak``), not after ack_wait."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for msg in list(self.inflight.values()):
            with contextlib.suppress(Exception):
                await msg.nak()
        self.inflight.clear()
        self.delivered.clear()


class NatsTransport:
    """``Transport`` over NATS JetStream (see the module docstring)."""

    name = "nats"

    def __init__(self, settings: WorkerSettings, *, on_revoked: OnRevoked) -> None:
        self.settings = settings
        self.urls = server_urls(settings.transport_url)
        self.io: LoopThread | None = None
        self.nc: nats.NATS | None = None
        self.js = None
        self.stream: str | None = None
        self.consumer: str | None = None
        self.puller: Puller | None = None
        self._stream_created: Any = None  # when the requests stream was made: tells a stream made again apart
        self._ack_floor = 0  # the group's ack floor (stream sequence) as last read by lag()
        self._captured: dict[str, bool | float] = {}  # reply subject → True, or when "no stream" was seen
        self._sent = threading.Condition()
        self._unacked_sends = 0
        self._paused = False
        self._throttled = Throttled()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.io = LoopThread("poolworker-nats").start()
        try:
            self.io.run(self._start(), CONNECT_TIMEOUT_S + 4 * API_TIMEOUT_S)
        except TimeoutError:
            self.close()
            raise TransportUnavailable("NATS JetStream did not answer while creating streams and the consumer") from None
        except BaseException:
            self.close()
            raise

    async def _start(self) -> None:
        s = self.settings
        self.nc = await connect(self.urls, f"poolworker {s.group_id}")
        self.js = self.nc.jetstream(timeout=API_TIMEOUT_S)
        self.stream = await ensure_stream(self.js, s.requests_topic)
        self._stream_created = (await self.js.stream_info(self.stream)).created
        for subject, limit in ((s.results_topic, s.results_max_len), (s.dlq_topic, None)):
            await ensure_stream(self.js, subject, max_msgs=limit)
        config = consumer_config(s)
        await ensure_consumer(self.js, self.stream, config)
        self.consumer = config.durable_name
        self._captured.update({s.results_topic: True, s.dlq_topic: True})
        puller = Puller(self.nc, self.stream, self.consumer, max(0.1, s.redelivery_timeout_s / 3))
        await puller.start()
        self.puller = puller
        log.info("nats: consuming %s (stream %s) as %s, ack_wait %.1fs", s.requests_topic, self.stream,
                 self.consumer, s.redelivery_timeout_s)

    def ready(self) -> bool:
        return self.puller is not None

    def close(self) -> None:
        if self.io is None:
            return
        if self.nc is not None:
            try:
                self.io.run(self._close(), CLOSE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - unacked records are redelivered anyway
                log.warning("nats: close did not complete (%s)", exc)
        self.io.stop()
        self.io = None
        self.puller = None

    async def _close(self) -> None:
        if self.puller is not None:
            await self.puller.stop()
        with contextlib.suppress(Exception):
            await self.nc.flush(2)
        await self.nc.close()

    # -- receiving -------------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        if self._paused or self.puller is None:
            time.sleep(timeout_s)
            return []
        try:
            msgs = self.io.run(self.puller.take(max_records, timeout_s), timeout_s + API_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - reconnecting: unacked records come back after ack_wait
            self._throttled.warning("nats: pull failed (%s: %s); retrying", type(exc).__name__, exc)
            time.sleep(timeout_s)
            return []
        return [self._record(m) for m in msgs]

    @staticmethod
    def _record(msg: Msg) -> Record:
        meta = msg.metadata
        key, headers = key_and_headers(msg.headers)
        source = Source(msg.subject, 0, meta.sequence.stream, key, int(meta.timestamp.timestamp() * 1000), headers,
                        handle=msg, deliveries=meta.num_delivered)
        return Record(source, msg.data)

    def finish(self, source: Source) -> None:
        io, puller = self.io, self.puller
        if io is not None and puller is not None:
            io.call(lambda: io.loop.create_task(puller.ack(source.handle, source.offset)))

    def commit(self) -> None:
        """Nothing to do: each record is acked by ``finish`` once its answer is stored."""

    def inflight(self) -> int:
        """Messages handed to the worker and not yet acked. Those delivered but still buffered
        (at most one pull batch) do not count: a paused loop does not take them, so counting
        them could keep it paused for ever."""
        puller = self.puller
        return max(0, len(puller.inflight) - len(puller.delivered)) if puller is not None else 0

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def lag(self) -> Mapping[tuple[str, int], int]:
        """Messages of the requests subject not yet delivered to the group (``num_pending``).
        The loop asks every few seconds, which makes this also the check that the group's
        consumer still exists (``_consumer_info``)."""
        if self.puller is None:
            return {}
        try:
            info = self.io.run(self._consumer_info(), 4 * API_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - unknown right now
            return {}
        return {(self.settings.requests_topic, 0): int(info.num_pending or 0)}

    async def _consumer_info(self) -> api.ConsumerInfo:
        """The consumer's state, noting the group's ack floor; the consumer is made again first
        when it is gone (``_recreate``)."""
        try:
            info = await self.js.consumer_info(self.stream, self.consumer)
        except nats.js.errors.NotFoundError as exc:
            await self._recreate(exc)
            info = await self.js.consumer_info(self.stream, self.consumer)
        self._ack_floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
        return info

    async def _recreate(self, exc: Exception) -> None:
        """The consumer is gone — deleted, or lost with the server's state — and with it every
        pull: without this the worker would wait for ever for messages that cannot come. It is
        made again (the requests stream too, if that went as well) from just above the group's
        last known ack floor (``resumed_config``): nothing unanswered is skipped, and only what
        was answered since that floor was read, a few seconds ago, may be answered again. A
        stream made again starts at its first message. Every worker of the group does this; the
        first one's start wins (each one's floor was true when read, so any is safe)."""
        s = self.settings
        stream = await ensure_stream(self.js, s.requests_topic)
        created = (await self.js.stream_info(stream)).created
        floor = self._ack_floor if (stream, created) == (self.stream, self._stream_created) else 0
        config = resumed_config(consumer_config(s), floor)
        start = f"stream sequence {floor + 1}, above the group's last known ack floor" if floor else "the stream's first message"
        try:
            await self.js.add_consumer(stream, config)
        except nats.js.errors.APIError:  # another worker made it first, from its own floor ("start sequence can not be updated")
            await self.js.consumer_info(stream, config.durable_name)  # else the refusal had another cause: raised
            start = "where another worker of the group started it"
        log.warning("nats: consumer %s of stream %s was gone (%s); it is there again, from %s: requests answered "
                    "since that point may be answered again", self.consumer, stream, exc, start)
        self.stream, self._stream_created = stream, created
        if self.puller is not None:
            self.puller.retarget(stream, self.consumer)

    # -- producing -------------------------------------------------------------------------------
    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        payload = value or b""
        hdrs = nats_headers(key, headers)
        size = len(payload) + headers_size(hdrs)
        limit = self.nc.max_payload if self.nc is not None else 1024 * 1024
        if size > limit:
            raise RecordTooLarge(f"{size} bytes exceed the NATS server's max_payload of {limit} bytes")
        io = self.io
        if io is None:
            on_failed(RuntimeError("the nats transport is closed"))
            return
        with self._sent:
            self._unacked_sends += 1
        io.call(lambda: io.loop.create_task(self._publish(topic, payload, hdrs, on_acked, on_failed)))

    async def _publish(self, topic: str, payload: bytes, headers: dict[str, str] | None,
                       on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        try:
            if await self._is_captured(topic):
                await self.js.publish(topic, payload, timeout=API_TIMEOUT_S, headers=headers)
            else:  # a reply subject no stream captures: its live subscribers get it, like NATS request-reply
                await self.nc.publish(topic, payload, headers=headers)
                await self.nc.flush(API_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the publisher retries; the request stays unacked
            _run_callback(on_failed, exc)
        else:
            _run_callback(on_acked)
        finally:
            with self._sent:
                self._unacked_sends -= 1
                self._sent.notify_all()

    async def _is_captured(self, subject: str) -> bool:
        """Whether a stream stores ``subject``; "no" is looked up again after a minute."""
        known = self._captured.get(subject)
        if known is True:
            return True
        if isinstance(known, float) and time.monotonic() - known < 60:
            return False
        try:
            await self.js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            log.warning("nats: no stream captures reply subject %s; results sent there reach live subscribers only", subject)
            self._captured[subject] = time.monotonic()
            return False
        self._captured[subject] = True
        return True

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._sent:
            while self._unacked_sends and (left := deadline - time.monotonic()) > 0:
                self._sent.wait(left)


def _run_callback(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("nats: a produce callback failed")


# ------------------------------------------------------------------------------------------------
# The client side
# ------------------------------------------------------------------------------------------------
SEND_RETRY_S = 30.0  # how long a client keeps retrying one request's publish (server restarting)


class NatsChannel:
    """``ClientChannel`` over NATS: requests are JetStream publishes (acked, retried for up to
    ``SEND_RETRY_S``); results are read by a core-NATS subscription to the results subject made
    here, so every result published from now on is seen (none stored earlier). ``options`` go
    to ``nats.connect`` (``user_credentials``, ``tls``, ...)."""

    def __init__(self, servers: str, *, results_topic: str, options: dict) -> None:
        self.urls = server_urls(servers)
        self.io = LoopThread("poolclient-nats").start()
        self._results: collections.deque[Reply] = collections.deque()
        self._arrived = threading.Condition()
        self._sent = threading.Condition()
        self._unacked = 0
        self._failures: list[Exception] = []
        try:
            self.io.run(self._open(results_topic, options), CONNECT_TIMEOUT_S + API_TIMEOUT_S)
        except BaseException:
            self.io.stop()
            raise

    async def _open(self, results_topic: str, options: dict) -> None:
        self.nc = await connect(self.urls, "poolworker client", options)
        self.js = self.nc.jetstream(timeout=API_TIMEOUT_S)
        await self.nc.subscribe(results_topic, cb=self._on_result)
        await self.nc.flush(API_TIMEOUT_S)  # the server has the subscription before the first send

    async def _on_result(self, msg: Msg) -> None:
        with self._arrived:
            self._results.append(Reply(msg.data, key_and_headers(msg.headers)[1]))
            self._arrived.notify_all()

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        with self._sent:
            self._unacked += 1
        hdrs = nats_headers(key, headers)
        io = self.io
        io.call(lambda: io.loop.create_task(self._send(topic, value, hdrs)))

    async def _send(self, topic: str, value: bytes, headers: dict[str, str] | None) -> None:
        deadline = time.monotonic() + SEND_RETRY_S
        try:
            while True:
                try:
                    await self.js.publish(topic, value, timeout=API_TIMEOUT_S, headers=dict(headers) if headers else None)
                    return
                except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported by flush
                    if time.monotonic() > deadline or self.nc.is_closed:
                        log.error("nats: request to %s not stored: %s", topic, exc)
                        self._failures.append(exc)
                        return
                    await asyncio.sleep(0.5)
        finally:
            with self._sent:
                self._unacked -= 1
                self._sent.notify_all()

    def flush(self, timeout_s: float) -> None:
        """Wait for every send's PubAck; raises if one could not be stored."""
        deadline = time.monotonic() + timeout_s
        with self._sent:
            while self._unacked and (left := deadline - time.monotonic()) > 0:
                self._sent.wait(left)
        if self._failures:
            failures, self._failures = self._failures, []
            raise RuntimeError(f"{len(failures)} request(s) were not stored by JetStream: {failures[0]!r} "
                               "(does a stream capture the requests subject? is a worker running?)")

    def receive(self, timeout_s: float) -> list[Reply]:
        with self._arrived:
            if not self._results:
                self._arrived.wait(timeout_s)
            out = list(self._results)
            self._results.clear()
        return out

    def close(self) -> None:
        try:
            self.io.run(self._close(), CLOSE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            log.warning("nats: client close did not complete (%s)", exc)
        self.io.stop()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.flush(2)
        await self.nc.close()


__all__ = ["KEY_HEADER", "KEY_HEADER_B64", "LoopThread", "NatsChannel", "NatsTransport", "connect", "ensure_stream",
           "key_and_headers", "nats_headers", "server_urls", "stream_name"]
