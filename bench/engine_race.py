"""Engine speed benchmark: ``Engine.embed`` against ``SentenceTransformer.encode`` in one process.

Everything a claim rests on is measured in the same run on the same machine: the baseline
(sentence-transformers, ``batch_size=32``), the engine, and the machine's dense GEMM peak
(``torch.mm`` on 4096 x H x 4H in the run's dtype), against which model-FLOP utilisation (MFU)
is computed from the linear-layer FLOPs of the tokens actually processed (padding never counts).
Runs of the two contenders alternate (A, B, A, B, ...) and medians are reported, because shared
machines are noisy.

``poolworker bench`` calls :func:`run_benchmark`; ``bench/engine_bench.py`` is the script form.
It lives under ``bench/`` (not in the installed package): a benchmark is a tool for this
repository, and the runtime should not carry sentence-transformers-shaped code it never runs.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.models import bert_base
from poolworker.corpus import find_corpus, find_minilm, load_texts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "out"
ST_BATCH_SIZE = 32


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def long_documents(texts: list[str], tokenizer, n: int, target_tokens: int = 300) -> list[str]:
    """Documents of about ``target_tokens`` tokens, made by joining consecutive corpus texts."""
    docs: list[str] = []
    parts: list[str] = []
    count = 0
    i = 0
    while len(docs) < n:
        text = texts[i % len(texts)]
        i += 1
        parts.append(text)
        count += len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if count >= target_tokens - 2:
            docs.append("\n".join(parts))
            parts, count = [], 0
    return docs


# ----------------------------------------------------------------------------------------------
# Machine facts
# ----------------------------------------------------------------------------------------------
def linear_flops_per_token(config) -> float:
    """FLOPs of the linear layers for one token (2 per multiply-add); attention scores excluded."""
    h = config.hidden_size
    layers = config.num_hidden_layers
    inter = config.intermediate_size
    heads = config.num_attention_heads
    if getattr(config, "model_type", "") in ("qwen2", "qwen3", "llama"):
        d = getattr(config, "head_dim", None) or h // heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        per_layer = h * (heads + 2 * kv) * d + heads * d * h + 3 * h * inter
    else:
        per_layer = 4 * h * h + 2 * h * inter
    return 2.0 * layers * per_layer


def gemm_peak_gflops(hidden: int, device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 7) -> float:
    """Best-of-repeats ``torch.mm`` throughput on 4096 x H x 4H, the model's own FFN shape."""
    a = torch.randn(4096, hidden, device=device, dtype=dtype)
    b = torch.randn(hidden, 4 * hidden, device=device, dtype=dtype)
    flops = 2.0 * 4096 * hidden * 4 * hidden
    inner = 5
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return flops / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cpu":
        info["avx512"] = "avx512f" in _cpu_flags()
    else:
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_name() -> str:
    for line in _cpu_flags().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def peak_memory(device: torch.device, result: dict):
    """Peak resident memory (MiB) while the block runs, sampled every 5 ms (CPU), or CUDA's
    ``max_memory_allocated``; stored in ``result['peak_mb']``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    peak = [_rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        result["peak_mb"] = max(peak[0], _rss_mb())


@dataclass
class Contender:
    """One way to embed a list of texts; ``run`` returns the embeddings as a float32 tensor."""

    name: str
    run: object  # Callable[[list[str]], torch.Tensor]
    times: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    last: torch.Tensor | None = None


def engine_contender(engine) -> Contender:
    def run(texts: list[str]) -> torch.Tensor:
        out = engine.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
        return torch.tensor([o.outputs.embedding for o in out])

    return Contender("engine", run)


def st_contender(model) -> Contender:
    def run(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=ST_BATCH_SIZE, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    return Contender("sentence-transformers", run)


def race(contenders: list[Contender], texts: list[str], repeats: int, device: torch.device, peaks: list[float] | None = None, hidden: int = 384) -> None:
    """Warm each up, then alternate them ``repeats`` times (A, B, A, B, ...); the GEMM peak is
    re-measured before each round into ``peaks`` (the best one counts), so a busy moment on a
    shared machine cannot inflate MFU."""
    for c in contenders:
        c.run(texts[: min(64, len(texts))])
    for _ in range(repeats):
        if peaks is not None:
            peaks.append(gemm_peak_gflops(hidden, device, repeats=3))
        for c in contenders:
            mem: dict = {}
            with peak_memory(device, mem):
                _sync(device)
                t0 = time.perf_counter()
                c.last = c.run(texts)
                _sync(device)
                c.times.append(time.perf_counter() - t0)
            c.peak_mb = max(c.peak_mb, mem["peak_mb"])


def latency_ms(run, texts: list[str], device: torch.device) -> dict:
    """Batch-1 latency: each text embedded alone, p50/p99 over the texts."""
    run(texts[:3])
    samples = []
    for t in texts:
        _sync(device)
        t0 = time.perf_counter()
        run([t])
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"n": len(samples), "p50_ms": _pct(samples, 50), "p99_ms": _pct(samples, 99), "mean_ms": statistics.fmean(samples)}


def _pct(sorted_values: list[float], q: float) -> float:
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


# ----------------------------------------------------------------------------------------------
# The suite
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    model: str  # label
    path: Path
    texts: dict[str, list[str]]  # set name -> texts


def set_utilisation(row: dict, flops_per_token: float, peak_gflops: float) -> None:
    """MFU of both contenders against ``peak_gflops``, and the speed-up ceiling: what any exact
    forward could reach at most, every linear layer at the torch.mm peak and nothing else
    (tokenization, attention, norms, pooling) costing any time, i.e. 1 / MFU(ST)."""
    row["gemm_peak_gflops"] = peak_gflops
    for name in ("sentence-transformers", "engine"):
        c = row[name]
        c["mfu"] = row["tokens"] * flops_per_token / c["seconds_median"] / 1e9 / peak_gflops
    row["speedup_ceiling"] = 1 / row["sentence-transformers"]["mfu"]


def run_case(case: Case, device: torch.device, repeats: int, latency_n: int, peaks: list[float], log=print) -> dict:
    from sentence_transformers import SentenceTransformer

    from poolworker import Engine

    engine = Engine(str(case.path), device=device)
    st = SentenceTransformer(str(case.path), device=str(device))
    flops_tok = linear_flops_per_token(engine.model.config)
    result = {
        "model": case.model,
        "path": str(case.path),
        "forward_path": engine.model.forward_path,
        "max_batch_tokens": engine.runner.max_batch_tokens,
        "linear_mflop_per_token": flops_tok / 1e6,
        "sets": {},
    }
    for set_name, texts in case.texts.items():
        ids = engine.tokenizer.tokenizer(texts, truncation=True, max_length=engine.max_model_len)["input_ids"]
        tokens = sum(map(len, ids))
        a, b = st_contender(st), engine_contender(engine)
        race([a, b], texts, repeats, device, peaks, engine.model.config.hidden_size)
        row = {"docs": len(texts), "tokens": tokens, "mean_tokens": tokens / len(texts)}
        for c in (a, b):
            t = statistics.median(c.times)
            row[c.name] = {
                "seconds_median": t,
                "seconds_all": c.times,
                "docs_per_s": len(texts) / t,
                "tokens_per_s": tokens / t,
                "peak_mb": c.peak_mb,
            }
        row["speedup"] = row["sentence-transformers"]["seconds_median"] / row["engine"]["seconds_median"]
        row["min_cosine_vs_st"] = _min_cosine(a.last, b.last)
        set_utilisation(row, flops_tok, max(peaks))
        result["sets"][set_name] = row
        log(
            f"  {case.model:<10} {set_name:<6} tokens={tokens:>7}  st={row['sentence-transformers']['tokens_per_s']:8.0f} tok/s  "
            f"engine={row['engine']['tokens_per_s']:8.0f} tok/s  x{row['speedup']:.2f} (ceiling x{row['speedup_ceiling']:.2f})  "
            f"MFU={row['engine']['mfu']:.0%}  min cos={row['min_cosine_vs_st']:.7f}"
        )
    if latency_n:
        short = next(iter(case.texts.values()))[:latency_n]
        result["latency_batch1"] = {
            "engine": latency_ms(engine_contender(engine).run, short, device),
            "sentence-transformers": latency_ms(st_contender(st).run, short, device),
        }
        lat = result["latency_batch1"]
        log(
            f"  {case.model:<10} batch-1 latency p50/p99: engine {lat['engine']['p50_ms']:.1f}/{lat['engine']['p99_ms']:.1f} ms, "
            f"st {lat['sentence-transformers']['p50_ms']:.1f}/{lat['sentence-transformers']['p99_ms']:.1f} ms"
        )
    result["gemm_peak_gflops"] = max(peaks)
    for row in result["sets"].values():  # every set against the best peak of the whole model run
        set_utilisation(row, flops_tok, max(peaks))
    del engine, st
    return result


def run_benchmark(
    models: tuple[str, ...] = ("minilm", "bert-base"),
    short_docs: int = 2000,
    long_docs: int = 300,
    base_short_docs: int = 400,
    base_long_docs: int = 60,
    repeats: int = 3,
    latency_n: int = 200,
    device: str = "cpu",
    out_dir: str | Path = DEFAULT_OUT,
    work_dir: str | Path | None = None,
    minilm_path: str | Path | None = None,
    corpus: str | Path | None = None,
    log=print,
) -> dict:
    """Run the suite, write ``engine_bench.json`` and ``engine_bench.png`` to ``out_dir``, and
    return the results. ``bert-base`` is a random-weight BERT-base-shaped model (speed only;
    outputs are still compared with sentence-transformers on the same weights)."""
    from transformers import AutoTokenizer

    from poolworker.engine.runner import configure_threads

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dev = torch.device(device)
    if dev.type == "cpu":
        configure_threads()
    minilm = Path(minilm_path) if minilm_path else find_minilm()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    texts = load_texts(max(short_docs, 4 * long_docs + 200), Path(corpus) if corpus else find_corpus())
    docs = long_documents(texts, tokenizer, long_docs)
    info = machine_info(dev)
    results: dict = {"machine": info, "settings": {"repeats": repeats, "st_batch_size": ST_BATCH_SIZE}, "models": {}, "gemm_peak_gflops": {}}
    log(f"machine: {info['processor']} | {info['cpus']} cpus | torch {info['torch']} | {info['device']}")
    for name in models:
        if name == "minilm":
            case = Case("minilm", minilm, {"short": texts[:short_docs], "long": docs})
            hidden = 384
        elif name == "bert-base":
            work = Path(work_dir) if work_dir else Path(out_dir) / "models"
            path = bert_base(work / "bert-base-random", minilm)
            case = Case("bert-base", path, {"short": texts[:base_short_docs], "long": docs[:base_long_docs]})
            hidden = 768
        else:
            raise ValueError(f"unknown benchmark model {name!r} (minilm, bert-base)")
        peaks = [gemm_peak_gflops(hidden, dev)]
        log(f"{name}: torch.mm 4096x{hidden}x{4 * hidden} peak {peaks[0]:.0f} GFLOP/s (re-measured before every round)")
        results["models"][name] = run_case(case, dev, repeats, latency_n, peaks, log=log)
        results["gemm_peak_gflops"][name] = max(peaks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    chart = write_chart(results, out / "engine_bench.png")
    results["files"] = [str(out / "engine_bench.json")] + ([str(chart)] if chart else [])
    log("")
    log(format_table(results))
    return results


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------
def table_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, r in results["models"].items():
        for set_name, s in r["sets"].items():
            st, en = s["sentence-transformers"], s["engine"]
            rows.append(
                [
                    name,
                    set_name,
                    f"{s['docs']} / {s['tokens']}",
                    f"{st['tokens_per_s']:.0f}",
                    f"{en['tokens_per_s']:.0f}",
                    f"{en['docs_per_s']:.0f}",
                    f"{s['speedup']:.2f}x",
                    f"{s['speedup_ceiling']:.2f}x" if "speedup_ceiling" in s else "",
                    f"{en['mfu']:.0%} ({st['mfu']:.0%})",
                    f"{s['min_cosine_vs_st']:.6f}",
                    f"{en['peak_mb']:.0f} ({st['peak_mb']:.0f})",
                ]
            )
    return rows


TABLE_HEADER = [
    "model",
    "set",
    "docs / tokens",
    "ST tok/s",
    "engine tok/s",
    "engine docs/s",
    "speedup",
    "ceiling (1 / ST MFU)",
    "MFU engine (ST)",
    "min cos",
    "peak RSS MiB engine (ST)",
]


def format_table(results: dict, markdown: bool = True) -> str:
    rows = table_rows(results)
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for name, r in results["models"].items():
        lat = r.get("latency_batch1")
        if lat:
            e, s = lat["engine"], lat["sentence-transformers"]
            lines.append(
                f"\n{name}: batch-1 latency p50/p99 engine {e['p50_ms']:.1f}/{e['p99_ms']:.1f} ms, "
                f"sentence-transformers {s['p50_ms']:.1f}/{s['p99_ms']:.1f} ms; torch.mm peak {r['gemm_peak_gflops']:.0f} GFLOP/s; "
                f"forward: {r['forward_path']}"
            )
    return "\n".join(lines)


def write_chart(results: dict, path: Path) -> Path | None:
    """Tokens/s per model and text set, engine next to sentence-transformers (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels, st_vals, en_vals, ratios = [], [], [], []
    for name, r in results["models"].items():
        for set_name, s in r["sets"].items():
            labels.append(f"{name}\n{set_name}")
            st_vals.append(s["sentence-transformers"]["tokens_per_s"])
            en_vals.append(s["engine"]["tokens_per_s"])
            ratios.append(s["speedup"])
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(labels)), 4))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], st_vals, width=0.4, label=f"SentenceTransformer.encode(batch_size={ST_BATCH_SIZE})")
    bars = ax.bar([i + 0.2 for i in x], en_vals, width=0.4, label="poolworker Engine.embed")
    for bar, ratio in zip(bars, ratios):
        ax.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("tokens / s")
    m = results["machine"]
    ax.set_title(f"{m['processor']} ({m['cpus']} cpus, {m['device']}), {m['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
