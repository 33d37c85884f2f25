"""PyLate ColBERT checkpoints: served only when PyLate would feed the model the text as given.

A PyLate checkpoint (``modules.json`` naming ``pylate.*`` modules, or PyLate's keys in
``config_sentence_transformers.json``) is Transformer → Dense like a Sentence-Transformers
ColBERT, and the engine computes that stack exactly (``tests/test_engine_pylate.py``). But
``pylate.models.ColBERT.encode`` also *prepares* its inputs: a query or document marker token
after the first token, queries padded with ``[MASK]`` expansion tokens up to ``query_length``
(attended or not), skiplist tokens (punctuation) dropped from documents, and truncation to
``query_length`` / ``document_length``. The engine has no notion of query versus document, so a
checkpoint that asks for any of these would be answered with vectors PyLate never produces: it is
refused at load, naming each step. Missing keys take PyLate's defaults.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

_PYLATE_KEYS = frozenset({
    "query_prefix", "document_prefix", "query_length", "document_length", "do_query_expansion",
    "attend_to_expansion_tokens", "skiplist_words",
})
# PyLate's defaults for keys a checkpoint leaves out.
_DEFAULTS = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32, "document_length": 180,
             "do_query_expansion": True, "skiplist_words": list(string.punctuation)}


def _read(path: Path) -> object:
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def is_pylate(folder: Path) -> bool:
    modules = _read(folder / "modules.json")
    types = [str(m.get("type", "")) for m in modules] if isinstance(modules, list) else []
    config = _read(folder / "config_sentence_transformers.json")
    return any(t.startswith("pylate.") for t in types) or (isinstance(config, dict) and bool(_PYLATE_KEYS & set(config)))


def pylate_preparation(folder: Path, max_model_len: int) -> list[str]:
    """The input preparation PyLate's ``encode`` would apply to this checkpoint that the engine
    does not (empty for a non-PyLate folder, or one configured to feed the text as given)."""
    if not is_pylate(folder):
        return []
    found = _read(folder / "config_sentence_transformers.json")
    config = {**_DEFAULTS, **(found if isinstance(found, dict) else {})}
    steps = []
    for side in ("query", "document"):
        if config[f"{side}_prefix"]:
            steps.append(f"inserts the {side} marker {config[f'{side}_prefix']!r} after the first token")
        if int(config[f"{side}_length"]) < max_model_len:
            steps.append(f"truncates {side}s to {side}_length={config[f'{side}_length']} tokens (max_model_len is {max_model_len})")
    if config["do_query_expansion"]:
        steps.append(f"pads queries to query_length={config['query_length']} with expansion tokens")
    if config["skiplist_words"]:
        steps.append(f"drops {len(config['skiplist_words'])} skiplist tokens (punctuation) from documents")
    return steps


def check_pylate(folder: Path, max_model_len: int) -> None:
    """Refuse a PyLate checkpoint whose inputs PyLate would prepare (see the module docstring)."""
    steps = pylate_preparation(folder, max_model_len)
    if steps:
        raise ValueError(
            f"{folder} is a PyLate ColBERT checkpoint whose encode {'; '.join(steps)}. The engine feeds the model "
            f"the text as given and does not know queries from documents, so its vectors would differ from PyLate's. "
            f"It serves PyLate checkpoints whose config_sentence_transformers.json sets query_prefix and "
            f"document_prefix to \"\", do_query_expansion to false, skiplist_words to [] and query_length / "
            f"document_length to at least max_model_len"
        )


__all__ = ["check_pylate", "is_pylate", "pylate_preparation"]
