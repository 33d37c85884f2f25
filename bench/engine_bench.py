"""Engine speed: ``Engine.embed`` vs ``SentenceTransformer.encode(batch_size=32)`` in one run.

MiniLM (bundled weights) and a random-weight BERT-base-shaped model, on short corpus texts and on
~300-token documents (corpus texts joined); tokens/s, docs/s, speed-up, MFU against the
``torch.mm`` peak measured in the same run, batch-1 latency p50/p99, peak memory, min cosine
against sentence-transformers. Writes bench/out/engine_bench.json and engine_bench.png.

Usage: python bench/engine_bench.py [--models minilm,bert-base] [--repeats 3] [--device cpu]
       [--short-docs 2000] [--long-docs 300] [--latency-n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.engine_race import DEFAULT_OUT, run_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm,bert-base")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--short-docs", type=int, default=2000)
    p.add_argument("--long-docs", type=int, default=300)
    p.add_argument("--base-short-docs", type=int, default=400)
    p.add_argument("--base-long-docs", type=int, default=60)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--minilm", default=None, help="MiniLM folder (default: the bundled package)")
    p.add_argument("--corpus", default=None, help="docstrings.jsonl (default: $POOLWORKER_CORPUS, ../shared/corpus, bench/data)")
    a = p.parse_args()
    run_benchmark(
        models=tuple(m for m in a.models.split(",") if m),
        short_docs=a.short_docs,
        long_docs=a.long_docs,
        base_short_docs=a.base_short_docs,
        base_long_docs=a.base_long_docs,
        repeats=a.repeats,
        latency_n=a.latency_n,
        device=a.device,
        out_dir=a.out,
        minilm_path=a.minilm,
        corpus=a.corpus,
    )


if __name__ == "__main__":
    main()
