"""``run_plan``: execute a plan's items on an ``Engine`` and return one ``ItemResult`` each.

The worker calls this once per group of items that share ``Plan.group_key()`` (after cache
look-ups, so with only the missing items: ``dataclasses.replace(plan, items=missing)``). It is
the one place that knows how items map onto ``Engine.encode`` and ``Engine.score``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .items import ItemResult, Plan

if TYPE_CHECKING:
    from poolworker.engine import Engine


def run_plan(engine: Engine, plan: Plan) -> list[ItemResult]:
    """Engine errors (``TypeError``/``ValueError`` naming the field) propagate to the caller."""
    if not plan.items:
        return []
    options = plan.option_dict()
    if plan.engine_call == "score":
        firsts = [item.prompt for item in plan.items]
        seconds = [item.pair for item in plan.items]
        if any(s is None for s in seconds):
            raise ValueError("score plans hold pairs: every item needs a pair")
        # Equal-length lists are zipped, so each item is scored on its own pair.
        outputs = engine.score(firsts, seconds, use_tqdm=False, **options)  # type: ignore[arg-type]
        return [ItemResult(o.outputs.score, o.num_prompt_tokens) for o in outputs]
    prompts = [item.engine_prompt() for item in plan.items]
    outputs = engine.encode(prompts, pooling_task=plan.pooling_task, use_tqdm=False, **options)  # type: ignore[arg-type]
    return [ItemResult(o.outputs.data.tolist(), o.num_prompt_tokens) for o in outputs]
