"""Turn consumed records into jobs for the model thread: parse, route, plan, cache, tokenize.

This runs on the consumer thread, so tokenization overlaps the model thread's forward pass.
Every record becomes exactly one outcome: a job (with a result or an error to publish) or a
dead-letter entry; nothing is dropped.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .cache import ResultCache, cache_key, decode_value
from .engine import Engine
from .protocol import ErrorInfo, InvalidRequest, PoolingRequest, UnparseableMessage, parse_request
from .tasks import ItemResult, Plan
from .tasks import plan as plan_request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where a record came from (for ordering, commits, the DLQ and latency)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass
class DeadLetter:
    source: Source
    value: bytes | None
    reason: str


@dataclass
class Job:
    """One request on its way through the worker; ``error`` set means it is answered with an error."""

    source: Source
    request_id: str
    task: str | None
    model: str | None
    reply_topic: str
    metadata: dict | None = None
    request: PoolingRequest | None = None
    engine: Engine | None = None
    plan: Plan | None = None
    pooling_task: str | None = None  # resolved for encode plans
    results: list[ItemResult | None] = field(default_factory=list)
    token_ids: dict[int, list[int]] = field(default_factory=dict)
    cache_keys: list[str] = field(default_factory=list)
    fresh: set[int] = field(default_factory=set)  # items computed here (to be cached)
    error: ErrorInfo | None = None
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def missing(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r is None]

    @property
    def cost_tokens(self) -> int:
        """Tokens the model must still process for this job (the batch budget's unit)."""
        if self.error is not None:
            return 0
        total = 0
        for i in self.missing:
            ids = self.token_ids.get(i)
            total += len(ids) if ids is not None else _estimate_tokens(self.plan.items[i])
        return total

    def fail(self, type_: str, message: str, param: str | None = None) -> None:
        self.error = ErrorInfo(type=type_, message=message, param=param)


def _estimate_tokens(item: object) -> int:
    """Pairs are tokenized by the engine itself; ~4 characters a token is close enough to budget."""
    chars = sum(len(p) for p in (item.prompt, item.pair) if isinstance(p, str))
    return chars // 4 + 4


_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*(?:\[\d+\])?)(?=[\s:=]|$)")


def _param_from(message: str, default: str) -> str:
    """Engine errors start with the field they are about (``prompts[3] has …``,
    ``dimensions must …``); requests call prompts ``input``."""
    match = _LEADING_FIELD.match(message)
    if match is None:
        return default
    field = match.group(1)
    return "input" + field[len("prompts"):] if field.startswith("prompts") else field


class Preparer:
    """Everything between a raw record and a job the model thread can run."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        cache: ResultCache,
        *,
        results_topic: str,
        allowed_reply_topics: str | None,
        max_request_bytes: int,
        max_items_per_request: int,
    ) -> None:
        self.engines = dict(engines)
        self.cache = cache
        self.results_topic = results_topic
        self.reply_pattern = re.compile(allowed_reply_topics) if allowed_reply_topics else None
        self.max_request_bytes = max_request_bytes
        self.max_items = max_items_per_request

    # -- one record -------------------------------------------------------------------------
    def _parse(self, source: Source, value: bytes | None) -> Job | DeadLetter:
        try:
            request = parse_request(value, source.headers, max_request_bytes=self.max_request_bytes, max_items=self.max_items)
        except UnparseableMessage as exc:
            return DeadLetter(source, value, exc.reason)
        except InvalidRequest as exc:
            job = Job(source, exc.request_id or source.label, exc.task, exc.model, self._reply_topic(exc.reply_to), exc.metadata)
            job.error = exc.error
            return job
        job = Job(source, request.request_id, request.task, request.model, self.results_topic, request.metadata, request)
        reply = request.reply_to
        if reply is not None and reply != self.results_topic:
            if self._reply_allowed(reply):
                job.reply_topic = reply
            else:
                job.fail("invalid_request", f"reply_to {reply!r} is not an allowed reply topic", "reply_to")
        return job

    def _reply_allowed(self, topic: str) -> bool:
        if topic.startswith("__"):  # broker-internal topics (__consumer_offsets, …) never
            return False
        return bool(self.reply_pattern and self.reply_pattern.fullmatch(topic))

    def _reply_topic(self, reply_to: str | None) -> str:
        return reply_to if reply_to and self._reply_allowed(reply_to) else self.results_topic

    def _route(self, job: Job) -> None:
        request = job.request
        name = request.model
        if name is None:
            if len(self.engines) != 1:
                job.fail("invalid_request", f"model is required: this worker serves {sorted(self.engines)}", "model")
                return
            name = next(iter(self.engines))
        engine = self.engines.get(name)
        if engine is None:
            job.fail("unknown_model", f"model {name!r} is not served here; served: {sorted(self.engines)}", "model")
            return
        job.model, job.engine = name, engine
        try:
            job.plan = plan_request(request)
        except InvalidRequest as exc:
            job.error = exc.error
            return
        try:
            if job.plan.engine_call == "score":
                if engine.score_mode is None:
                    raise ValueError(f"model {name!r} cannot score; it supports {list(engine.supported_tasks)}")
            else:
                job.pooling_task = job.plan.pooling_task or engine.default_task
                opts = dict(job.plan.options)
                engine.check_options(job.pooling_task, dimensions=opts.get("dimensions"), use_activation=opts.get("use_activation"))
        except (ValueError, TypeError) as exc:
            if "cannot" in str(exc):
                job.fail("unsupported_task", str(exc), "task")
            else:
                job.fail("invalid_request", str(exc), _param_from(str(exc), "input"))
            return
        job.results = [None] * len(job.plan.items)
        task_key = job.pooling_task or f"score:{engine.score_mode}"
        job.cache_keys = [cache_key(engine.model.fingerprint, task_key, job.plan.options, item.key_payload()) for item in job.plan.items]

    def _tokenize(self, job: Job) -> None:
        missing = job.missing
        if not missing or job.plan.engine_call != "encode":
            return
        opts = dict(job.plan.options)
        try:
            ids = job.engine.tokenize(
                [job.plan.items[i].engine_prompt() for i in missing],
                pooling_task=job.pooling_task,
                truncate_prompt_tokens=opts.get("truncate_prompt_tokens"),
                truncation_side=opts.get("truncation_side"),
            )
        except (ValueError, TypeError) as exc:
            kind = "input_too_long" if "more than max" in str(exc) else "invalid_request"
            param = _param_from(str(exc), "input")
            job.fail(kind, str(exc).replace("prompts[", "input[", 1), param)
            return
        job.token_ids = dict(zip(missing, ids))

    # -- a poll's worth of records ---------------------------------------------------------------
    def prepare(self, records: Sequence[tuple[Source, bytes | None]]) -> list[Job | DeadLetter]:
        """Outcomes in record order. Cache lookups for all records go out as one MGET."""
        outcomes = [self._parse(source, value) for source, value in records]
        jobs = [o for o in outcomes if isinstance(o, Job) and o.error is None]
        for job in jobs:
            self._route(job)
        keyed = [j for j in jobs if j.error is None and j.cache_keys]
        keys = [k for j in keyed for k in j.cache_keys]
        if keys:
            found = self.cache.get_many(keys)
            at = 0
            for job in keyed:
                for i in range(len(job.cache_keys)):
                    raw = found[at]
                    at += 1
                    if raw is not None:
                        try:
                            data, tokens = decode_value(raw)
                            job.results[i] = ItemResult(data=data, num_tokens=tokens)
                        except ValueError:
                            log.warning("ignoring an undecodable cache entry for %s", job.request_id)
        for job in jobs:
            if job.error is None:
                self._tokenize(job)
        return outcomes
