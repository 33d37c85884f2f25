"""The ``redis-streams`` transport: requests and results as Redis Streams, through redis-py.

Layout of an entry (requests, results, dead letters, reply streams alike): the field ``value``
holds the body, ``key`` the key, every other field is a header (bytes). An entry without a
``value`` field is the Redis form of a tombstone (it is dead-lettered like a Kafka one).

How delivery works, and why:

- The workers share one consumer group (``group_id``, created at id 0 with MKSTREAM, so entries
  written before the first worker started are served); each worker is its own consumer
  (``host-pid-random``), so a restarted process never mistakes a dead one's entries for its own.
- New entries come from ``XREADGROUP ... >``. A request is XACKed only after the entry
  answering it (result or dead letter) was written: ``produce`` queues the XADD for a sender
  thread that pipelines whatever is queued and calls ``on_acked`` once the server returned the
  entry's id; the publisher then calls ``finish``, and the sender XACKs everything its round
  trip answered in one more call (``commit``, every 0.5 s, retries what failed).
- A dead worker's entries stay pending in the group. Every worker runs ``XAUTOCLAIM`` for
  entries idle longer than ``redelivery_timeout_s`` and serves them, with their delivery count
  (from XPENDING: each claim counts one) in ``Source.deliveries``, so the receive loop sends an
  entry handed out more than ``max_deliveries`` times to the DLQ stream.
- A live worker keeps its own in-flight entries from looking dead: ``poll`` and ``commit``
  re-claim them to itself with ``XCLAIM ... JUSTID`` (which resets their idle time without
  counting a delivery) every third of ``redelivery_timeout_s``, so a slow batch is not taken
  over and done twice.
- A worker killed with -9 leaves its consumer name in the group (a clean stop removes its own).
  Once its entries were claimed, every worker's claim pass removes, at most once a minute, the
  consumers that hold no pending entry and were idle for ``PRUNE_IDLE_MIN_S``, in one Lua
  script: the check and the ``XGROUP DELCONSUMER`` are one atomic step, so an entry handed to a
  consumer meanwhile can never be dropped with it. A live worker that is merely idle may be
  removed too; its next read makes it again (Redis creates consumers on ``XREADGROUP``), and
  with nothing pending it loses nothing.
- Redis unreachable: ``poll`` logs, backs off (0.1 s doubling to 2 s) and returns nothing;
  ``produce`` reports ``on_failed`` (the publisher retries every second); ``commit`` keeps its
  XACKs for the next call. Nothing is acknowledged that was not answered, so nothing is lost;
  after a reconnect the worker first takes back its own pending entries that it is not working
  on (XPENDING for this consumer, then XCLAIM: an entry the server handed out in a reply that
  never arrived). A stream or group that vanished (a Redis without persistence restarted) is
  created again. The price is duplicates: an XADD whose reply was lost is retried, and an entry
  answered but not yet XACKed when a worker dies is answered again by the worker that claims it.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

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

#: The largest entry (value + key + headers) the transport writes; a larger one is refused with
#: ``RecordTooLarge`` (the publisher then sends a smaller error result or DLQ prefix). Redis
#: itself takes up to ``proto-max-bulk-len`` (512 MB) per field, but every entry lives in the
#: server's memory until trimmed. A setting would be better (see docs/transports/redis-streams.md).
MAX_ENTRY_BYTES = 16 * 1024 * 1024
SCHEMES = ("redis", "rediss", "unix")
MIN_SERVER_VERSION = (6, 2)  # XAUTOCLAIM; XINFO GROUPS reports `lag` from 7.0 on
SOCKET_TIMEOUT_S = 10.0  # must exceed the longest BLOCK (a poll's timeout)
CONNECT_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
CLAIM_INTERVAL_MAX_S = 5.0  # XAUTOCLAIM at least this often (more often for short redelivery timeouts)
PRUNE_IDLE_MIN_S = 600.0  # a consumer idle this long with nothing pending is removed from the group
PRUNE_INTERVAL_S = 60.0
PRUNE_RETRY_S = 3600.0  # after a failure (scripts refused by the server or its ACL): warn hourly, not every minute
# KEYS[1] stream; ARGV: group, this consumer, min idle ms. Removes the group's consumers that hold
# no pending entry and were idle longer; returns their names. One script: atomic (module doc).
PRUNE_SCRIPT = """
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""
RESERVED_FIELDS = (b"value", b"key")
PIPELINE_MAX = 1000  # entries written in one round trip at most
AFTER_WRITE_EVERY_S = 0.05  # while entries keep queuing, XACK the answered requests this often
#: Commands whose replies are read here as the server sent them (RESP2): redis-py's parsers turn
#: an entry's fields into a dict, which would drop duplicate header names and their order.
RAW_REPLIES = ("XREAD", "XREADGROUP", "XAUTOCLAIM", "XCLAIM")


# ------------------------------------------------------------------------------------------------
# Connection and entry layout (shared by the worker's transport and the client's channel)
# ------------------------------------------------------------------------------------------------
def connect(url: str | None, options: Mapping[str, Any] | None = None) -> redis.Redis:
    """A redis-py client for ``url`` that answered PING; ``TransportUnavailable`` (with the fix)
    when the URL is missing or malformed or the server cannot be used. The password is never
    part of a message.

    The client speaks RESP2 (the raw stream replies are parsed here) and retries a command once
    on a fresh connection (a pooled connection that died with a server restart), no more: the
    transport does its own backoff, so a down server is reported at once instead of stalling."""
    if not url:
        raise TransportUnavailable("the redis-streams transport needs --transport-url redis://HOST:PORT/DB "
                                   "(or rediss:// for TLS, redis://:PASSWORD@HOST:PORT/DB with a password)")
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise TransportUnavailable(f"--transport-url {redact_url(url)}: expected a redis://, rediss:// or unix:// URL")
    kwargs: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S,
                              "health_check_interval": 30, **dict(options or {})}
    kwargs.update(protocol=2, decode_responses=False, retry=Retry(NoBackoff(), 1))
    try:
        client = redis.Redis.from_url(url, **kwargs)
    except (ValueError, TypeError) as exc:
        raise TransportUnavailable(f"--transport-url {redact_url(url)} is not usable: {exc}") from exc
    try:
        info = client.info("server")
    except redis.AuthenticationError as exc:
        client.close()
        raise TransportUnavailable(f"Redis at {redact_url(url)} refused the credentials ({exc}); "
                                   "check the user and password in --transport-url") from exc
    except RedisError as exc:
        client.close()
        raise TransportUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}; is redis-server running "
                                   "there (and is it TLS, rediss://, or not)?") from exc
    for command in RAW_REPLIES:
        client.set_response_callback(command, _raw_reply)
    version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2] if p.isdigit())
    if version < MIN_SERVER_VERSION:
        client.close()
        raise TransportUnavailable(f"Redis at {redact_url(url)} is version {info.get('redis_version')}; the "
                                   f"redis-streams transport needs {'.'.join(map(str, MIN_SERVER_VERSION))} or later (XAUTOCLAIM)")
    return client


def _raw_reply(response, **_options):
    return response


def entry_fields(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]) -> list[bytes]:
    """The flat field/value list of an entry: ``value``, ``key`` (each only when present), then
    the headers in order (duplicate names kept). Headers named ``value`` or ``key`` would read
    back as the body or key, so they are left out, with a warning."""
    fields: list[bytes] = []
    if value is not None:
        fields += [b"value", value]
    if key is not None:
        fields += [b"key", key]
    for name, raw in headers:
        encoded = name.encode("utf-8", "surrogateescape")
        if encoded in RESERVED_FIELDS:
            log.warning("header %r left out of a stream entry: the name is the entry's own %s field", name, name)
            continue
        fields += [encoded, raw if raw is not None else b""]
    if not fields:
        fields = [b"value", b""]  # an entry needs a field: nothing at all becomes an empty body
    return fields


def parse_entry(fields: list[bytes]) -> tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]:
    """``(key, value, headers)`` of an entry's flat field list (the inverse of ``entry_fields``;
    header names decode with surrogateescape, so any bytes come back unchanged)."""
    key = value = None
    headers = []
    for i in range(0, len(fields) - 1, 2):
        name, raw = fields[i], fields[i + 1]
        if name == b"value" and value is None:
            value = raw
        elif name == b"key" and key is None:
            key = raw
        else:
            headers.append((name.decode("utf-8", "surrogateescape"), raw))
    return key, value, tuple(headers)


def entry_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    return len(value or b"") + len(key or b"") + sum(len(n) + len(v or b"") for n, v in headers)


def id_millis(entry_id: str) -> int:
    """The millisecond part of an entry id: when the server added it."""
    return int(entry_id.partition("-")[0])


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


class _Backoff:
    """Doubling pauses while the server is unreachable, so a down Redis costs a log line per
    attempt, not a busy loop; ``ok`` resets it."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.until = 0.0
        self.failures = 0

    def failed(self) -> float:
        self.delay = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, self.delay * 2))
        self.until = time.monotonic() + self.delay
        self.failures += 1
        return self.delay

    def ok(self) -> bool:
        """Reset; True when this ends an outage."""
        ended = self.failures > 0
        self.delay, self.until, self.failures = 0.0, 0.0, 0
        return ended

    def waiting(self) -> float:
        return max(0.0, self.until - time.monotonic())


class _Sender:
    """Writes entries in order on a thread of its own, everything queued meanwhile in one
    pipelined round trip, then runs each entry's callback: ``on_acked`` once the server
    returned its id, ``on_failed`` otherwise; then ``after_write`` (the transport XACKs what
    those callbacks finished), at once when the queue is empty, every 50 ms while it is not.

    Why a thread: one XADD is a round trip (~270 us on this 2-core VM), so XADD-and-wait per
    result capped the transport at ~1,800 results/s; pipelining what piles up during a round
    trip is how Kafka producers batch too, without a linger wait (measured in
    docs/transports/redis-streams.md)."""

    def __init__(self, client: redis.Redis, after_write: Callable[[], None]) -> None:
        self.client = client
        self.after_write = after_write
        self._after_write_at = 0.0
        self._queue: list[tuple[list[Any], Callable[[], None], Callable[[Exception], None]]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="poolworker-redis-send", daemon=True)
        self._thread.start()

    def send(self, command: list[Any], on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        with self._cond:
            closed = self._closed
            if not closed:
                self._queue.append((command, on_acked, on_failed))
                if len(self._queue) == 1:  # the sender waits only on an empty queue: one wake-up per batch
                    self._cond.notify_all()
        if closed:  # a retry that fired during shutdown: the request stays pending and is replayed
            on_failed(RuntimeError("the redis-streams transport is closed"))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue[:PIPELINE_MAX], self._queue[PIPELINE_MAX:]
                self._busy = True
            try:
                self._write(batch)
            except Exception:  # the thread must outlive any bug: a dead sender would stall every answer
                log.exception("redis-streams: writing %d entries failed unexpectedly", len(batch))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[tuple[list[Any], Callable[[], None], Callable[[Exception], None]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for command, _, _ in batch:
            pipe.execute_command(*command)
        try:
            replies = pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - the connection failed (which entries were written is unknown), or a bug: each is failed
            replies = [exc] * len(batch)
        for (_, on_acked, on_failed), reply in zip(batch, replies):
            try:
                if isinstance(reply, Exception):
                    on_failed(reply)
                else:
                    on_acked()
            except Exception:  # one callback's bug must not stop the others
                log.exception("a produce callback failed")
        with self._cond:
            more = bool(self._queue)
        now = time.monotonic()
        if not more or now - self._after_write_at >= AFTER_WRITE_EVERY_S:  # busy: one XACK per few round trips
            self._after_write_at = now
            self.after_write()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued was written or failed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)


# ------------------------------------------------------------------------------------------------
# The worker side
# ------------------------------------------------------------------------------------------------
class RedisStreamsTransport:
    """``Transport`` over Redis Streams (see the module docstring for the delivery rules).

    Threads: the receive thread polls, claims, XACKs and renews; the publisher thread queues
    XADDs, which the sender thread (``_Sender``) writes and acknowledges, calling ``finish``
    through the publisher's callback. They share one redis-py client (its connection pool is
    thread-safe) and the in-flight bookkeeping below, under ``_lock``."""

    name = "redis-streams"

    def __init__(self, settings: WorkerSettings, *, on_revoked: OnRevoked) -> None:
        self.settings = settings
        self.on_revoked = on_revoked  # never called: every worker of the group reads the whole stream
        self.stream = settings.requests_topic
        self.group = settings.group_id
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.client: redis.Redis | None = None
        self.sender: _Sender | None = None
        self._lock = threading.Lock()
        self._inflight: set[str] = set()  # entry ids polled and not finished
        self._to_ack: list[str] = []  # finished, not yet XACKed
        self._arrivals = itertools.count()
        self._paused = False
        self._started = False
        self._read_own_pending = True  # after a start or reconnect: re-read this consumer's PEL first
        self._pending_cursor = "-"
        self._backoff = _Backoff()
        self._claim_cursor = "0-0"
        self._claim_due = 0.0
        self._renew_due = 0.0
        timeout = settings.redelivery_timeout_s
        self._claim_every_s = min(CLAIM_INTERVAL_MAX_S, max(0.2, timeout / 2))
        self._prune_due = 0.0
        self._renew_every_s = max(0.1, timeout / 3)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.client = connect(self.settings.transport_url)
        self.sender = _Sender(self.client, after_write=self._ack_answered)
        self._create_group()
        self._started = True
        log.info("redis-streams: consumer %s of group %s on %s (%s)", self.consumer, self.group, self.stream,
                 redact_url(self.settings.transport_url))
        log.info("partitions assigned: %s", [f"{self.stream}/0"])  # the whole stream, shared by the group

    def _create_group(self) -> None:
        """The group at id 0 (entries written before any worker started are served), with the
        stream; an existing group is kept as it is."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s on stream %s", self.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _group_lost(self, exc: ResponseError) -> None:
        """The stream or the group is gone (deleted, or a Redis without persistence restarted):
        make them again at id 0, so whatever the stream holds now is served. What the old group
        had pending is gone with it; those requests are lost to Redis itself, not to us."""
        log.warning("redis-streams: group %s on %s is gone (%s); creating it again from the stream's start",
                    self.group, self.stream, exc)
        try:
            self._create_group()
        except RedisError as err:
            self._failed("recreating the group on", err)
        self._claim_cursor = "0-0"

    def ready(self) -> bool:
        return self._started

    def close(self) -> None:
        """XACK what is finished; drop this consumer from the group when it holds no pending
        entry (its name is never used again); else leave them to be claimed."""
        if self.client is None:
            return
        self.sender.close()
        self._acknowledge()  # even inside a backoff pause: each entry XACKed now is one less replayed
        try:
            if not self.client.xpending_range(self.stream, self.group, min="-", max="+", count=1, consumername=self.consumer):
                self.client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except RedisError as exc:
            log.warning("could not remove consumer %s from group %s: %s", self.consumer, self.group, exc)
        self.client.close()

    # -- receiving -------------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        wait = self._backoff.waiting()
        if wait:
            time.sleep(min(wait, timeout_s))
            return []
        try:
            entries = self._receive(timeout_s, max_records)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_lost(exc)
            else:
                self._failed("reading", exc)
            return []
        except RedisError as exc:
            self._failed("reading", exc)
            return []
        if self._backoff.ok():
            log.info("redis-streams: %s answers again", redact_url(self.settings.transport_url))
        return self._records(entries)

    def _receive(self, timeout_s: float, max_records: int) -> list[tuple[str, list[bytes], int]]:
        """Renew, then this consumer's lost entries, claims, and new entries, up to ``max_records``."""
        self._renew()  # here too, not only in commit: the loop polls every 0.1 s, paused or not
        if self._paused:
            time.sleep(timeout_s)
            return []
        entries: list[tuple[str, list[bytes], int]] = []
        if self._read_own_pending:
            entries += self._own_pending(max_records)
        if len(entries) < max_records and time.monotonic() >= self._claim_due:
            entries += self._claim(max_records - len(entries))
        if len(entries) < max_records:
            entries += self._read_new(max_records - len(entries), block_s=0 if entries else timeout_s)
        return entries

    def _read_new(self, count: int, block_s: float) -> list[tuple[str, list[bytes], int]]:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_s > 0:
            args += ["BLOCK", max(1, int(block_s * 1000))]
        reply = self.client.execute_command(*args, "STREAMS", self.stream, ">")
        return [(eid, fields, 1) for eid, fields in _stream_entries(reply)]

    def _own_pending(self, count: int) -> list[tuple[str, list[bytes], int]]:
        """This consumer's pending entries that it is not working on: handed out in a reply lost
        with a connection that died. Listed with XPENDING (this consumer only), then taken with
        XCLAIM, which counts the delivery; the entries in flight here are left untouched. Done
        once the whole list was read (a long one goes on at the next poll)."""
        found: list[tuple[str, int]] = []
        after = self._pending_cursor
        while len(found) < count:
            page = self.client.xpending_range(self.stream, self.group, min=f"({after}" if after != "-" else "-", max="+",
                                              count=count, consumername=self.consumer)
            if not page:
                self._read_own_pending, self._pending_cursor = False, "-"
                break
            after = _text(page[-1]["message_id"])
            found += [(eid, int(p["times_delivered"])) for p in page if not self._known(eid := _text(p["message_id"]))]
        else:
            self._pending_cursor = after
        if not found:
            return []
        delivered = dict(found)
        reply = self.client.execute_command("XCLAIM", self.stream, self.group, self.consumer, 0, *delivered)
        return [(eid, fields, delivered[eid] + 1) for eid, fields in ((_text(e), f) for e, f in reply) if fields is not None]

    def _claim(self, count: int) -> list[tuple[str, list[bytes], int]]:
        """Entries idle longer than ``redelivery_timeout_s`` (a dead or stuck worker's), claimed
        for this consumer, with their delivery counts. The scan goes on from its cursor; when a
        pass ends, the next one waits for the claim interval."""
        min_idle_ms = int(self.settings.redelivery_timeout_s * 1000)
        reply = self.client.execute_command("XAUTOCLAIM", self.stream, self.group, self.consumer, min_idle_ms,
                                            self._claim_cursor, "COUNT", count)
        cursor, claimed = _text(reply[0]), reply[1]
        deleted = [_text(d) for d in reply[2]] if len(reply) > 2 else []  # Redis 7 drops them from the group itself
        gone = [_text(eid) for eid, fields in claimed if fields is None]  # Redis 6.2 lists them as nil entries
        if gone:
            with self._lock:
                self._to_ack += gone
            deleted += gone
        if deleted:
            log.warning("%d pending entries of %s were deleted from the stream before they were answered (trimmed by "
                        "their producer?): %s", len(deleted), self.stream, deleted[:5])
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._claim_due = time.monotonic() + self._claim_every_s
            self._prune_consumers()
        found = [(_text(eid), fields) for eid, fields in claimed if fields is not None and not self._known(_text(eid))]
        if found:
            log.info("claimed %d entries of %s idle for over %.1fs", len(found), self.stream, self.settings.redelivery_timeout_s)
        return self._with_deliveries(found)

    def _prune_consumers(self) -> None:
        """Remove dead workers' consumer names (``PRUNE_SCRIPT``), at most every
        ``PRUNE_INTERVAL_S``. Housekeeping only: a failure (the claim just before it reached the
        server, so most likely a server or ACL that refuses scripts) is logged and tried again
        an hour later."""
        now = time.monotonic()
        if now < self._prune_due:
            return
        self._prune_due = now + PRUNE_INTERVAL_S
        try:
            removed = self.client.eval(PRUNE_SCRIPT, 1, self.stream, self.group, self.consumer, int(PRUNE_IDLE_MIN_S * 1000))
        except RedisError as exc:
            self._prune_due = now + PRUNE_RETRY_S
            log.warning("redis-streams: could not remove idle consumers from group %s (trying again in an hour): %s",
                        self.group, exc)
            return
        if removed:
            log.info("redis-streams: removed %d consumers with nothing pending, idle over %.0f s, from group %s: %s",
                     len(removed), PRUNE_IDLE_MIN_S, self.group, ", ".join(_text(n) for n in removed))

    def _with_deliveries(self, found: list[tuple[str, list[bytes]]]) -> list[tuple[str, list[bytes], int]]:
        """Each entry's delivery count from XPENDING (one pipelined round trip)."""
        if not found:
            return []
        pipe = self.client.pipeline(transaction=False)
        for eid, _ in found:
            pipe.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
        counts = pipe.execute()
        out = []
        for (eid, fields), pending in zip(found, counts):
            if not pending:
                continue  # acknowledged meanwhile by the worker that had it: nothing to do
            out.append((eid, fields, int(pending[0]["times_delivered"])))
        return out

    def _known(self, entry_id: str) -> bool:
        """In flight here, or finished and waiting for its XACK: never hand it out twice."""
        with self._lock:
            return entry_id in self._inflight or entry_id in self._to_ack

    def _records(self, entries: list[tuple[str, list[bytes], int]]) -> list[Record]:
        records = []
        for eid, fields, deliveries in entries:
            key, value, headers = parse_entry(fields)
            source = Source(self.stream, 0, next(self._arrivals), key, id_millis(eid), headers, handle=eid,
                            deliveries=deliveries)
            with self._lock:
                self._inflight.add(eid)
            records.append(Record(source, value))
        return records

    def _failed(self, doing: str, exc: Exception) -> None:
        delay = self._backoff.failed()
        self._read_own_pending, self._pending_cursor = True, "-"  # a reply may have been lost with the connection
        if self._backoff.failures == 1 or self._backoff.failures % 20 == 0:
            log.warning("redis-streams: %s %s failed (%s: %s); retrying in %.1fs (attempt %d)", doing, self.stream,
                        type(exc).__name__, exc, delay, self._backoff.failures)

    def finish(self, source: Source) -> None:
        with self._lock:
            if source.handle in self._inflight:
                self._inflight.discard(source.handle)
                self._to_ack.append(source.handle)

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def commit(self) -> None:
        """XACK every finished entry in one call, and renew this worker's claim on the entries
        it is still working on. Failures are logged and retried on the next call."""
        if self.client is not None and not self._backoff.waiting():  # down: poll's backoff says when to try again
            self._acknowledge()

    def _acknowledge(self) -> None:
        with self._lock:
            done, self._to_ack = self._to_ack, []
        try:
            if done:
                self.client.xack(self.stream, self.group, *done)
                done = []
            self._renew()
        except RedisError as exc:
            with self._lock:
                self._to_ack[:0] = done
            self._failed(f"acknowledging {len(done)} entries of" if done else "renewing the claim on", exc)

    def _ack_answered(self) -> None:
        """XACK at once what the sender's last round trip answered (on the sender thread), so a
        crash replays at most a round trip's worth instead of up to 0.5 s of results; a failure
        leaves them to ``commit``, which retries and logs."""
        with self._lock:
            done, self._to_ack = self._to_ack, []
        if not done:
            return
        try:
            self.client.xack(self.stream, self.group, *done)
        except RedisError:
            with self._lock:
                self._to_ack[:0] = done

    def _renew(self) -> None:
        """Reset the idle time of the entries in flight here (XCLAIM JUSTID counts no delivery),
        so the group does not take them over while a slow batch is still being computed."""
        now = time.monotonic()
        if now < self._renew_due:
            return
        with self._lock:
            ids = list(self._inflight)
        for start in range(0, len(ids), 1000):
            self.client.execute_command("XCLAIM", self.stream, self.group, self.consumer, 0, *ids[start:start + 1000], "JUSTID")
        self._renew_due = now + self._renew_every_s

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def lag(self) -> Mapping[tuple[str, int], int]:
        """Entries of the stream not yet delivered to the group (XINFO GROUPS ``lag``, Redis 7);
        empty when the server cannot say (older Redis, or after deletions in the stream)."""
        try:
            for group in self.client.xinfo_groups(self.stream):
                if _text(group["name"]) == self.group and group.get("lag") is not None:
                    return {(self.stream, 0): int(group["lag"])}
        except RedisError as exc:
            log.debug("lag of %s unavailable: %s", self.stream, exc)
        return {}

    # -- producing -------------------------------------------------------------------------------
    def produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                on_acked: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        """Queue one XADD for the sender thread, which runs ``on_acked`` once the server
        returned the new id (``on_failed`` if it did not). Results and reply streams are trimmed
        to about ``results_max_len``; the DLQ stream never is (dead letters wait for a person)."""
        size = entry_size(key, value, headers)
        if size > MAX_ENTRY_BYTES:
            raise RecordTooLarge(f"a {size}-byte entry exceeds the redis-streams limit of {MAX_ENTRY_BYTES} bytes")
        command: list[Any] = ["XADD", topic]
        if self.settings.results_max_len and topic != self.settings.dlq_topic:
            command += ["MAXLEN", "~", self.settings.results_max_len]
        self.sender.send([*command, "*", *entry_fields(key, value, headers)], on_acked, on_failed)

    def flush(self, timeout_s: float) -> None:
        if self.sender is not None and not self.sender.flush(timeout_s):
            log.warning("redis-streams: entries still unwritten after %.0fs; their requests stay pending and will be replayed",
                        timeout_s)


def _stream_entries(reply) -> list[tuple[str, list[bytes] | None]]:
    """``[(id, fields)]`` of a RESP2 XREAD/XREADGROUP reply for one stream (None: a timeout);
    fields is None for a pending entry deleted from the stream."""
    if not reply:
        return []
    _name, entries = reply[0]
    return [(_text(eid), fields) for eid, fields in entries]


# ------------------------------------------------------------------------------------------------
# The client side
# ------------------------------------------------------------------------------------------------
class RedisStreamsChannel:
    """``ClientChannel`` over Redis Streams: XADD requests; XREAD the results stream (no group)
    from its last id as of construction, so every result written after that is read, and no
    earlier one. ``servers`` is the redis:// URL; ``options`` go to redis-py."""

    def __init__(self, servers: str, *, results_topic: str, options: dict) -> None:
        self.client = connect(servers, options)
        self.url = servers
        self.results_topic = results_topic
        self._lock = threading.Lock()
        self._last_id = self._end_of(results_topic)
        self._backoff = _Backoff()

    def _end_of(self, stream: str) -> str:
        """The stream's last id now ("0-0" when it does not exist yet: read it from its first)."""
        try:
            return _text(self.client.xinfo_stream(stream)["last-generated-id"])
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return "0-0"
            raise

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        self.client.execute_command("XADD", topic, "*", *entry_fields(key, value, headers))

    def flush(self, timeout_s: float) -> None:
        """Nothing to wait for: ``send`` returns once the server has the entry."""

    def receive(self, timeout_s: float) -> list[Reply]:
        """Result values since the last call; a down server is logged and reads as nothing
        (the position is kept, so nothing is missed once it is back)."""
        wait = self._backoff.waiting()
        if wait:
            time.sleep(min(wait, timeout_s))
            return []
        with self._lock:
            try:
                reply = self.client.execute_command("XREAD", "COUNT", 1000, "BLOCK", max(1, int(timeout_s * 1000)),
                                                    "STREAMS", self.results_topic, self._last_id)
            except RedisError as exc:
                delay = self._backoff.failed()
                log.warning("reading %s from %s failed (%s); retrying in %.1fs", self.results_topic,
                            redact_url(self.url), exc, delay)
                return []
            self._backoff.ok()
            entries = _stream_entries(reply)
            if entries:
                self._last_id = entries[-1][0]
        parsed = [parse_entry(fields or []) for _, fields in entries]
        return [Reply(value, headers) for _, value, headers in parsed if value is not None]

    def close(self) -> None:
        self.client.close()


__all__ = ["MAX_ENTRY_BYTES", "RedisStreamsChannel", "RedisStreamsTransport", "connect", "entry_fields", "parse_entry"]
