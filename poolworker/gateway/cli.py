"""``poolworker gateway``: the typer command function (registered in ``poolworker/cli.py``).

This module is imported when the CLI starts, so it imports nothing heavy at module level:
FastAPI, uvicorn and the settings load inside the command.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def gateway(
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (host:port,...).")] = None,
    transport: Annotated[str | None, typer.Option(help="kafka (default), kafka-librdkafka, redis-streams or nats.")] = None,
    transport_url: Annotated[str | None, typer.Option(help="redis://HOST:PORT/DB (redis-streams) or nats://HOST:PORT (nats).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000; 0: any free port).")] = None,
    requests_topic: Annotated[str | None, typer.Option(help="Topic the workers consume (default poolworker.requests).")] = None,
    timeout_s: Annotated[float | None, typer.Option(help="Deadline of each call in seconds (default 30); sent to the workers.")] = None,
    max_inflight: Annotated[int | None, typer.Option(help="Calls awaiting the pool at once; beyond it 429 (default 1024).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="A model name the pool serves, for /v1/models; the first "
                                                    "is used when a body names none. Repeatable.")] = None,
    instance_id: Annotated[str | None, typer.Option(help="Names this gateway's reply topic (default HOSTNAME-PORT).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML or JSON settings file (the worker's; [poolworker.gateway] table).")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Serve vLLM's and TEI's HTTP pooling API in front of the worker pool (flags >
    POOLWORKER_GATEWAY_* env > --config). Workers must allow the reply topics:
    --allowed-reply-topics 'poolworker\\.replies\\..+'."""
    from .settings import GatewaySettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = GatewaySettings.load(
            config, bootstrap_servers=bootstrap_servers, transport=transport, transport_url=transport_url, host=host,
            port=port, requests_topic=requests_topic, timeout_s=timeout_s, max_inflight=max_inflight,
            models=model or None, instance_id=instance_id,
        )
        settings.servers  # noqa: B018 - a non-Kafka transport without its URL fails here, before binding
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    from .server import serve

    try:
        serve(settings, log_level)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


__all__ = ["gateway"]
