"""The receive stage: a poll's records → ``Prepared`` requests (or dead letters), on the
transport's thread.

In order, for the whole poll at once: parse and validate each record, route it to its model,
plan its items and check its options against the model, look every item up in the cache (one
MGET), and tokenize the items the cache did not answer (one tokenizer call per model and
truncation, however many requests they came from). What leaves here is immutable and complete:
the model thread only runs forward passes on it. Every record becomes exactly one outcome, and
every error is a typed value naming its field; nothing is dropped and nothing is matched by text.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .cache import ResultCache, cache_key, decode_value, is_null
from .engine import Engine
from .engine.errors import EngineError, UnsupportedTask
from .engine.prompts import Truncation
from .metrics import Metrics
from .plugins.interface import IOProcessor, PluginInputError, PluginRequest
from .protocol import (
    ErrorInfo,
    InvalidRequest,
    PoolingRequest,
    UnparseableMessage,
    parse_request,
)
from .tasks import (
    ItemResult,
    ModelCall,
    ModelInput,
    Plan,
    Renderer,
    check_output,
    item_labels,
    model_call,
    plugin_plan,
    tokenize_items,
)
from .tasks import plan as plan_request
from .work import DeadLetter, Prepared, Source

log = logging.getLogger(__name__)
MODEL_CALL_MEMO = 1024


def error_info(exc: EngineError) -> ErrorInfo:
    """An engine error as the caller sees it; the task is the request's field for what the
    engine calls a pooling task."""
    param = "task" if isinstance(exc, UnsupportedTask) else exc.param
    return ErrorInfo(type=exc.kind, message=exc.message, param=param)


@dataclass(slots=True)
class _Draft:
    """A request while this stage works on it; only ``Prepared`` leaves the stage."""

    source: Source
    request: PoolingRequest
    reply_topic: str
    error: ErrorInfo | None = None
    model: str | None = None
    engine: Engine | None = None
    labels: Mapping[int, str] | None = None  # the model config's id2label
    plan: Plan | None = None
    call: ModelCall | None = None
    truncation: Truncation | None = None
    item_labels: list[str] = field(default_factory=list)
    cache_keys: list[str] = field(default_factory=list)
    cached: list[ItemResult | None] = field(default_factory=list)
    inputs: list[tuple[int, ModelInput]] = field(default_factory=list)
    plugin: PluginRequest | None = None

    def fail(self, type_: str, message: str, param: str | None = None) -> None:
        self.error = ErrorInfo(type=type_, message=message, param=param)

    @property
    def missing(self) -> list[int]:
        return [i for i, r in enumerate(self.cached) if r is None]

    def freeze(self) -> Prepared:
        request = self.request
        ok = self.error is None
        return Prepared(
            source=self.source,
            request_id=request.request_id,
            task=request.task,
            model=self.model or request.model,
            reply_topic=self.reply_topic,
            metadata=request.metadata,
            error=self.error,
            request=request if ok else None,
            plan=self.plan if ok else None,
            labels=self.labels if ok else None,
            call=self.call if ok else None,
            cache_keys=tuple(self.cache_keys) if ok else (),
            cached=tuple(self.cached) if ok else (),
            inputs=tuple(self.inputs) if ok else (),
            plugin=self.plugin if ok else None,
            cost_tokens=sum(x.num_tokens for _, x in self.inputs) if ok else 0,
        )


class Preparer:
    """Everything between raw records and requests the model thread can run."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        cache: ResultCache,
        *,
        results_topic: str,
        allowed_reply_topics: str | None,
        max_request_bytes: int,
        max_items_per_request: int,
        metrics: Metrics | None = None,
        processors: Mapping[str, IOProcessor] | None = None,
    ) -> None:
        self.engines = dict(engines)
        self.cache = cache
        self.caching = not is_null(cache)
        self.results_topic = results_topic
        self.reply_pattern = re.compile(allowed_reply_topics) if allowed_reply_topics else None
        self.max_request_bytes = max_request_bytes
        self.max_items = max_items_per_request
        self.metrics = metrics
        self.processors = dict(processors or {})  # model name → its IO processor plugin
        self._renderers: dict[str, Renderer] = {}  # per model name, made on its first request
        self._calls: dict[tuple, tuple[ModelCall, Truncation]] = {}  # see _model_call
        # Each model's label names, read once (a transformers config attribute read is slow)
        self._labels = {name: getattr(engine.model.config, "id2label", None) for name, engine in self.engines.items()}

    def prepare(self, records: Sequence[tuple[Source, bytes | None]]) -> list[Prepared | DeadLetter]:
        """One outcome per record, in record order."""
        outcomes = [self._parse(source, value) for source, value in records]
        drafts = [o for o in outcomes if isinstance(o, _Draft)]
        for draft in drafts:
            self._route(draft)
        live = [d for d in drafts if d.error is None]
        self._look_up(live)
        self._tokenize([d for d in live if d.missing])
        return [o.freeze() if isinstance(o, _Draft) else o for o in outcomes]

    # -- one record ---------------------------------------------------------------------------
    def _parse(self, source: Source, value: bytes | None) -> _Draft | Prepared | DeadLetter:
        try:
            request = parse_request(value, source.headers, max_request_bytes=self.max_request_bytes, max_items=self.max_items)
        except UnparseableMessage as exc:
            return DeadLetter(source, value, exc.reason)
        except InvalidRequest as exc:
            return Prepared(source, exc.request_id or source.label, exc.task, exc.model, self._reply_topic(exc.reply_to),
                            exc.metadata, error=exc.error)
        if self.metrics is not None:
            for name in request.ignored:
                self.metrics.ignored_field(name)
        draft = _Draft(source, request, self.results_topic)
        reply = request.reply_to
        if reply is not None and reply != self.results_topic:
            if self._reply_allowed(reply):
                draft.reply_topic = reply
            else:
                draft.fail("invalid_request", f"reply_to {reply!r} is not an allowed reply topic", "reply_to")
        return draft

    def _reply_allowed(self, topic: str) -> bool:
        if topic.startswith("__"):  # broker-internal topics (__consumer_offsets, …) never
            return False
        return bool(self.reply_pattern and self.reply_pattern.fullmatch(topic))

    def _reply_topic(self, reply_to: str | None) -> str:
        return reply_to if reply_to and self._reply_allowed(reply_to) else self.results_topic

    def _route(self, draft: _Draft) -> None:
        """Model, plan, options checked against the model, cache keys."""
        if draft.error is not None:
            return
        request = draft.request
        name = request.model
        if name is None:
            if len(self.engines) != 1:
                draft.fail("invalid_request", f"model is required: this worker serves {sorted(self.engines)}", "model")
                return
            name = next(iter(self.engines))
        engine = self.engines.get(name)
        if engine is None:
            draft.fail("unknown_model", f"model {name!r} is not served here; served: {sorted(self.engines)}", "model")
            return
        draft.model, draft.engine, draft.labels = name, engine, self._labels[name]
        try:
            if request.task == "plugin":
                self._plan_plugin(draft, name)
                if draft.error is not None:
                    return
            else:
                draft.plan = plan_request(request, self._renderer(name, engine))
            draft.call, draft.truncation = self._model_call(name, engine, draft.plan)
            check_output(request, draft.call)
        except InvalidRequest as exc:
            draft.error = exc.error
            return
        except EngineError as exc:
            draft.error = error_info(exc)
            return
        items = draft.plan.items
        draft.item_labels = item_labels(request, draft.plan)
        draft.cached = [None] * len(items)
        if self.caching and draft.call.mode != "multi":  # the cache holds one array per item
            scope = draft.call.pooling_task or f"score:{draft.call.mode}"
            fingerprint = engine.model.fingerprint
            draft.cache_keys = [cache_key(fingerprint, scope, draft.plan.options, item.key_payload()) for item in items]

    def _model_call(self, name: str, engine: Engine, plan: Plan) -> tuple[ModelCall, Truncation]:
        """``model_call``, once per model and option set: a stream's requests mostly share a
        few option sets, and checking them against the model cost more than the rest of a
        short request's parsing and routing. An error is not kept (it is raised again each
        time); the memo is cleared when it holds ``MODEL_CALL_MEMO`` option sets, since the
        options (dimensions, truncation lengths) are the callers' to vary."""
        key = (name, plan.group_key())
        found = self._calls.get(key)
        if found is None:
            if len(self._calls) >= MODEL_CALL_MEMO:
                self._calls.clear()
            found = self._calls[key] = model_call(engine, plan)
        return found

    def _plan_plugin(self, draft: _Draft, name: str) -> None:
        """A ``plugin`` request: its model's plugin reads ``data`` and names the texts to pool.
        The plugin's errors are the caller's (``PluginInputError``) or the plugin's own bugs
        (any other exception): both become error results, never a dead worker."""
        processor = self.processors.get(name)
        if processor is None:
            draft.fail("unsupported_task", f"model {name!r} has no IO processor plugin (start the worker with "
                       f"--io-processor {name}=PLUGIN)", "task")
            return
        request = draft.request
        try:
            parsed = processor.parse_request(request.model_dump(exclude={"form", "ignored", "warnings"}))
            prompts = processor.pre_process(parsed, request.request_id)
        except PluginInputError as exc:
            draft.fail("invalid_request", exc.message, exc.param)
            return
        except Exception as exc:
            log.exception("IO processor plugin of %s failed on %s", name, request.request_id)
            draft.fail("internal_error", f"the model's IO processor plugin failed: {type(exc).__name__}")
            return
        if not prompts.texts:
            draft.fail("invalid_request", "the IO processor plugin found nothing to pool in data", "data")
            return
        draft.plugin = PluginRequest(processor, parsed, prompts)
        draft.plan = plugin_plan(request, prompts.task, prompts.texts)

    def _renderer(self, name: str, engine: Engine) -> Renderer:
        renderer = self._renderers.get(name)
        if renderer is None:
            renderer = self._renderers[name] = Renderer(engine)
        return renderer

    # -- the whole poll -----------------------------------------------------------------------------
    def _look_up(self, drafts: list[_Draft]) -> None:
        """One MGET for every item of the poll; an undecodable entry is a miss."""
        keyed = [d for d in drafts if d.cache_keys]
        if not keyed:
            return
        found = iter(self.cache.get_many([k for d in keyed for k in d.cache_keys]))
        for draft in keyed:
            for i in range(len(draft.cache_keys)):
                raw = next(found)
                if raw is None:
                    continue
                try:
                    data, tokens = decode_value(raw)
                except ValueError:
                    log.warning("ignoring an undecodable cache entry for %s", draft.request.request_id)
                    continue
                draft.cached[i] = ItemResult(data, tokens)

    def _tokenize(self, drafts: list[_Draft]) -> None:
        """Missing items of every request, one tokenizer call per (model, mode, task, truncation)."""
        groups: dict[tuple, list[_Draft]] = defaultdict(list)
        for draft in drafts:
            call = draft.call
            groups[(id(call.engine), call.mode, call.side_task, draft.truncation)].append(draft)  # type: ignore[union-attr]
        for members in groups.values():
            try:
                self._tokenize_group(members)
            except EngineError as exc:  # fails every prompt alike (a truncation with no room left)
                for draft in members:
                    draft.error = error_info(exc)
            except Exception:
                log.exception("tokenization failed for a group of %d requests; retrying one by one", len(members))
                for draft in members:
                    try:
                        self._tokenize_group([draft])
                    except EngineError as exc:
                        draft.error = error_info(exc)
                    except Exception as exc:  # noqa: BLE001
                        draft.fail("internal_error", f"tokenization failed: {type(exc).__name__}")

    @staticmethod
    def _tokenize_group(members: list[_Draft]) -> None:
        wanted = [(d, i) for d in members for i in d.missing]
        first = members[0]
        outcomes = tokenize_items(first.call, first.truncation, [d.plan.items[i] for d, i in wanted],  # type: ignore[arg-type, union-attr]
                                  [d.item_labels[i] for d, i in wanted])
        for (draft, i), outcome in zip(wanted, outcomes):
            if draft.error is not None:
                continue
            if isinstance(outcome, EngineError):
                draft.error = error_info(outcome)
                draft.inputs.clear()
            else:
                draft.inputs.append((i, outcome))


__all__ = ["Preparer", "error_info"]
