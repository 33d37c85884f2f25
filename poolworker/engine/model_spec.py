"""Model spec files: a model plus the load options it needs, in one JSON file a worker can name.

A model such as the original Qwen3-Reranker is only served correctly with ``hf_overrides`` (and
a score template). The worker's ``--model NAME=PATH`` takes a path, so the options travel with
the path: ``--model qwen-rr=/etc/poolworker/qwen3-reranker.json`` where the file says::

    {"model": "/models/Qwen3-Reranker-0.6B",
     "hf_overrides": {"architectures": ["Qwen3ForSequenceClassification"],
                      "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": true},
     "score_template": "qwen3_reranker.jinja"}

Relative paths are read from the spec file's folder. Unknown keys are an error: a misspelt key
silently ignored would serve the model without the option it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KEYS = frozenset({"model", "hf_overrides", "score_template"})


@dataclass(frozen=True)
class ModelSpec:
    model: str
    hf_overrides: dict[str, Any] | None = None
    score_template: str | None = None


def is_model_spec(model: str) -> bool:
    return model.endswith(".json") and Path(model).is_file()


def _relative(value: str, base: Path) -> str:
    candidate = base / value
    return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value


def read_model_spec(path: str) -> ModelSpec:
    """The spec in ``path`` (checked: a JSON object with ``model`` and only known keys)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"model spec {file}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), str) or not data["model"]:
        raise ValueError(f"model spec {file}: expected a JSON object with a \"model\" path or name")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"model spec {file}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    overrides = data.get("hf_overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"model spec {file}: hf_overrides must be a JSON object")
    template = data.get("score_template")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"model spec {file}: score_template must be a string (template text or a file)")
    base = file.parent
    return ModelSpec(_relative(data["model"], base), overrides, None if template is None else _relative(template, base))


def merge_spec(model: str, hf_overrides: Any, score_template: str | None) -> tuple[str, Any, str | None]:
    """``(model, hf_overrides, score_template)`` with a spec file's values filled in; an option
    given both in the file and by the caller is an error rather than a silent choice."""
    if not is_model_spec(model):
        return model, hf_overrides, score_template
    spec = read_model_spec(model)
    if hf_overrides is not None and spec.hf_overrides is not None:
        raise ValueError(f"hf_overrides given both by the caller and in the model spec {model}")
    if score_template is not None and spec.score_template is not None:
        raise ValueError(f"score_template given both by the caller and in the model spec {model}")
    return spec.model, hf_overrides if spec.hf_overrides is None else spec.hf_overrides, score_template or spec.score_template


__all__ = ["ModelSpec", "is_model_spec", "merge_spec", "read_model_spec"]
