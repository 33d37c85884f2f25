"""The gateway's ASGI app: vLLM's and TEI's HTTP routes, each call one request on the pool.

Handlers only translate: the HTTP body becomes a pool request (``vllm.pool_request`` /
``tei.TEI_ROUTES``), ``Pool.call`` sends it and awaits the result under the deadline and the
in-flight cap, and the result becomes vLLM's or TEI's response body, or its error body with
vLLM's status codes. Nothing here validates fields the workers validate: the worker is the one
place that says what a request means, so a body is answered the same over HTTP as on Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import tei, vllm
from .errors import GatewayError, bad_request, from_pool
from .metrics import GatewayMetrics
from .pool import Pool
from .settings import GatewaySettings

log = logging.getLogger(__name__)

#: Response header naming the request fields the workers ignored (vLLM ignores unknown fields
#: silently; the pool says which, and the body must stay exactly vLLM's).
WARNINGS_HEADER = "x-poolworker-warnings"


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=dict(headers or {}))


async def _read_body(request: Request) -> dict[str, Any]:
    """The JSON object in the body, or vLLM's 400 for anything else."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise bad_request("Unsupported Media Type: Only 'application/json' is allowed")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _warnings(result: Mapping[str, Any]) -> dict[str, str]:
    names = result.get("warnings")
    return {WARNINGS_HEADER: json.dumps(names, ensure_ascii=True)} if names else {}


class Gateway:
    """The handlers, bound to one ``Pool`` and one ``GatewayMetrics``."""

    def __init__(self, settings: GatewaySettings, pool: Pool | None, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.default_model = settings.models[0] if settings.models else None

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """The pool's successful result for ``request``; its error as ``GatewayError``."""
        if self.pool is None:
            raise GatewayError(HTTPStatus.SERVICE_UNAVAILABLE, "the gateway is not connected to the pool yet")
        self.metrics.inflight(self.pool.inflight + 1)
        try:
            result = await self.pool.call(request)
        finally:
            self.metrics.inflight(self.pool.inflight)
        if result.get("error"):
            raise from_pool(result["error"])
        return result

    async def vllm_call(self, route: vllm.Route, body: dict[str, Any], request: Request) -> Response:
        result = await self._ask(vllm.pool_request(route, body, self.default_model))
        rid = vllm.response_id(route, body, request.headers.get("x-request-id"), uuid.uuid4().hex)
        if body.get("encoding_format") in vllm.RAW_FORMATS:
            content, headers = vllm.bytes_response(body, result, rid)
            return Response(content, media_type="application/octet-stream", headers={**headers, **_warnings(result)})
        return _json(vllm.response_body(route, result, rid), headers=_warnings(result))

    async def invocations(self, body: dict[str, Any], request: Request) -> Response:
        """SageMaker's one route: the body says which API it is for. An ``input`` body goes as
        an embedding first and, if the model cannot embed, as a classification (vLLM's order)."""
        route = vllm.invocation_route(body)
        try:
            return await self.vllm_call(route, body, request)
        except GatewayError as exc:
            if route is not vllm.EMBED or exc.pool_type != "unsupported_task":
                raise
            return await self.vllm_call(vllm.CLASSIFY, body, request)

    async def tei_call(self, route: tei.TeiRoute, body: dict[str, Any]) -> Response:
        request = route.request(body)
        if request.get("model") is None and self.default_model is not None:
            request["model"] = self.default_model
        result = await self._ask(request)
        return _json(route.response(result, body), headers=_warnings(result))


Handler = Callable[[dict[str, Any], Request], Awaitable[Response]]


def create_app(settings: GatewaySettings, pool: Pool | None = None, metrics: GatewayMetrics | None = None) -> FastAPI:
    """The app. Without ``pool`` it connects at startup (creating its reply topic) and
    disconnects at shutdown; a given ``pool`` is the caller's to close."""
    metrics = metrics or GatewayMetrics()
    gateway = Gateway(settings, pool, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        owned = gateway.pool is None
        if owned:
            gateway.pool = await asyncio.to_thread(Pool, settings)
            log.info("gateway connected; replies on %s", gateway.pool.reply_topic)
        try:
            yield
        finally:
            if owned and gateway.pool is not None:
                await asyncio.to_thread(gateway.pool.close)

    app = FastAPI(title="poolworker gateway", version=__version__, lifespan=lifespan)
    app.state.gateway = gateway

    def post(path: str, handler: Handler, *, tei_errors: Callable[[dict[str, Any]], bool] = lambda _b: False) -> None:
        """Register ``handler`` on ``path``: body read, errors written in the route's dialect
        (TEI's when ``tei_errors(body)``), the call counted and timed."""

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            body: dict[str, Any] = {}
            try:
                body = await _read_body(request)
                response = await handler(body, request)
            except GatewayError as exc:
                if tei_errors(body):
                    status, content = exc.tei()
                    response = _json(content, status, exc.headers())
                else:
                    response = _json(exc.vllm_body(), exc.status, exc.headers())
            except Exception:
                log.exception("unexpected failure on %s", path)
                error = GatewayError(500, "internal error in the gateway")
                response = _json(error.vllm_body(), 500)
            metrics.answered(path, response.status_code, time.perf_counter() - start)
            return response

        app.add_api_route(path, endpoint, methods=["POST"], name=path)

    for path, route in vllm.ROUTES.items():
        if path != "/rerank":  # shared with TEI's /rerank, below
            post(path, lambda body, request, route=route: gateway.vllm_call(route, body, request))

    async def rerank(body: dict[str, Any], request: Request) -> Response:
        if tei.is_tei_rerank(body):
            return await gateway.tei_call(tei.TEI_RERANK, body)
        return await gateway.vllm_call(vllm.RERANK, body, request)

    post("/rerank", rerank, tei_errors=tei.is_tei_rerank)
    post("/invocations", gateway.invocations)
    for path, tei_route in tei.TEI_ROUTES.items():
        post(path, lambda body, request, tei_route=tei_route: gateway.tei_call(tei_route, body), tei_errors=lambda _b: True)

    @app.get("/v1/models")
    async def models() -> Response:
        return _json(vllm.model_list(settings.models))

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if gateway.pool is not None else 503)

    @app.get("/version")
    async def version() -> Response:
        return _json({"version": __version__})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths and wrong methods, in vLLM's error body (as its handler writes them)."""
        error = GatewayError(exc.status_code, str(exc.detail), type=HTTPStatus(exc.status_code).phrase)
        return _json(error.vllm_body(), exc.status_code)

    return app


__all__ = ["WARNINGS_HEADER", "Gateway", "create_app"]
