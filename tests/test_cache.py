"""poolworker.cache against a real Redis: values, keys, backends, outages and the Redis scripts.

Redis comes from POOLWORKER_TEST_REDIS_URL (set by scripts/test.sh), else 127.0.0.1:6379, else a
private redis-server started here. Tests that stop the server always use a private one, and
tests on a shared server only touch keys under a per-test prefix.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from hypothesis import given
from hypothesis import strategies as st
from services import RedisServer, answers_ping, free_port, redis_server_binary

from poolworker.cache import (
    MemoryCache,
    NullCache,
    RedisCache,
    cache_key,
    decode_value,
    encode_value,
    make_cache,
    redact_url,
)

ROOT = Path(__file__).resolve().parents[1]
ENSURE_REDIS = ROOT / "scripts" / "ensure-redis.sh"
LOGGER = "poolworker.cache"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
class SilentListener:
    """A TCP port that accepts connections and never answers: counts real network attempts."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.accepted: list[socket.socket] = []

    def new_connections(self) -> int:
        """Connections made since the last call (the kernel completes them from the backlog)."""
        before = len(self.accepted)
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except BlockingIOError:
                return len(self.accepted) - before

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@dataclass
class Recorder:
    """CacheMetrics that counts what it is told."""

    hits: int = 0
    misses: int = 0
    errors: int = 0

    def hit(self, n: int) -> None:
        self.hits += n

    def miss(self, n: int) -> None:
        self.misses += n

    def error(self) -> None:
        self.errors += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix(raw: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own, removed afterwards (the server may be shared)."""
    value = f"poolworker-test:{uuid.uuid4().hex}:"
    yield value
    keys = list(raw.scan_iter(match=value + "*"))
    if keys:
        raw.delete(*keys)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------------------------
# encode_value / decode_value
# ----------------------------------------------------------------------------------------------
ROUND_TRIP_INPUTS = {
    "float": 0.1,
    "int": 3,
    "vector": [0.1, -2.5, 1e-8, 3.4e38],
    "empty vector": [],
    "matrix": [[0.1, 0.2, 0.3], [-1.0, 7.25, 1e-3]],
    "numpy f64 vector": np.linspace(-1, 1, 17),
    "numpy f32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "numpy 0-d": np.float32(1.0 / 3.0),
    "torch vector": torch.linspace(-3, 3, 9),
    "torch bf16 matrix": torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).bfloat16(),
    "torch 0-d f64": torch.tensor(2.0 / 3.0, dtype=torch.float64),
}


def as_float32(data: object) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.float().numpy()
    return np.asarray(data, dtype=np.float32)


@pytest.mark.parametrize("data", ROUND_TRIP_INPUTS.values(), ids=ROUND_TRIP_INPUTS.keys())
def test_round_trip_is_exact_float32(data: object) -> None:
    expected = as_float32(data)
    decoded, num_tokens = decode_value(encode_value(data, num_tokens=42))
    assert num_tokens == 42
    if expected.ndim == 0:
        assert type(decoded) is float
    else:
        assert isinstance(decoded, np.ndarray) and decoded.dtype == np.float32 and decoded.shape == expected.shape
    assert np.asarray(decoded).tolist() == expected.tolist()
    assert np.asarray(decoded, dtype=np.float32).tobytes() == expected.tobytes()


def test_encoding_is_header_plus_little_endian_float32() -> None:
    raw = encode_value([1.5, -2.0, 0.25], num_tokens=7)
    assert raw.endswith(struct.pack("<3f", 1.5, -2.0, 0.25))
    header = raw[: -3 * 4]
    assert len(header) <= 16
    assert b"pickle" not in raw and not raw.startswith(b"\x80")  # not a pickle stream


def test_encode_rejects_what_cannot_round_trip() -> None:
    with pytest.raises(ValueError):
        encode_value(np.zeros((2, 2, 2)), num_tokens=1)
    with pytest.raises(ValueError):
        encode_value([1.0], num_tokens=-1)
    with pytest.raises(ValueError):
        encode_value([[1.0, 2.0], [3.0]], num_tokens=1)


def test_decode_rejects_garbage() -> None:
    good = encode_value([[1.0, 2.0], [3.0, 4.0]], num_tokens=5)
    bad = [b"", b"\x00", b"hello world, not a value", good[:-1], good + b"\x00", b"\x00" + good[1:]]
    bad += [good[:n] for n in range(len(good))]  # every truncation
    for raw in bad:
        with pytest.raises(ValueError):
            decode_value(raw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_decode_refuses_non_finite_values_as_a_miss(bad) -> None:
    """Results are published without walking their arrays (the model stage checked them), so a
    cached value that was not written by a worker must not bring a NaN back in."""
    for raw in (encode_value([1.0, bad], num_tokens=2), encode_value([[1.0], [bad]], num_tokens=2), encode_value(bad, num_tokens=1)):
        with pytest.raises(ValueError, match="NaN or an infinity"):
            decode_value(raw)


def test_decode_rejects_inconsistent_headers() -> None:
    vector = encode_value([1.0, 2.0, 3.0, 4.0], num_tokens=0)
    magic = vector[0]
    # ndim 3, a "vector" claiming two rows, a scalar claiming four columns: all 16-byte payloads.
    for ndim, rows, cols in [(3, 2, 2), (1, 2, 2), (0, 1, 4), (0, 4, 1)]:
        forged = struct.pack("<BBIII", magic, ndim, rows, cols, 0) + vector[-16:]
        with pytest.raises(ValueError):
            decode_value(forged)


@given(st.binary(max_size=64))
def test_decode_of_arbitrary_bytes_decodes_or_raises_value_error(raw: bytes) -> None:
    try:
        decode_value(raw)
    except ValueError:
        pass


# ----------------------------------------------------------------------------------------------
# cache_key
# ----------------------------------------------------------------------------------------------
BASE = {
    "fingerprint": "model@abc123", "task": "embed", "options": {"normalize": True, "dimensions": 256}, "item": "hello"
}


def key(**overrides: object) -> str:
    args = {**BASE, **overrides}
    return cache_key(args["fingerprint"], args["task"], args["options"], args["item"])


def test_cache_key_is_stable_sha256_hex() -> None:
    assert key() == key()
    assert len(key()) == 64 and int(key(), 16) >= 0
    # Pinned: keys outlive a deployment, so a format change must be a deliberate decision
    # (it turns every cached entry into a miss), never an accident.
    assert key() == "c4cdb39ec28a401d18f721e717f57554714f8f6543a138853fc555bcfb3250fb"


def test_cache_key_ignores_option_order() -> None:
    as_pairs = [("dimensions", 256), ("normalize", True)]
    assert key(options=as_pairs) == key(options=list(reversed(as_pairs))) == key()


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": "model@abc124"},
        {"task": "classify"},
        {"options": {"normalize": False, "dimensions": 256}},
        {"options": {"normalize": True, "dimensions": 128}},
        {"options": {"normalize": True, "dims": 256}},
        {"options": {"normalize": True}},
        {"options": {"normalize": True, "dimensions": 256, "truncate": 32}},
        {"options": {"normalize": 1, "dimensions": 256}},
        {"item": "hello!"},
        {"item": [101, 7592, 102]},
        {"item": ["hello", "world"]},
    ],
    ids=repr,
)
def test_cache_key_changes_with_every_component(change: dict[str, object]) -> None:
    assert key(**change) != key()


def test_cache_key_items_keep_their_type_and_order() -> None:
    assert key(item=["a", "b"]) != key(item=["b", "a"])
    assert key(item=[1, 2]) != key(item=["1", "2"]) != key(item="[1, 2]")


# ----------------------------------------------------------------------------------------------
# redact_url
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://user:secret@h:1/0", "redis://***@h:1/0"),
        ("rediss://:secret@h:1", "rediss://:***@h:1"),
        ("redis://h:6379/0?password=secret&db=2", "redis://h:6379/0?password=***&db=2"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert "secret" not in redact_url(url)


def test_description_is_redacted() -> None:
    cache = RedisCache("rediss://:secret@cache.internal:6380/0", ttl_s=600)
    assert cache.description == "rediss://:***@cache.internal:6380/0 ttl=600s"
    assert cache._client.connection_pool.connection_class is redis.SSLConnection
    cache.close()


# ----------------------------------------------------------------------------------------------
# RedisCache on a live server
# ----------------------------------------------------------------------------------------------
def test_redis_round_trip_ttl_prefix_and_metrics(redis_url: str, raw: redis.Redis, prefix: str) -> None:
    metrics = Recorder()
    cache = RedisCache(redis_url, ttl_s=120, prefix=prefix, metrics=metrics)
    items = {"a": encode_value([1.0, 2.0], 3), "b": b"\x00raw\xffbytes"}
    cache.set_many(items)

    assert cache.get_many(["a", "missing", "b", "a"]) == [items["a"], None, items["b"], items["a"]]
    assert (metrics.hits, metrics.misses, metrics.errors) == (3, 1, 0)
    assert cache.available
    for name, value in items.items():
        assert raw.get(prefix + name) == value
        assert 0 < raw.ttl(prefix + name) <= 120
    assert sorted(raw.scan_iter(match=prefix + "*")) == sorted((prefix + k).encode() for k in items)
    cache.close()


def test_redis_empty_batches_are_no_ops(redis_url: str, prefix: str) -> None:
    metrics = Recorder()
    cache = RedisCache(redis_url, prefix=prefix, metrics=metrics)
    assert cache.get_many([]) == []
    cache.set_many({})
    assert metrics == Recorder()
    cache.close()


def test_redis_one_round_trip_per_batch(private_redis: RedisServer) -> None:
    """One MGET per lookup and plain pipelined SETs (no MULTI) per store, seen by the server."""
    raw = redis.Redis.from_url(private_redis.url())
    cache = RedisCache(private_redis.url(), ttl_s=60)
    raw.config_resetstat()
    cache.set_many({f"k{i}": b"v" for i in range(50)})
    cache.get_many([f"k{i}" for i in range(80)])
    stats = raw.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert stats["cmdstat_set"]["calls"] == 50
    assert "cmdstat_multi" not in stats and "cmdstat_exec" not in stats
    cache.close()
    raw.close()


def test_redis_auth_with_password_and_acl_user(tmp_path: Path) -> None:
    server = RedisServer(
        tmp_path, "--requirepass", "s3cret", "--user", "alice", "on", ">wonder", "~*", "&*", "+@all"
    )
    server.start()
    try:
        for credentials in (":s3cret@", "alice:wonder@"):
            cache = RedisCache(server.url(credentials))
            cache.set_many({credentials: b"ok"})
            assert cache.get_many([credentials]) == [b"ok"] and cache.available
            assert "s3cret" not in cache.description and "wonder" not in cache.description
            cache.close()
        metrics = Recorder()
        wrong = RedisCache(server.url(":wrong@"), metrics=metrics)
        assert wrong.get_many(["x"]) == [None]
        assert metrics.errors == 1 and not wrong.available
        wrong.close()
    finally:
        server.stop()


def test_tls_url_against_plain_server_degrades(private_redis: RedisServer) -> None:
    metrics = Recorder()
    cache = RedisCache(f"rediss://127.0.0.1:{private_redis.port}/0", metrics=metrics)
    assert cache.get_many(["a", "b"]) == [None, None]
    cache.set_many({"a": b"x"})  # in backoff: dropped without raising
    assert metrics.errors == 1 and not cache.available
    cache.close()


# ----------------------------------------------------------------------------------------------
# Outages
# ----------------------------------------------------------------------------------------------
def test_outage_degrades_backs_off_and_reconnects(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    metrics = Recorder()
    cache = RedisCache(private_redis.url(), metrics=metrics, socket_timeout_s=0.5)
    cache.set_many({"a": b"1"})
    assert cache.get_many(["a"]) == [b"1"]

    private_redis.stop()
    assert cache.get_many(["a", "b"]) == [None, None]
    assert metrics.errors == 1 and not cache.available

    # During the backoff nothing reaches the network: a listener on the port sees no connection.
    listener = SilentListener(private_redis.port)
    try:
        started = time.monotonic()
        for _ in range(100):
            assert cache.get_many(["a"]) == [None]
            cache.set_many({"a": b"2"})
        assert time.monotonic() - started < 0.25
        assert listener.new_connections() == 0
        assert metrics.errors == 1

        # Past the first deadline (0.5 s) exactly one call probes; it fails, the backoff doubles.
        time.sleep(0.6)
        assert cache.get_many(["a"]) == [None]
        failed_at = time.monotonic()
        cache.get_many(["a"])
        assert listener.new_connections() == 1
        assert metrics.errors == 2
    finally:
        listener.close()

    private_redis.start()
    sleep_until(failed_at + 0.7)  # past the first backoff but not the doubled one: still skipping
    assert cache.get_many(["a"]) == [None] and not cache.available
    sleep_until(failed_at + 1.1)
    assert cache.get_many(["a"]) == [None]  # reached Redis: the restarted server is empty
    assert cache.available
    cache.set_many({"a": b"3"})
    assert cache.get_many(["a"]) == [b"3"]
    assert metrics.errors == 2

    assert len(messages(caplog, logging.WARNING, "cache unavailable")) == 1
    assert len(messages(caplog, logging.INFO, "cache reconnected")) == 1
    cache.close()


def test_backoff_doubles_to_its_cap_and_resets_after_success(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    port = free_port()
    url = f"redis://:pw@127.0.0.1:{port}/0"
    cache = RedisCache(url, clock=clock, socket_timeout_s=0.1, max_backoff_s=4.0)

    def probe_times(listener: SilentListener, until: float) -> list[float]:
        """Call the cache every 0.25 s of fake time; return when it actually connected."""
        times = []
        while clock.now <= until:
            cache.get_many(["k"])
            if listener.new_connections():
                times.append(clock.now)
            clock.now += 0.25
        return times

    listener = SilentListener(port)
    try:
        assert probe_times(listener, until=12.0) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]
    finally:
        listener.close()
    assert not cache.available

    server = RedisServer(tmp_path, "--requirepass", "pw", port=port)
    server.start()
    clock.now = 15.5
    cache.get_many(["k"])
    assert cache.available
    server.stop()

    clock.now = 20.0
    cache.get_many(["k"])  # a new outage: fails at 20.0, first retry due 0.5 s later, not 4 s
    listener = SilentListener(port)
    try:
        assert probe_times(listener, until=22.0) == [20.5, 21.5]
    finally:
        listener.close()
    assert len(messages(caplog, logging.WARNING, "cache unavailable")) == 2  # one per outage
    assert "pw@" not in caplog.text
    cache.close()


def test_concurrent_callers_send_one_probe_per_deadline() -> None:
    clock = FakeClock()
    port = free_port()
    cache = RedisCache(f"redis://:pw@127.0.0.1:{port}/0", clock=clock, socket_timeout_s=0.2)
    listener = SilentListener(port)
    try:
        cache.get_many(["k"])
        assert listener.new_connections() == 1 and not cache.available
        clock.now = 0.5
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda _: cache.get_many(["k"]), range(32)))
        assert results == [[None]] * 32
        assert listener.new_connections() == 1
    finally:
        listener.close()
        cache.close()


# ----------------------------------------------------------------------------------------------
# make_cache, NullCache, MemoryCache
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [None, "", "none", "None"])
def test_make_cache_none_is_null_cache(url: str | None) -> None:
    metrics = Recorder()
    cache = make_cache(url, metrics=metrics)
    assert isinstance(cache, NullCache) and cache.available
    cache.set_many({"a": b"1"})
    assert cache.get_many(["a", "b"]) == [None, None]
    assert (metrics.hits, metrics.misses) == (0, 2)


def test_make_cache_dev_without_redis_is_memory(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    started = time.monotonic()
    cache = make_cache(f"redis://:pw@127.0.0.1:{free_port()}/0", dev=True)
    assert time.monotonic() - started < 1.0
    assert isinstance(cache, MemoryCache)
    assert messages(caplog, logging.WARNING, "in-process cache") and "pw@" not in caplog.text


def test_make_cache_uses_redis_when_it_answers_or_outside_dev(redis_url: str, raw: redis.Redis) -> None:
    metrics = Recorder()
    dev = make_cache(redis_url, dev=True, ttl_s=30, metrics=metrics)
    assert isinstance(dev, RedisCache) and dev.description.endswith("ttl=30s")
    name = f"make-cache-{uuid.uuid4().hex}"
    try:
        dev.set_many({name: b"v"})
        assert dev.get_many([name]) == [b"v"] and metrics.hits == 1
        assert 0 < raw.ttl("poolworker:" + name) <= 30
    finally:
        raw.delete("poolworker:" + name)
        dev.close()

    down = make_cache(f"redis://127.0.0.1:{free_port()}/0", metrics=metrics)
    assert isinstance(down, RedisCache)  # production never swaps in a per-process cache
    assert down.get_many(["a"]) == [None] and metrics.errors == 1
    down.close()


def test_memory_cache_evicts_least_recently_used() -> None:
    metrics = Recorder()
    cache = MemoryCache(max_items=3, metrics=metrics)
    cache.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert cache.get_many(["a"]) == [b"1"]  # "a" is now the most recently used
    cache.set_many({"d": b"4"})
    assert cache.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]
    assert len(cache) == 3
    assert (metrics.hits, metrics.misses) == (4, 1)


def test_memory_cache_expires_after_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_s=10, clock=clock)
    cache.set_many({"a": b"1"})
    clock.now = 9.99
    assert cache.get_many(["a"]) == [b"1"]
    cache.set_many({"b": b"2"})
    clock.now = 10.0
    assert cache.get_many(["a", "b"]) == [None, b"2"]
    assert len(cache) == 1
    clock.now = 20.0
    assert cache.get_many(["b"]) == [None]


# ----------------------------------------------------------------------------------------------
# scripts/ensure-redis.sh
# ----------------------------------------------------------------------------------------------
def run_ensure_redis(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[str, int | None]:
    """Run the script; return its stdout and the pid of the server it started, if it started one."""
    inherited = {k: v for k, v in os.environ.items() if k != "ENSURE_REDIS_PORT"}
    env = {**inherited, **(env or {})}
    pidfile = tmp_path / "redis.pid"
    pidfile.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(ENSURE_REDIS), str(pidfile)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    if done.stdout.strip().endswith(f":{env.get('ENSURE_REDIS_PORT', '6379')}/0"):
        assert not pidfile.exists()
        return done.stdout, None
    deadline = time.monotonic() + 5
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the daemon may write its pidfile just after it starts answering
    return done.stdout, int(pidfile.read_text())


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    """Servers started by the script under test, stopped by pid afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_ensure_redis_prints_a_usable_url(tmp_path: Path, started_pids: list[int]) -> None:
    out, pid = run_ensure_redis(tmp_path)
    started_pids.extend([pid] if pid else [])
    assert out.count("\n") == 1 and out.startswith("redis://127.0.0.1:")
    assert answers_ping(out.strip())
    assert (pid is None) == answers_ping("redis://127.0.0.1:6379/0")


def test_ensure_redis_starts_its_own_when_none_is_usable(
    private_redis: RedisServer, tmp_path: Path, started_pids: list[int]
) -> None:
    """A dead port and a server that wants AUTH are both passed over; apt-get is not needed."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt_log = tmp_path / "apt.log"
    (fake_bin / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {apt_log}\n")
    (fake_bin / "apt-get").chmod(0o755)
    path = f"{fake_bin}:{os.environ['PATH']}"
    with redis.Redis.from_url(private_redis.url()) as admin:
        admin.config_set("requirepass", "pw")

    for port in (free_port(), private_redis.port):
        out, pid = run_ensure_redis(tmp_path, {"ENSURE_REDIS_PORT": str(port), "PATH": path})
        assert pid is not None
        started_pids.append(pid)
        assert f":{port}/" not in out and answers_ping(out.strip())
    assert not apt_log.exists()


def test_ensure_redis_installs_redis_server_only_when_missing(
    tmp_path: Path, started_pids: list[int]
) -> None:
    """With redis-server off PATH, the script calls apt-get (a fake that links the real binary)."""
    real = redis_server_binary()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("bash", "timeout", "seq", "sleep", "id"):
        (fake_bin / tool).symlink_to(shutil.which(tool))
    (fake_bin / "python3").symlink_to(os.path.realpath(sys.executable))
    apt_log = tmp_path / "apt.log"
    (fake_bin / "apt-get").write_text(
        f"#!{shutil.which('bash')}\necho \"$*\" >> {apt_log}\n"
        f"[ \"$1\" = install ] && {shutil.which('ln')} -s {real} {fake_bin}/redis-server\nexit 0\n"
    )
    (fake_bin / "apt-get").chmod(0o755)
    (fake_bin / "sudo").write_text(f"#!{shutil.which('bash')}\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n")
    (fake_bin / "sudo").chmod(0o755)

    out, pid = run_ensure_redis(tmp_path, {"ENSURE_REDIS_PORT": str(free_port()), "PATH": str(fake_bin)})
    assert pid is not None
    started_pids.append(pid)
    assert answers_ping(out.strip())
    assert apt_log.read_text().splitlines() == ["update", "install -y redis-server"]
