"""Where the shared inputs live: the docstrings corpus and the bundled MiniLM folder.

``poolworker dev`` streams corpus texts through itself; the tests, ``bench/`` and the GPU check
read the same corpus and model. A machine without ``../shared`` or the MiniLM package (the GPU
image) finds copies in ``bench/data/``, written by ``bench/prepare_gpu_data.py``. Imports
nothing heavy: the GPU check imports this without the Kafka and Redis layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "docstrings.jsonl"
BENCH_DATA = ROOT / "bench" / "data"
MINILM_ENV = "POOLWORKER_MINILM_PATH"
CORPUS_ENV = "POOLWORKER_CORPUS"


def find_minilm() -> Path:
    """all-MiniLM-L6-v2: ``$POOLWORKER_MINILM_PATH``, else the bundled package / HF cache, else
    ``bench/data/all-MiniLM-L6-v2``. Raises ``FileNotFoundError`` naming all three."""
    explicit = os.environ.get(MINILM_ENV)
    if explicit:
        return Path(explicit)
    from .engine.resolve import ModelNotFoundError, resolve_model_path

    try:
        return resolve_model_path("all-MiniLM-L6-v2")
    except (ModelNotFoundError, ImportError) as exc:
        copy = BENCH_DATA / "all-MiniLM-L6-v2"
        if (copy / "config.json").is_file():
            return copy
        raise FileNotFoundError(f"all-MiniLM-L6-v2 not found ({exc}); set {MINILM_ENV}, or run bench/prepare_gpu_data.py "
                                f"where it is installed to write {copy}") from exc


def find_corpus() -> Path:
    """The docstrings corpus: ``$POOLWORKER_CORPUS``, ``../shared/corpus``, or ``bench/data``."""
    for path in (os.environ.get(CORPUS_ENV), CORPUS, BENCH_DATA / "docstrings.jsonl"):
        if path and Path(path).is_file():
            return Path(path)
    raise FileNotFoundError(f"docstrings corpus not found at {CORPUS} or {BENCH_DATA} (or ${CORPUS_ENV})")


def load_texts(n: int | None, corpus: Path = CORPUS) -> list[str]:
    """The first ``n`` texts of ``corpus`` (all of them when ``n`` is None)."""
    texts: list[str] = []
    with Path(corpus).open(encoding="utf-8") as f:
        for line in f:
            if n is not None and len(texts) >= n:
                break
            if line.strip():
                texts.append(json.loads(line)["text"])
    return texts
