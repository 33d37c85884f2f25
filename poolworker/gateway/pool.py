"""``Pool``: the gateway's one client of the worker pool — a request out with a deadline and a
reply address, the result back, or a typed reason why not.

Each gateway instance reads only its own reply topic (``GatewaySettings.reply_topic``) through
one ``PoolClient``: every request names it in ``reply_to``, so N gateways behind a load balancer
never read each other's results, and a restarted gateway loses only the calls it had in flight
(their results land on a topic read from its end at start, and are skipped). Workers answer on
it only if it matches their ``--allowed-reply-topics``; otherwise they answer on their results
topic and every call here ends in 504.

The deadline travels as the record header ``deadline_ms`` (absolute Unix epoch milliseconds,
ASCII digits): a worker that reaches the request after it answers ``expired`` without computing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from ..client import PoolClient
from ..protocol import DEADLINE_HEADER
from .errors import GatewayError
from .settings import GatewaySettings

log = logging.getLogger(__name__)



def open_client(settings: GatewaySettings, reply_topic: str) -> PoolClient:
    """A ``PoolClient`` reading ``reply_topic``. On Kafka the reply topic (and the request topic,
    if no worker made it yet) are created first: a worker producing to a missing topic would
    stall on its metadata, and the client needs the topic to exist to read it."""
    if settings.transport.startswith("kafka"):
        from ..config import options_for
        from ..consumers.topics import ensure_topics

        admin = {"bootstrap_servers": settings.bootstrap_servers, **options_for("admin", settings.kafka_options)}
        ensure_topics(admin, [settings.requests_topic], partitions=settings.partitions,
                      replication_factor=settings.replication_factor)
        ensure_topics(admin, [reply_topic], partitions=settings.reply_partitions,
                      replication_factor=settings.replication_factor)
    return PoolClient(settings.servers, requests_topic=settings.requests_topic, results_topic=reply_topic,
                      transport=settings.transport, **settings.kafka_options)


class Pool:
    """Forwards calls to the pool with a deadline, under an in-flight cap.

    ``call`` runs on the event loop; the send itself runs on one sender thread (a queue client's
    send may block on metadata or a full buffer, which must never stall the loop)."""

    def __init__(self, settings: GatewaySettings, client: PoolClient | None = None, reply_topic: str | None = None) -> None:
        self.settings = settings
        self.reply_topic = reply_topic or (client.results_topic if client is not None else settings.reply_topic())
        self.client = client if client is not None else open_client(settings, self.reply_topic)
        self.inflight = 0  # touched on the event loop thread only
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-send")

    async def call(self, request: Mapping[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """The result message for ``request`` (a request body in the message contract, without
        ``request_id``/``reply_to``: both are the gateway's). Raises ``GatewayError``: 429 at
        the in-flight cap, 503 when the queue refuses the record, 504 past the deadline."""
        if self.inflight >= self.settings.max_inflight:
            raise GatewayError(HTTPStatus.TOO_MANY_REQUESTS, f"the gateway has {self.inflight} calls in flight, its limit "
                               "(max_inflight); retry later", retry_after_s=self.settings.retry_after_s)
        timeout_s = self.settings.timeout_s if timeout_s is None else timeout_s
        request_id = uuid.uuid4().hex
        deadline_ms = int((time.time() + timeout_s) * 1000)
        message = {**request, "request_id": request_id, "reply_to": self.reply_topic}
        headers = [(DEADLINE_HEADER, str(deadline_ms).encode("ascii")), ("request_id", request_id.encode("ascii"))]
        self.inflight += 1
        try:
            sent: Future = self._sender.submit(self.client.submit, message, headers=headers)
            try:
                return await asyncio.wait_for(self._answer(sent), timeout_s)
            except TimeoutError:
                # the send may still be running: forget the id once it has registered it, too
                sent.add_done_callback(lambda _: self.client.forget(request_id))
                self.client.forget(request_id)
                raise GatewayError(HTTPStatus.GATEWAY_TIMEOUT, f"no result from the pool within {timeout_s:g} s "
                                   "(are workers running, and do they allow this gateway's reply topic?)") from None
        finally:
            self.inflight -= 1

    @staticmethod
    async def _answer(sent: Future) -> dict[str, Any]:
        try:
            pending = await asyncio.wrap_future(sent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not send a request to the pool: %s", exc)
            raise GatewayError(HTTPStatus.SERVICE_UNAVAILABLE, f"the queue did not take the request: {type(exc).__name__}") from exc
        return await asyncio.wrap_future(pending)

    def close(self) -> None:
        self._sender.shutdown(wait=True, cancel_futures=True)
        self.client.close()


__all__ = ["Pool", "open_client"]
