"""Real services for tests: a Redis server the tests can own (stop, restart) and the session's
shared Redis URL. Registered as a pytest plugin by conftest.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from poolworker.broker import free_port, stop_process
from poolworker.cache import answers_ping, redact_url


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: run scripts/ensure-redis.sh (it installs it with "
            "apt-get) or set POOLWORKER_TEST_REDIS_URL; the cache tests need a real Redis"
        )
    return binary


class RedisServer:
    """A redis-server owned by one test, so it can be stopped and restarted on the same port."""

    def __init__(self, workdir: Path, *extra_args: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, credentials: str = "") -> str:
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.workdir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(log), *self.extra_args],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server on port {self.port} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        """Any reply to PING (even -NOAUTH) means the server is up."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return bool(s.recv(64))
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("POOLWORKER_TEST_REDIS_URL")
    if url:
        if not answers_ping(url):
            pytest.fail(f"POOLWORKER_TEST_REDIS_URL={redact_url(url)} does not answer PING")
        yield url
    elif answers_ping("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
    else:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        yield server.url()
        server.stop()


