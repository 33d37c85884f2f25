"""Engine throughput and latency against ``SentenceTransformer.encode`` on the same card, same run.

Two models: a BERT-base-shaped encoder (12 layers, hidden 768, random weights, built here and
saved with the MiniLM tokenizer and Sentence-Transformers mean pooling + normalize) and
all-MiniLM-L6-v2. Both read the docstrings corpus (``../shared/corpus/docstrings.jsonl``, or
``bench/data/docstrings.jsonl``). For each model and dtype: docs/s, tokens/s, the engine/ST
ratio, peak GPU memory (weights included), batch-1 latency p50/p99, and the smallest cosine
between the two libraries' vectors (a guard that both computed the same thing).

The engine side is ``Engine.embed`` (vectors as Python lists); the ST side is ``encode`` with its
default numpy output and the given batch size. Only ratios measured in one run are comparable.

Usage: python bench/gpu_engine_bench.py [--out bench/out/gpu_engine_bench.json] [--smoke]
``--smoke``: a 2-layer BERT and 32 texts, runs on CPU too (checks the script, not the speed).
Imports only ``poolworker`` and its engine: never the Kafka / Redis layers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # bench.models; appended, so an installed (or gpu_check-shimmed) poolworker wins
CUDA = torch.cuda.is_available()
FORBIDDEN = ("kafka", "redis", "pydantic_settings")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def find_minilm() -> Path:
    from poolworker.corpus import find_minilm as find

    try:
        return find()
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc


def load_corpus(limit: int | None) -> tuple[list[str], str]:
    from poolworker.corpus import find_corpus, load_texts

    try:
        path = find_corpus()
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc
    return load_texts(limit, path), str(path)


SMOKE_BERT = {"hidden": 64, "layers": 2, "heads": 2, "intermediate": 256}


def build_bert_base(folder: Path, tokenizer_from: Path, smoke: bool) -> Path:
    """A BERT-base-shaped encoder with random weights, the MiniLM tokenizer, and ST mean pooling
    + normalize, so that the engine and ST pool the same way (a 2-layer one with ``smoke``)."""
    from bench.models import BERT_BASE, random_bert

    return random_bert(folder, tokenizer_from, **(SMOKE_BERT if smoke else BERT_BASE))


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_peak() -> None:
    if CUDA:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if CUDA else None


def timed(fn, repeats: int):
    """(best seconds over ``repeats`` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def latency(fn, texts: list[str], n: int) -> dict:
    for text in texts[:3]:
        fn([text])
    samples = []
    for i in range(n):
        sync()
        start = time.perf_counter()
        fn([texts[i % len(texts)]])
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"n": n, "p50_ms": statistics.median(samples), "p99_ms": samples[min(n - 1, round(0.99 * (n - 1)))], "mean_ms": statistics.fmean(samples)}


def bench_pair(label: str, path: Path, dtype_name: str, texts: list[str], args) -> dict:
    from sentence_transformers import SentenceTransformer

    from poolworker import Engine

    device = "cuda" if CUDA else "cpu"
    dtype = DTYPES[dtype_name]
    row: dict = {"model": label, "dtype": dtype_name, "docs": len(texts), "st_batch_size": args.st_batch_size}

    reset_peak()
    engine = Engine(str(path), device=device, dtype=dtype_name)
    warm = texts[: min(len(texts), 256)]
    engine.embed(warm, truncate_prompt_tokens=-1, use_tqdm=False)
    reset_peak()
    seconds, outs = timed(lambda: engine.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False), args.repeats)
    tokens = sum(o.num_prompt_tokens for o in outs)
    row["tokens"] = tokens
    row["engine"] = {"seconds": seconds, "docs_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds, "peak_gpu_mem_MiB": peak_mib(),
                     "max_batch_tokens": engine.runner.max_batch_tokens}
    engine_vecs = torch.tensor([o.outputs.embedding for o in outs])
    row["engine"]["latency_batch1"] = latency(lambda b: engine.embed(b, truncate_prompt_tokens=-1, use_tqdm=False), texts, args.latency_n)
    engine = outs = None  # free the GPU before the other library loads
    reset_peak()

    st = SentenceTransformer(str(path), device=device)
    if dtype != torch.float32:
        st = st.to(dtype)
    st.encode(warm, batch_size=args.st_batch_size, show_progress_bar=False)
    reset_peak()
    seconds, st_vecs = timed(lambda: st.encode(texts, batch_size=args.st_batch_size, show_progress_bar=False), args.repeats)
    row["sentence_transformers"] = {"seconds": seconds, "docs_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds, "peak_gpu_mem_MiB": peak_mib()}
    row["sentence_transformers"]["latency_batch1"] = latency(lambda b: st.encode(b, show_progress_bar=False), texts, args.latency_n)
    st = None
    reset_peak()

    st_vecs = torch.as_tensor(st_vecs).float()
    cos = torch.nn.functional.cosine_similarity(engine_vecs, st_vecs, dim=1)
    row["min_cosine_engine_vs_st"] = float(cos.min())
    row["throughput_ratio_engine_over_st"] = row["sentence_transformers"]["seconds"] / row["engine"]["seconds"]
    row["latency_p50_ratio_st_over_engine"] = row["sentence_transformers"]["latency_batch1"]["p50_ms"] / row["engine"]["latency_batch1"]["p50_ms"]
    e, s = row["engine"], row["sentence_transformers"]
    print(f"{label:10s} {dtype_name:8s} engine {e['docs_per_s']:8.1f} docs/s {e['tokens_per_s']:10.0f} tok/s | "
          f"ST {s['docs_per_s']:8.1f} docs/s | x{row['throughput_ratio_engine_over_st']:.2f} | "
          f"p50 {e['latency_batch1']['p50_ms']:.2f} vs {s['latency_batch1']['p50_ms']:.2f} ms | min cos {row['min_cosine_engine_vs_st']:.6f}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(os.environ.get("OUT", ROOT / "bench" / "out")) / "gpu_engine_bench.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes; runs on CPU")
    ap.add_argument("--docs", type=int, default=None, help="first N corpus texts (default: all; 32 with --smoke)")
    ap.add_argument("--dtypes", default=None, help="comma-separated, default float32,float16 on CUDA, float32 on CPU")
    ap.add_argument("--models", default="bert-base,minilm")
    ap.add_argument("--st-batch-size", type=int, default=32, help="SentenceTransformer.encode batch size (its default: 32)")
    ap.add_argument("--latency-n", type=int, default=None, help="batch-1 calls per library (default 200; 5 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes over the corpus, best kept (default 2; 1 with --smoke)")
    args = ap.parse_args()
    if not CUDA and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke to check the script on CPU")
    args.docs = args.docs or (32 if args.smoke else None)
    args.latency_n = args.latency_n or (5 if args.smoke else 200)
    args.repeats = args.repeats or (1 if args.smoke else 2)
    dtypes = (args.dtypes or ("float32,float16" if CUDA else "float32")).split(",")

    import poolworker

    texts, corpus_path = load_corpus(args.docs)
    minilm = find_minilm()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bert-base-random-") as tmp:
        models = {"bert-base": lambda: build_bert_base(Path(tmp), minilm, args.smoke), "minilm": lambda: minilm}
        for label in args.models.split(","):
            path = models[label]()
            for dtype_name in dtypes:
                rows.append(bench_pair(label, path, dtype_name, texts, args))

    from poolworker import kernels

    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))
    probe = torch.zeros(1, device="cuda" if CUDA else "cpu")
    report = {
        "bench": "gpu_engine", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (3.10)
        "device": torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu", "smoke": args.smoke,
        "torch": torch.__version__, "python": sys.version.split()[0], "poolworker": poolworker.__version__,
        "kernels_backend": "triton" if kernels.backend_for(probe).__name__.endswith("triton_pooling") else "torch", "triton_error": kernels.triton_error(),
        "corpus": corpus_path, "minilm": str(minilm), "forbidden_modules_loaded": loaded, "results": rows,
    }
    try:
        import sentence_transformers
        import transformers

        report["transformers"], report["sentence_transformers"] = transformers.__version__, sentence_transformers.__version__
    except ImportError:
        pass
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if loaded:
        print(f"FAIL: the engine bench imported {loaded}; the device image lacks them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
