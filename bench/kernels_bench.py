"""Each Triton pooling kernel against its torch reference on the same data, on one card.

Reports per case: time of both, speedup, bytes each must move at least, achieved bandwidth and
its fraction of the card's (~3.0 TB/s H100, ~4.3 TB/s H200, by ``torch.cuda.get_device_name()``),
and the largest difference between the two results. Only ratios from one run are comparable.

Usage: python bench/kernels_bench.py [--out bench/out/kernels_bench.json] [--smoke]
``--smoke`` runs tiny sizes; without a GPU it runs the kernels under TRITON_INTERPRET=1 (the
timings then mean nothing: it checks that the script works).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
PEAK_BYTES_PER_S = {"H200": 4.3e12, "H100": 3.0e12}  # read+write measured; GH200 → H200's HBM3e


def card_peak(name: str) -> float | None:
    for key, peak in PEAK_BYTES_PER_S.items():
        if key in name.upper():
            return peak
    return None


def time_call(fn: Callable[[], object], smoke: bool) -> float:
    """Seconds per call: median of a few timed batches of calls, after a warm-up."""
    if not CUDA:
        fn()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    # size the batch so one batch takes ~20 ms
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(1, min(1000, int(0.02 / once)))
    samples = []
    for _ in range(3 if smoke else 7):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end) / 1000 / reps)
    return sorted(samples)[len(samples) // 2]


def packed(lengths: list[int], hidden: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    h = torch.randn(int(cu[-1]), hidden, generator=g).to(dtype)
    return h.to(device), cu.to(device)


def ragged(n: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    return [int(x) for x in torch.randint(lo, hi + 1, (n,), generator=torch.Generator().manual_seed(seed))]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def cases(smoke: bool, device: str):
    """(kernel, case name, dtype, bytes moved, triton fn, torch fn, extra fields)."""
    from poolworker.kernels import pooling as ref
    from poolworker.kernels import triton_pooling as tk

    dtypes = [torch.float32] if smoke else [torch.float32, torch.bfloat16]
    seg_cases = (
        {"batch 8 x 3..40": (ragged(8, 3, 40), 64)}
        if smoke
        else {
            "batch 256 x 16..512, H=384": (ragged(256, 16, 512), 384),
            "batch 256 x 16..512, H=768": (ragged(256, 16, 512), 768),
            "long 8 x 2048, H=768": ([2048] * 8, 768),
            "singles 1024 x 1, H=768": ([1] * 1024, 768),
        }
    )
    for name, (lengths, hidden) in seg_cases.items():
        for dtype in dtypes:
            h, cu = packed(lengths, hidden, dtype, device)
            n, es = len(lengths), h.element_size()
            for fn in ("segment_cls", "segment_last", "segment_mean", "segment_max"):
                reads = n * hidden * es if fn in ("segment_cls", "segment_last") else h.numel() * es
                nbytes = reads + n * hidden * es + cu.numel() * 8
                yield fn, name, dtype, nbytes, (lambda f=fn, h=h, cu=cu: getattr(tk, f)(h, cu)), (lambda f=fn, h=h, cu=cu: getattr(ref, f)(h, cu)), {"tokens": h.shape[0], "sequences": n, "hidden": hidden}

    # SPLADE: max over [tokens, vocab] float32 log-saturated logits
    lengths, vocab = (ragged(4, 2, 20), 1000) if smoke else (ragged(32, 32, 256), 30522)
    h, cu = packed(lengths, vocab, torch.float32, device)
    h = torch.log1p(torch.relu(h))
    nbytes = h.numel() * 4 + len(lengths) * vocab * 4
    yield "segment_max", f"splade {len(lengths)} seqs, vocab {vocab}", torch.float32, nbytes, (lambda: tk.segment_max(h, cu)), (lambda: ref.segment_max(h, cu)), {"tokens": h.shape[0], "sequences": len(lengths), "hidden": vocab}

    norm_cases = [(64, 48, None)] if smoke else [(4096, 384, None), (4096, 768, 256), (4096, 1024, 512), (256, 30522, None)]
    for m, d, dims in norm_cases:
        for dtype in dtypes:
            x = torch.randn(m, d, device=device).to(dtype)
            out_d = dims or d
            nbytes = 2 * m * out_d * x.element_size()
            yield "normalize_and_cut", f"{m} x {d} -> {out_d}", dtype, nbytes, (lambda x=x, dims=dims: tk.normalize_and_cut(x, dims)), (lambda x=x, dims=dims: ref.normalize_and_cut(x, dims)), {"rows": m, "dim": d, "dimensions": dims}

    lq, ld, dim = (8, 40, 32) if smoke else (32, 512, 128)
    for dtype in dtypes:
        g = torch.Generator().manual_seed(1)
        q = torch.randn(lq, dim, generator=g).to(dtype).to(device)
        doc = torch.randn(ld, dim, generator=g).to(dtype).to(device)
        nbytes = (lq + ld) * dim * q.element_size() + 4
        yield "maxsim", f"Lq={lq} Ld={ld} D={dim}", dtype, nbytes, (lambda q=q, doc=doc: tk.maxsim(q, doc)), (lambda q=q, doc=doc: ref.maxsim(q, doc)), {"flops": 2 * lq * ld * dim}

        lengths = ragged(4, 5, 40) if smoke else ragged(100, 64, 512)
        docs = [torch.randn(n, dim, generator=g).to(dtype).to(device) for n in lengths]
        nbytes = (lq + sum(lengths)) * dim * q.element_size() + len(lengths) * 4
        yield "maxsim_many", f"Lq={lq}, {len(lengths)} docs x {min(lengths)}..{max(lengths)}, D={dim}", dtype, nbytes, (lambda q=q, docs=docs: tk.maxsim_many(q, docs)), (lambda q=q, docs=docs: ref.maxsim_many(q, docs)), {"flops": 2 * lq * sum(lengths) * dim, "note": "triton time includes packing the list (torch.cat); torch is a loop of maxsim"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(os.environ.get("OUT", ROOT / "bench" / "out")) / "kernels_bench.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (and interpreted kernels without a GPU)")
    args = ap.parse_args()

    import triton

    device = "cuda" if CUDA else "cpu"
    name = torch.cuda.get_device_name() if CUDA else platform.processor() or "cpu"
    peak = card_peak(name) if CUDA else None
    results = []
    for kernel, case, dtype, nbytes, tri, ref_fn, extra in cases(args.smoke, device):
        diff = max_diff(tri(), ref_fn())
        t_tri, t_ref = time_call(tri, args.smoke), time_call(ref_fn, args.smoke)
        row = {
            "kernel": kernel, "case": case, "dtype": str(dtype).removeprefix("torch."), **extra,
            "bytes": nbytes, "triton_us": t_tri * 1e6, "torch_us": t_ref * 1e6, "speedup": t_ref / t_tri,
            "triton_TBps": nbytes / t_tri / 1e12, "torch_TBps": nbytes / t_ref / 1e12,
            "triton_bw_fraction": nbytes / t_tri / peak if peak else None,
            "torch_bw_fraction": nbytes / t_ref / peak if peak else None,
            "max_abs_diff": diff,
        }
        if "flops" in extra:
            row["triton_TFLOPs"] = extra["flops"] / t_tri / 1e12
        results.append(row)
        frac = f"{row['triton_bw_fraction']:.0%} of peak" if peak else "peak unknown"
        print(f"{kernel:18s} {row['dtype']:8s} {case:42s} triton {row['triton_us']:9.1f} us  torch {row['torch_us']:9.1f} us  "
              f"x{row['speedup']:5.2f}  {row['triton_TBps']:.3f} TB/s ({frac})  diff {diff:.2e}", flush=True)

    report = {
        "bench": "kernels", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": name,  # noqa: UP017 (3.10)
        "peak_TBps": peak / 1e12 if peak else None, "smoke": args.smoke, "interpreted": not CUDA,
        "torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0], "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
