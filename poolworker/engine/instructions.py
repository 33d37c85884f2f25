"""A model's task instructions: the prefix each Cohere ``input_type`` puts before a text.

vLLM reads them from the model config's ``task_instructions``, else from the ``prompts`` of
``config_sentence_transformers.json`` (the same prompts ``SentenceTransformer.encode(...,
prompt_name=...)`` uses), so a ``search_query`` and a ``search_document`` are embedded the way
the model was trained to see them. Read once per model, from local files only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def task_instructions(config: Any, folder: Path) -> dict[str, str]:
    """``input_type`` → prefix; empty when the model defines none."""
    found = getattr(config, "task_instructions", None)
    if not isinstance(found, dict) or not found:
        found = _st_prompts(folder / "config_sentence_transformers.json")
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


def _st_prompts(path: Path) -> dict:
    try:
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts")
    except (OSError, ValueError, AttributeError):
        return {}
    return prompts if isinstance(prompts, dict) else {}


__all__ = ["task_instructions"]
