"""``GatewaySettings``: everything ``poolworker gateway`` needs, from flags > ``POOLWORKER_GATEWAY_*``
env vars > a config file > defaults.

The config file is the worker's own (TOML or JSON): keys the gateway shares with the worker
(``bootstrap_servers``, ``transport``, ``requests_topic``, ``kafka_options``, …) are read from its
``[poolworker]`` table, and a ``[poolworker.gateway]`` table (or a top-level ``[gateway]`` one)
overrides them and holds the gateway's own keys, so one file describes a whole deployment.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..cache import redact_url
from ..config import WorkerSettings, _FileSource, is_secret_key, parse_model_specs
from ..consumers.transport import TRANSPORTS

# The characters a Kafka topic name may hold (the reply topic embeds the instance id).
_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class _GatewayFileSource(_FileSource):
    """The gateway's values in the worker's config file: the ``poolworker`` table's keys that
    the gateway also has (``models`` as the names of the worker's ``NAME=PATH`` specs),
    overridden by its ``gateway`` table."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls, path)
        shared = self.values
        own = shared.get("gateway") or {}
        values = {k: v for k, v in shared.items() if k in settings_cls.model_fields and k != "models"}
        if isinstance(shared.get("models"), list):  # the worker's NAME=PATH specs: the gateway needs the names
            values["models"] = list(parse_model_specs(shared["models"]))
        self.values = {**values, **own}


class GatewaySettings(BaseSettings):
    """The HTTP side (host, port, limits), the queue side (transport, topics) and what the
    gateway says about the pool (``models``)."""

    model_config = SettingsConfigDict(env_prefix="POOLWORKER_GATEWAY_", extra="forbid", validate_default=True)
    config_file: ClassVar[Path | None] = None

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0: any free port")
    timeout_s: float = Field(30.0, gt=0, description="deadline of each call; it travels to the workers as the deadline_ms header")
    max_inflight: int = Field(1024, ge=1, description="calls awaiting the pool at once; one more is answered 429")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After of a 429")
    models: list[str] = Field(default_factory=list, description="model names the pool serves: GET /v1/models lists them "
                              "and a body without 'model' gets the first (none: the body goes as it is)")

    # the queue (same meaning as the worker's settings)
    transport: str = "kafka"
    transport_url: str | None = Field(None, description="redis://HOST:PORT/DB or nats://HOST:PORT for the non-Kafka transports")
    bootstrap_servers: str = "127.0.0.1:9092"
    requests_topic: str = "poolworker.requests"
    kafka_options: dict[str, Any] = Field(default_factory=dict, description="passed to kafka-python unchanged (SASL/SSL)")
    partitions: int = Field(6, ge=1, description="partitions of the request topic if the gateway has to create it")
    replication_factor: int = Field(1, ge=1)

    # replies: one topic per gateway instance, so N gateways never read each other's results
    reply_topic_prefix: str = "poolworker.replies."
    instance_id: str | None = Field(None, description="names this instance's reply topic; unset: HOSTNAME-PORT "
                                    "(stable across restarts, so a restart reuses its topic)")
    reply_partitions: int = Field(1, ge=1, description="partitions of the reply topic created at start")

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, value: str) -> str:
        if value not in TRANSPORTS:
            raise ValueError(f"unknown transport {value!r}; choose one of {', '.join(TRANSPORTS)}")
        return value

    @field_validator("instance_id")
    @classmethod
    def _topic_safe(cls, value: str | None) -> str | None:
        if value is not None and (not value or _TOPIC_CHARS.search(value)):
            raise ValueError("instance_id must be 1 or more of the characters a-z A-Z 0-9 . _ - (it names a topic)")
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _GatewayFileSource(settings_cls, cls.config_file))

    #: ``load(config_file=None, **flags)``: flags that are not None > env > ``config_file``; the
    #: worker's own loader, which works on any settings class with a ``config_file`` source.
    load = classmethod(WorkerSettings.load.__func__)

    @property
    def servers(self) -> str:
        """What the transport connects to: the Kafka bootstrap list, or the transport URL."""
        if self.transport.startswith("kafka"):
            return self.bootstrap_servers
        if not self.transport_url:
            raise ValueError(f"transport {self.transport!r} needs transport_url (--transport-url)")
        return self.transport_url

    def reply_topic(self) -> str:
        """This instance's reply topic. Without ``instance_id``: HOSTNAME-PORT when the port is
        fixed (a restarted gateway reuses its topic instead of leaving one behind per start),
        a random suffix when the port is picked at start (port 0: tests, ``poolworker dev``)."""
        instance = self.instance_id
        if instance is None:
            host = _TOPIC_CHARS.sub("-", socket.gethostname()) or "gateway"
            instance = f"{host}-{self.port}" if self.port else f"{host}-{uuid.uuid4().hex[:10]}"
        return f"{self.reply_topic_prefix}{instance}"[:249]

    def redacted(self) -> dict[str, Any]:
        """The settings as safe to log: secrets in ``kafka_options`` and URLs hidden."""
        data = self.model_dump()
        data["kafka_options"] = {k: ("***" if is_secret_key(k) else v) for k, v in self.kafka_options.items()}
        data["bootstrap_servers"] = redact_url(self.bootstrap_servers)
        data["transport_url"] = redact_url(self.transport_url) if self.transport_url else None
        return data


__all__ = ["GatewaySettings"]
