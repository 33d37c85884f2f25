"""One typed settings object for the worker: flags > ``POOLWORKER_*`` env vars > config file > defaults.

Every knob has a name, a default and a unit in its name. ``redacted()`` is what gets logged:
secrets in Kafka options and the Redis URL never leave this module in clear.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .cache import redact_url

# kafka-python's producer batch cap (its default is 16 KiB, about twenty results). Measured on 2
# cores with a near-free model: every batch costs the producer's threads a wakeup, a share of a
# produce request and an acknowledgement pass, and at 16 KiB the ~5 requests in flight filled
# with small batches; at 256 KiB the worker answered 40-65% more requests a second (and a plain
# relay ~1.8x more). A cap, not an allocation: kafka-python grows each batch's buffer as records
# arrive, and ``linger_ms`` still sends a partly filled batch, so latency is unchanged. Kept
# well under a broker's default 1 MiB ``message.max.bytes``, which a whole batch must fit.
PRODUCER_BATCH_BYTES = 256 * 1024

SECRET_WORDS = ("password", "secret", "token", "sasl_oauth", "ssl_key", "private", "ssl.key", "oauthbearer")


def is_secret_key(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


class _FileSource(PydanticBaseSettingsSource):
    """Settings from a TOML or JSON file (the ``[poolworker]`` table of a TOML file, or its top level)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.values: dict[str, Any] = {}
        if path is None:
            return
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        self.values = data.get("poolworker", data)

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


class WorkerSettings(BaseSettings):
    """Everything ``poolworker run`` needs."""

    model_config = SettingsConfigDict(env_prefix="POOLWORKER_", extra="forbid", validate_default=True)
    config_file: ClassVar[Path | None] = None

    # the queue: Kafka by default (see consumers/transport.py for the others)
    transport: Literal["kafka", "kafka-librdkafka", "redis-streams", "nats"] = "kafka"
    transport_url: str | None = Field(None, description="redis://HOST:PORT/DB for redis-streams, nats://HOST:PORT for nats; "
                                      "Kafka transports use bootstrap_servers")
    redelivery_timeout_s: float = Field(60.0, gt=0, description="redis-streams/nats: a record unacknowledged this long is "
                                        "handed to another worker (XAUTOCLAIM min-idle, JetStream ack_wait)")
    max_deliveries: int = Field(5, ge=1, description="redis-streams/nats: a record handed out more often goes to the DLQ")
    results_max_len: int | None = Field(None, ge=1, description="redis-streams: trim the results stream to about this many entries")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    requests_topic: str = "poolworker.requests"
    results_topic: str = "poolworker.results"
    dlq_topic: str = "poolworker.dlq"
    group_id: str = "poolworker"
    partitions: int = Field(6, ge=1, description="partitions of topics created at start")
    replication_factor: int = Field(1, ge=1)
    kafka_options: dict[str, Any] = Field(default_factory=dict, description="kafka-python names (SASL/SSL, timeouts), or librdkafka "
                                          "properties for kafka-librdkafka (docs/transports/librdkafka.md)")
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    max_poll_records: int = Field(500, ge=1)
    fetch_max_wait_ms: int = Field(500, ge=0, description="how long a fetch that finds no record waits on the broker (Apache "
                                   "Kafka's default: it answers as soon as a record arrives); 20 on Tansu, which holds fetches "
                                   "under steady traffic (p50 128 ms at 500); poolworker dev sets that for its local broker")
    allowed_reply_topics: str | None = Field(None, description="regex of topics a request's reply_to may name; none: only the results topic")

    # models
    models: list[str] = Field(default_factory=lambda: ["all-MiniLM-L6-v2"], description="NAME=PATH or PATH/bundled name")
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    hf_overrides: list[str] = Field(default_factory=list, description="MODEL=JSON: vLLM-style hf_overrides for one --model "
                                    "(generative rerankers, bge-m3; docs/models.md)")
    io_processors: list[str] = Field(default_factory=list, description="MODEL=PLUGIN: serve the model's `plugin` task "
                                     "through an IO processor plugin (entry point group poolworker.io_processors)")

    # batching and flow control
    max_batch_tokens: int | None = Field(None, ge=16, description="tokens per micro-batch and per forward pass; "
                                         "unset: the device's default (2048 on CPU, 65536 on CUDA)")
    max_batch_requests: int = Field(256, ge=1)
    max_wait_ms: int = Field(5, ge=0)
    max_inflight_requests: int = Field(2048, ge=1)
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_items_per_request: int = Field(4096, ge=1)
    drain_timeout_s: float = Field(60.0, gt=0)
    processes: int = Field(1, ge=1, description="worker processes on this host, one consumer group; 1: no child process")
    model_process: bool = Field(True, description="run the forward passes in a process of their own, beside each worker "
                                "process (off the interpreter lock of its receive and publish threads); false: on a thread")

    # cache and metrics
    redis_url: str | None = "redis://127.0.0.1:6379/0"
    cache_ttl_s: int = Field(86_400, ge=1)
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(9400, ge=0, le=65535, description="0: any free port; unset: no server")

    @field_validator("redis_url", mode="before")
    @classmethod
    def _none_disables(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("", "none", "off") else value

    @field_validator("allowed_reply_topics")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _queue_address(self) -> WorkerSettings:
        """Queues other than Kafka are reached by URL: say so before any model loads."""
        if self.transport in ("redis-streams", "nats") and not self.transport_url:
            scheme = "redis://HOST:PORT/DB" if self.transport == "redis-streams" else "nats://HOST:PORT"
            raise ValueError(f"transport {self.transport!r} needs transport_url ({scheme}; --transport-url or "
                             "POOLWORKER_TRANSPORT_URL)")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _FileSource(settings_cls, cls.config_file))

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> WorkerSettings:
        """Settings from flags (``overrides`` that are not None), env, then ``config_file``."""
        previous = cls.config_file
        cls.config_file = Path(config_file) if config_file else None
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            cls.config_file = previous

    def consumer_options(self) -> dict[str, Any]:
        """kafka-python consumer settings; ``kafka_options`` win."""
        base = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "enable_incremental_fetch_sessions": False,  # a resumed partition got nothing on Tansu with it on
            "metrics_enabled": False,  # the client's own sensors: nothing reads them, every record paid for them
        }
        return {**base, **_only(self.kafka_options, _CONSUMER_KEYS)}

    def producer_options(self) -> dict[str, Any]:
        from .consumers.kafka_partitioner import KeyHashPartitioner

        base = {
            "bootstrap_servers": self.bootstrap_servers,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "batch_size": PRODUCER_BATCH_BYTES,
            "max_in_flight_requests_per_connection": 5,
            "partitioner": KeyHashPartitioner(),  # the default's choices, cheaper
            "metrics_enabled": False,
        }
        return {**base, **_only(self.kafka_options, _PRODUCER_KEYS)}

    def admin_options(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, **_only(self.kafka_options, _ADMIN_KEYS)}

    def redacted(self) -> dict[str, Any]:
        """The settings as safe to log and print."""
        data = self.model_dump()
        data["redis_url"] = redact_url(self.redis_url) if self.redis_url else None
        data["kafka_options"] = {k: ("***" if is_secret_key(k) else v) for k, v in self.kafka_options.items()}
        data["bootstrap_servers"] = redact_url(self.bootstrap_servers)
        data["transport_url"] = redact_url(self.transport_url) if self.transport_url else None
        return data


def _client_keys(cls_name: str) -> frozenset[str]:
    import kafka

    return frozenset(getattr(kafka, cls_name).DEFAULT_CONFIG)


def _only(options: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in keys}


try:  # each kafka-python client accepts a different set of keys; shared ones (security) reach all
    _CONSUMER_KEYS = _client_keys("KafkaConsumer")
    _PRODUCER_KEYS = _client_keys("KafkaProducer")
    _ADMIN_KEYS = _client_keys("KafkaAdminClient")
except ImportError:  # pragma: no cover - kafka-python missing: the engine alone still imports config
    _CONSUMER_KEYS = _PRODUCER_KEYS = _ADMIN_KEYS = frozenset()


def options_for(client: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that kafka-python's ``client`` (consumer, producer, admin)
    accepts: security settings reach all three, client-specific ones only their client."""
    keys = {"consumer": _CONSUMER_KEYS, "producer": _PRODUCER_KEYS, "admin": _ADMIN_KEYS}[client]
    return _only(options, keys)


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or a bare path/bundled name (served under its own name) → {name: path}."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name if Path(spec).is_dir() else spec, spec
        if not name or not path:
            raise ValueError(f"--model {spec!r}: expected NAME=PATH or a path/name")
        if name in out:
            raise ValueError(f"--model: the name {name!r} is given twice")
        out[name] = path
    return out


def parse_model_options(specs: list[str], models: Collection[str], flag: str) -> dict[str, str]:
    """``MODEL=VALUE`` flags → {model: value}, each model one of ``--model``'s names, once."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {spec!r}: expected MODEL=VALUE")
        if name not in models:
            raise ValueError(f"{flag} {spec!r}: no --model is named {name!r} (models: {', '.join(sorted(models))})")
        if name in out:
            raise ValueError(f"{flag}: model {name!r} is given twice")
        out[name] = value
    return out


def parse_key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` flags; values that parse as JSON numbers/bools are converted."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            parsed = json.loads(value)
            out[key] = parsed if isinstance(parsed, (int, float, bool)) else value
        except json.JSONDecodeError:
            out[key] = value
    return out
