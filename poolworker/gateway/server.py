"""Running the gateway: ``serve`` (the command, until a signal) and ``serve_in_thread`` (a gateway
on a thread of the calling process, for ``poolworker dev``, tests and benchmarks).

The listening socket is bound here, before uvicorn starts, so port 0 gives a known port at once
and a port already taken is a clear error rather than a log line on another thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass

import uvicorn

from .app import create_app
from .settings import GatewaySettings

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # says TCP, and with Nagle on each response's body waits for the client's delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def _server(settings: GatewaySettings, log_level: str) -> tuple[uvicorn.Server, socket.socket]:
    sock = _bind(settings.host, settings.port)
    config = uvicorn.Config(create_app(settings), log_level=log_level.lower(), access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(settings.timeout_s)))
    return uvicorn.Server(config), sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(settings: GatewaySettings, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers: in-flight calls finish first)."""
    server, sock = _server(settings, log_level)
    log.info("gateway on %s", _url(sock))
    server.run(sockets=[sock])


@dataclass
class GatewayHandle:
    """A gateway running on a thread: its base ``url``; ``stop()`` ends it."""

    url: str
    settings: GatewaySettings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def reply_topic(self) -> str:
        return self.server.config.app.state.gateway.pool.reply_topic

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def serve_in_thread(settings: GatewaySettings, *, log_level: str = "warning", start_timeout_s: float = 60.0) -> GatewayHandle:
    """Start a gateway on a daemon thread and return once it answers (connected to the pool,
    its reply topic created). Raises ``RuntimeError`` if it does not start in time."""
    server, sock = _server(settings, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="poolworker-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the gateway did not start; see the log above (is the broker reachable?)")
        time.sleep(0.02)
    return GatewayHandle(_url(sock), settings, server, thread)


__all__ = ["GatewayHandle", "serve", "serve_in_thread"]
