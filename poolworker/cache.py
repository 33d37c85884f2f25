"""Per-item result cache: Redis in production, an in-process LRU for dev mode, or nothing.

The worker looks every input item up before running the model and stores what it computed
afterwards. The cache is an optimisation, never a dependency: every backend answers
``get_many`` / ``set_many`` without raising, so a Redis outage costs throughput (every item
becomes a miss) but never a failed request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "CacheMetrics",
    "MemoryCache",
    "NullCache",
    "RedisCache",
    "ResultCache",
    "cache_key",
    "decode_value",
    "encode_value",
    "is_null",
    "make_cache",
    "redact_url",
]

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Encodable = Union[float, Sequence[float], Sequence[Sequence[float]], np.ndarray, "torch.Tensor"]
Decoded = float | np.ndarray

DEFAULT_TTL_S = 86400
NONE_URLS = ("", "none")
"""``--redis-url`` values that switch caching off."""


# ----------------------------------------------------------------------------------------------
# Interfaces
# ----------------------------------------------------------------------------------------------
class CacheMetrics(Protocol):
    """What a cache reports; the worker backs it with Prometheus counters."""

    def hit(self, n: int) -> None: ...

    def miss(self, n: int) -> None: ...

    def error(self) -> None: ...


class ResultCache(Protocol):
    """The surface the worker codes against, whatever the backend."""

    description: str

    @property
    def available(self) -> bool: ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(self, items: Mapping[str, bytes]) -> None: ...

    def close(self) -> None: ...


def _count(metrics: CacheMetrics | None, values: Sequence[bytes | None]) -> None:
    """Report one lookup's hits and misses, so every backend feeds the hit ratio alike."""
    if metrics is None or not values:
        return
    found = sum(v is not None for v in values)
    metrics.hit(found)
    metrics.miss(len(values) - found)


# ----------------------------------------------------------------------------------------------
# Keys and values
# ----------------------------------------------------------------------------------------------
def cache_key(
    fingerprint: str,
    task: str,
    options: Sequence[tuple[str, object]] | Mapping[str, object],
    item: object,
) -> str:
    """Hash everything that determines a result, so a changed model or option never hits.

    Options are sorted so callers may build them in any order; JSON (not ``repr``) keeps the
    key stable across Python versions and processes. Non-JSON values raise ``TypeError``
    rather than being stringified into a key that could collide.
    """
    pairs = options.items() if isinstance(options, Mapping) else options
    canonical_options = sorted(
        ([str(name), value] for name, value in pairs),
        key=lambda pair: (pair[0], _canonical_json(pair[1])),
    )
    payload = _canonical_json([fingerprint, task, canonical_options, item])
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


_MAGIC = 0xA1  # high nibble: format tag, low nibble: version 1
_HEADER = struct.Struct("<BBIII")  # magic/version, ndim, rows, cols, num_tokens
_F32 = np.dtype("<f4")


def encode_value(data: Encodable, num_tokens: int) -> bytes:
    """Pack a pooled result as a fixed header plus float32 payload.

    No pickle: a cache shared between workers must never be a code-execution channel, and
    float32 is what the models produce, so nothing is lost. ``data`` may be a float, a
    (nested) sequence of floats, a numpy array or a torch tensor, of rank 0, 1 or 2.
    """
    array = _as_float32(data)
    if array.ndim > 2:
        raise ValueError(f"cannot cache a rank-{array.ndim} result (at most 2)")
    if not 0 <= num_tokens <= 0xFFFFFFFF:
        raise ValueError(f"num_tokens out of range: {num_tokens}")
    rows, cols = (array.shape[0], array.shape[1]) if array.ndim == 2 else (1, array.size)
    header = _HEADER.pack(_MAGIC, array.ndim, rows, cols, num_tokens)
    return header + np.ascontiguousarray(array, dtype=_F32).tobytes()


def _as_float32(data: Encodable) -> np.ndarray:
    """Convert without importing torch: a tensor can only exist if torch is already loaded."""
    torch_module = sys.modules.get("torch")
    if torch_module is not None and isinstance(data, torch_module.Tensor):
        data = data.detach().to(device="cpu", dtype=torch_module.float32).numpy()
    return np.asarray(data, dtype=_F32)


def decode_value(raw: bytes) -> tuple[Decoded, int]:
    """Unpack ``encode_value`` output — a float, or a float32 array of rank 1 or 2 — ; anything
    malformed raises ``ValueError``.

    The worker treats ``ValueError`` as a miss, so a corrupt or foreign entry costs one
    recomputation instead of a wrong answer. The payload length must match the header
    exactly, which rejects truncated and over-long values alike.
    """
    try:
        magic, ndim, rows, cols, num_tokens = _HEADER.unpack_from(raw)
    except (struct.error, TypeError) as exc:
        raise ValueError(f"cache value too short or not bytes: {exc}") from None
    if magic != _MAGIC:
        raise ValueError(f"not a poolworker cache value (magic byte {magic:#04x})")
    if ndim not in (0, 1, 2) or (ndim == 0 and cols != 1) or (ndim < 2 and rows != 1):
        raise ValueError(f"inconsistent header: ndim={ndim} rows={rows} cols={cols}")
    payload = memoryview(raw)[_HEADER.size :]
    if len(payload) != rows * cols * _F32.itemsize:
        raise ValueError(f"payload is {len(payload)} bytes, header says {rows}x{cols} float32")
    values = np.frombuffer(payload, dtype=_F32)  # read-only, no copy: results are never edited
    if not np.isfinite(values).all():  # never written by a worker (the model stage refuses them); published unchecked
        raise ValueError("the value holds a NaN or an infinity")
    if ndim == 0:
        return float(values[0]), num_tokens
    if ndim == 1:
        return values, num_tokens
    return values.reshape(rows, cols), num_tokens


# ----------------------------------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------------------------------
_SECRET_QUERY_KEYS = frozenset({"password", "username"})


def redact_url(url: str) -> str:
    """Replace credentials with ``***`` so a URL can go into logs and ``/metrics`` labels.

    ``:password@`` keeps its shape (``:***@``); ``user:password@`` and a bare ``user@`` (which
    older clients read as a password) become ``***@``. ``password=`` / ``username=`` query
    arguments, which redis-py also accepts, are masked too.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        netloc = (":***" if userinfo.startswith(":") else "***") + "@" + hostport
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs]
        query = urlencode(masked, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
class NullCache:
    """``--redis-url none``: every lookup misses and nothing is stored."""

    description = "none"
    available = True

    def __init__(self, *, metrics: CacheMetrics | None = None) -> None:
        self._metrics = metrics

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = [None] * len(keys)
        _count(self._metrics, values)
        return values

    def set_many(self, items: Mapping[str, bytes]) -> None:
        return None

    def close(self) -> None:
        return None


def is_null(cache: ResultCache) -> bool:
    """True for the cache that stores nothing: the worker then skips building keys and values."""
    return isinstance(cache, NullCache)


class MemoryCache:
    """In-process LRU with TTL, for ``poolworker dev`` when no Redis answers.

    Bounded by item count only: it is meant for a laptop, not for production-sized ColBERT
    matrices. Expired entries are dropped when read or when they reach the LRU end.
    """

    available = True

    def __init__(
        self,
        *,
        max_items: int = 100_000,
        ttl_s: float = DEFAULT_TTL_S,
        metrics: CacheMetrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_items < 1 or ttl_s <= 0:
            raise ValueError(f"max_items ({max_items}) and ttl_s ({ttl_s}) must be positive")
        self._max_items = max_items
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.description = f"memory max_items={max_items} ttl={ttl_s:g}s"

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        values: list[bytes | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and entry[0] <= now:
                    del self._entries[key]
                    entry = None
                if entry is not None:
                    self._entries.move_to_end(key)
                values.append(None if entry is None else entry[1])
        _count(self._metrics, values)
        return values

    def set_many(self, items: Mapping[str, bytes]) -> None:
        expires = self._clock() + self._ttl_s
        with self._lock:
            for key, value in items.items():
                self._entries[key] = (expires, value)
                self._entries.move_to_end(key)
            while len(self._entries) > self._max_items:
                self._entries.popitem(last=False)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


class RedisCache:
    """Redis backend that degrades to "always miss" while Redis is down and recovers alone.

    One MGET per lookup and one non-transactional pipeline of ``SET ... EX`` per store keep
    round trips at one per batch. On any failure the cache stops calling Redis until an
    exponential backoff deadline (0.5 s doubling to ``max_backoff_s``) passes, so an outage
    costs one failed round trip per backoff period instead of a socket timeout on every
    batch; exactly one call then probes Redis again.
    """

    INITIAL_BACKOFF_S = 0.5

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        prefix: str = "poolworker:",
        metrics: CacheMetrics | None = None,
        socket_timeout_s: float = 0.5,
        max_backoff_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive (Redis rejects EX {ttl_s})")
        self._client = _redis_client(url, socket_timeout_s)
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._metrics = metrics
        self._max_backoff_s = max(max_backoff_s, self.INITIAL_BACKOFF_S)
        self._clock = clock
        self._lock = threading.Lock()
        self._down = False
        self._backoff_s = self.INITIAL_BACKOFF_S
        self._retry_at = 0.0
        self.description = f"{redact_url(url)} ttl={ttl_s}s"

    @property
    def available(self) -> bool:
        """False from the first failure until a call succeeds again."""
        return not self._down

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = [None] * len(keys)
        if keys and self._may_call():
            try:
                values = self._client.mget([self._prefix + key for key in keys])
            except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
                self._failed("get", exc)
            else:
                self._succeeded()
        _count(self._metrics, values)
        return values

    def set_many(self, items: Mapping[str, bytes]) -> None:
        if not items or not self._may_call():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(self._prefix + key, value, ex=self._ttl_s)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
            self._failed("set", exc)
        else:
            self._succeeded()

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # noqa: BLE001 - shutting down must not fail on a dead socket
            log.debug("closing %s: %s", self.description, exc)

    def _may_call(self) -> bool:
        """Whether this call may use the network; during an outage only one probe per period."""
        if not self._down:
            return True
        with self._lock:
            now = self._clock()
            if now < self._retry_at:
                return False
            # Push the deadline before probing so concurrent callers keep skipping meanwhile.
            self._retry_at = now + self._backoff_s
            return True

    def _failed(self, operation: str, exc: Exception) -> None:
        if self._metrics is not None:
            self._metrics.error()
        with self._lock:
            if self._down:
                self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
                log.debug("cache %s failed again (%s); next try in %.1fs", operation, exc, self._backoff_s)
            else:
                self._down = True
                log.warning(
                    "cache unavailable: %s on %s failed (%s: %s); serving misses until it answers",
                    operation, self.description, type(exc).__name__, exc,
                )
            self._retry_at = self._clock() + self._backoff_s

    def _succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            if self._down:
                self._down = False
                self._backoff_s = self.INITIAL_BACKOFF_S
                log.info("cache reconnected: %s", self.description)


def _redis_client(url: str, timeout_s: float) -> redis.Redis:
    """A client without redis-py's own retries: the cache's backoff is the only retry policy,
    so a dead Redis costs one connection attempt per call that reaches it, bounded by
    ``timeout_s``. The URL goes to redis-py unchanged (``rediss://`` TLS, AUTH, ``?db=``)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------
PING_TIMEOUT_S = 0.5


def make_cache(
    url: str | None,
    *,
    dev: bool = False,
    ttl_s: int = DEFAULT_TTL_S,
    metrics: CacheMetrics | None = None,
) -> ResultCache:
    """Pick the backend for a ``--redis-url`` value.

    In production a configured Redis is always used, even if it is down at start-up: it
    degrades and reconnects, and silently switching to a per-process cache would hide the
    outage. In dev mode a missing Redis is normal, so an in-process cache stands in.
    """
    if url is None or url.strip().lower() in NONE_URLS:
        return NullCache(metrics=metrics)
    if dev and not answers_ping(url, PING_TIMEOUT_S):
        log.warning("no Redis answers at %s; dev mode uses an in-process cache", redact_url(url))
        return MemoryCache(ttl_s=ttl_s, metrics=metrics)
    return RedisCache(url, ttl_s=ttl_s, metrics=metrics)


def answers_ping(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis answers PING at ``url``. A malformed URL still raises: that is a configuration error, not an absent server."""
    client = _redis_client(url, timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
