"""A plugin request run on an ``Engine`` alone, without a queue: what ``Engine`` users (and the
plugin's own tests) call; the worker runs the same three plugin steps across its stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .interface import IOProcessor, PluginContext, PluginOutput


def context_for(engine, name: str | None = None) -> PluginContext:
    """What a plugin may know of ``engine``'s model."""
    return PluginContext(model=name or engine.model_name, tokenizer=engine.model.tokenizer,
                         tasks=tuple(engine.supported_tasks), max_model_len=engine.max_model_len)


def run_plugin(engine, processor: IOProcessor, body: Mapping[str, Any], request_id: str | None = None) -> Any:
    """parse_request → pre_process → ``Engine.encode`` → post_process; returns the response data."""
    parsed = processor.parse_request(body)
    prompts = processor.pre_process(parsed, request_id)
    pooled = engine.encode(list(prompts.texts), pooling_task=prompts.task, use_tqdm=False)
    outputs = [PluginOutput(i, out.outputs.data.float().numpy().astype(np.float32, copy=False), len(out.prompt_token_ids))
               for i, out in enumerate(pooled)]
    return processor.post_process(parsed, outputs, request_id)


__all__ = ["context_for", "run_plugin"]
