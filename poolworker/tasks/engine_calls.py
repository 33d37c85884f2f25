"""How plan items meet the engine, in two halves that run on different threads.

- ``engine_call`` + ``tokenize_items`` (the worker's receive thread): check the plan's options
  against the model once, and turn items into ``ModelInput`` token ids — or each item's typed
  error. Items of many requests that tokenize alike go through the tokenizer in one call.
- ``run_call`` (the model thread): forward + pooling on those token ids, nothing validated or
  tokenized again; results come back as float32 numpy arrays (one array per batch, a view per
  item), so no stage after it walks floats in Python.

``run_plan`` composes the two for one plan (offline use and tests), so the worker's path is the
only path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from poolworker.engine.errors import EngineError
from poolworker.engine.poolers import HeadParams
from poolworker.engine.prompts import Truncation, raise_first
from poolworker.engine.pylate import Role

from .items import MULTI_TASK_SEPARATOR, Item, ItemResult, Plan

if TYPE_CHECKING:
    import torch

    from poolworker.engine import Engine

Mode = Literal["encode", "multi", "cross-encoder", "bi-encoder", "late-interaction"]


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One item as the model takes it. Encode items: ``ids``. Cross-encoder pairs: ``ids`` of
    the joined pair and its ``type_ids``. Bi-encoder / late-interaction pairs: ``ids`` of the
    first text and ``pair_ids`` of the second."""

    ids: list[int]
    type_ids: list[int] | None = None
    pair_ids: list[int] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.ids) + (len(self.pair_ids) if self.pair_ids is not None else 0)

    def __reduce__(self):
        """Pickled as a plain tuple: thousands a second go to the model process, and the
        dataclass default (a ``fields()`` walk per object) cost more than the ids themselves."""
        return ModelInput, (self.ids, self.type_ids, self.pair_ids)


@dataclass(frozen=True)
class ModelCall:
    """What a group of model inputs asks of one engine. Hashable: inputs of many requests with
    equal calls run in one engine call (truncation is not part of it: it is spent on the ids)."""

    engine: Engine
    mode: Mode
    pooling_task: str | None
    params: HeadParams
    # The role of an encode call's texts on a model with roles (PyLate: query or document);
    # a late-interaction score call has both, by side.
    role: Role | None = None

    @property
    def side_task(self) -> str | None:
        """The pooling task a text is tokenized for (None for a cross-encoder pair). Several
        tasks at once are tokenized as a token task: at most ``max_model_len``, never chunked."""
        if self.mode == "multi":
            return "token_embed"
        return self.pooling_task if self.mode == "encode" else self.engine.score_task

    @property
    def tasks(self) -> tuple[str, ...]:
        """The pooling tasks of a multi-task call, in the request's order."""
        return tuple(self.pooling_task.split(MULTI_TASK_SEPARATOR)) if self.pooling_task else ()


def model_call(engine: Engine, plan: Plan) -> tuple[ModelCall, Truncation]:
    """The call and truncation for ``plan`` on ``engine``; raises the options' ``EngineError``."""
    options = plan.option_dict()
    truncation = engine.truncation(options.get("truncate_prompt_tokens"), options.get("truncation_side"))
    pad_to = (truncation.max_tokens or engine.max_model_len) if options.get("padding") == "max_length" else None
    truncation = replace(truncation, special_tokens=options.get("add_special_tokens", True) is not False, pad_to=pad_to,
                         refuse_above=options.get("refuse_above"))  # type: ignore[arg-type]
    if plan.engine_call == "score":
        mode: Mode = engine.check_score()  # type: ignore[assignment]
        activation = options.get("use_activation") if mode == "cross-encoder" else None  # as Engine.score
        return ModelCall(engine, mode, None, HeadParams(None, activation)), truncation  # type: ignore[arg-type]
    task = plan.pooling_task or engine.default_task
    if MULTI_TASK_SEPARATOR in task:
        tasks, params = engine.check_multi(task.split(MULTI_TASK_SEPARATOR), dimensions=options.get("dimensions"),
                                           use_activation=options.get("use_activation"))
        return ModelCall(engine, "multi", MULTI_TASK_SEPARATOR.join(tasks), params), truncation
    params = engine.check_options(task, dimensions=options.get("dimensions"), use_activation=options.get("use_activation"))
    return ModelCall(engine, "encode", task, params, engine.resolve_role(options.get("input_type"))), truncation


def tokenize_items(call: ModelCall, truncation: Truncation, items: Sequence[Item],
                   labels: Sequence[str]) -> list[ModelInput | EngineError]:
    """One outcome per item, in order; ``labels`` name each item in errors (``input[3]``)."""
    engine = call.engine
    if call.mode == "cross-encoder":
        if any(not isinstance(part, str) for item in items for part in (item.prompt, item.pair)):
            raise TypeError("cross-encoder items are text pairs")  # plan() only makes text pairs
        pairs = engine.tokenize_pairs_each([i.prompt for i in items], [i.pair for i in items], labels,  # type: ignore[misc]
                                           truncation=truncation)
        return [p if isinstance(p, EngineError) else ModelInput(p[0], type_ids=p[1]) for p in pairs]
    if call.mode in ("encode", "multi"):
        ids = engine.tokenize_each([i.prompt for i in items], labels, pooling_task=call.side_task, truncation=truncation,  # type: ignore[arg-type]
                                   role=call.role)
        return [x if isinstance(x, EngineError) else ModelInput(x) for x in ids]
    n = len(items)
    first_role, second_role = engine.score_roles
    if first_role is not None:  # the sides are tokenized for their roles (PyLate: query, document)
        sides = (engine.tokenize_each([i.prompt for i in items], labels, pooling_task=call.side_task, truncation=truncation, role=first_role)  # type: ignore[arg-type]
                 + engine.tokenize_each([i.pair for i in items], labels, pooling_task=call.side_task, truncation=truncation, role=second_role))  # type: ignore[arg-type, misc]
    else:
        sides = engine.tokenize_each([i.prompt for i in items] + [i.pair for i in items], list(labels) * 2,  # type: ignore[operator]
                                     pooling_task=call.side_task, truncation=truncation)  # type: ignore[arg-type]
    out: list[ModelInput | EngineError] = []
    for first, second in zip(sides[:n], sides[n:]):
        bad = first if isinstance(first, EngineError) else second if isinstance(second, EngineError) else None
        out.append(bad if bad is not None else ModelInput(first, pair_ids=second))  # type: ignore[arg-type]
    return out


def _as_arrays(rows: list[torch.Tensor]) -> list[np.ndarray]:
    """Float32 numpy per row: one stacked copy for vectors, one per matrix for token tasks."""
    if rows and all(r.dim() == 1 and r.shape == rows[0].shape for r in rows):
        import torch

        stacked = torch.stack(rows).float().cpu().numpy()
        return list(stacked)
    return [r.float().cpu().numpy() for r in rows]


def _multi_data(out) -> dict[str, object]:
    """One item's outputs of several tasks as float32 numpy per task, plus bge-m3's lexical
    weights with token ids as strings (FlagEmbedding's and JSON's key type)."""
    data: dict[str, object] = {task: value.float().cpu().numpy() for task, value in out.data.items()}
    if out.lexical_weights is not None:
        data["lexical_weights"] = {str(token): float(weight) for token, weight in out.lexical_weights.items()}
    return data


def run_call(call: ModelCall, inputs: Sequence[ModelInput]) -> list[ItemResult]:
    """Results of ``inputs`` (which ``tokenize_items`` made for ``call``), in order."""
    if not inputs:
        return []
    engine = call.engine
    if call.mode == "encode":
        roles = [call.role] * len(inputs) if call.role is not None else None
        rows = engine.compute(call.pooling_task, [x.ids for x in inputs], call.params, roles=roles)  # type: ignore[arg-type]
        return [ItemResult(data, x.num_tokens) for data, x in zip(_as_arrays(rows), inputs)]
    if call.mode == "multi":
        outs = engine.compute_many(call.tasks, [x.ids for x in inputs], call.params)
        return [ItemResult(_multi_data(out), x.num_tokens) for out, x in zip(outs, inputs)]
    if call.mode == "cross-encoder":
        scores = engine.cross_encode_ids([x.ids for x in inputs], [x.type_ids for x in inputs], call.params)  # type: ignore[misc]
    else:
        # Distinct sequences are encoded once; with roles (PyLate) a query and a document are
        # distinct even when their ids agree (a document's skiplist vectors are dropped).
        first, second = engine.score_roles
        unique: dict[tuple[str | None, tuple[int, ...]], int] = {}
        pairs = [(unique.setdefault((first, tuple(x.ids)), len(unique)), unique.setdefault((second, tuple(x.pair_ids)), len(unique)))  # type: ignore[arg-type]
                 for x in inputs]
        roles = [r for r, _ in unique] if first is not None else None
        scores = engine.score_ids([list(k) for _, k in unique], pairs, roles=roles)  # type: ignore[arg-type]
    return [ItemResult(float(s), x.num_tokens) for s, x in zip(scores, inputs)]


def run_plan(engine: Engine, plan: Plan) -> list[ItemResult]:
    """All of ``plan``'s items on ``engine``; the first item's ``EngineError`` is raised."""
    if not plan.items:
        return []
    call, truncation = model_call(engine, plan)
    inputs = tokenize_items(call, truncation, plan.items, [f"input[{i}]" for i in range(len(plan.items))])
    raise_first(inputs)
    return run_call(call, inputs)  # type: ignore[arg-type]
