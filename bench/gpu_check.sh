#!/usr/bin/env bash
# The GPU check (../shared/GPU.md): proves poolworker's CUDA path on one card in under 6 minutes,
# offline, and writes everything under $OUT (or bench/out/ when unset).
#
#   0. `import poolworker` must not import the Kafka / Redis layers (absent from the GPU image)
#   1. pytest tests/test_kernels.py: every Triton kernel against its torch reference on CUDA in
#      fp32/bf16/fp16 (the `gpu` tests, plus the device-agnostic ones, compiled), and the engine on
#      CUDA against sentence-transformers (min cosine >= 0.9999 in fp32)
#   2. bench/kernels_bench.py: each kernel vs its torch reference, bandwidth vs the card's
#   3. bench/gpu_engine_bench.py: engine vs SentenceTransformer.encode, BERT-base-shaped + MiniLM
#
# Usage: bash bench/gpu_check.sh [--smoke]
#   --smoke: tiny sizes so the script's logic runs on a CPU machine (the kernels then run under
#            TRITON_INTERPRET=1 and step 1 runs the non-gpu kernel tests instead of `-m gpu`).
# Env: PYTHON (default .venv/bin/python if present, else python3), OUT, POOLWORKER_MINILM_PATH,
#      POOLWORKER_CORPUS (default: the installed package / ../shared/corpus, else bench/data/).
# The GPU image has neither the MiniLM package nor ../shared: first run, where they are,
#   python bench/prepare_gpu_data.py      # bench/data/: fp16 MiniLM copy + corpus, ~46 MiB
# then start the device run with carry=["bench/data"].
# Every step runs even if an earlier one failed; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

OUT_DIR=${OUT:-$ROOT/bench/out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export OUT=$OUT_DIR
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"
say() { echo "[gpu_check] $*" | tee -a "$LOG"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# poolworker.kernels lives in kernels/ (a package-dir mapping in pyproject.toml). When this repo
# is not installed in $PY's environment, a shim folder of symlinks gives the same layout.
if ! "$PY" - "$ROOT" <<'EOF' 2>/dev/null
import sys, pathlib, poolworker, poolworker.kernels as k
root = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(poolworker.__file__).resolve().is_relative_to(root)
assert pathlib.Path(k.__file__).resolve().is_relative_to(root)
EOF
then
    mkdir -p "$WORK/shim/poolworker"
    for entry in "$ROOT"/poolworker/*; do ln -s "$entry" "$WORK/shim/poolworker/"; done
    ln -s "$ROOT/kernels" "$WORK/shim/poolworker/kernels"
    export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
    say "poolworker is not installed from this repo in $PY: importing it through a shim (PYTHONPATH=$WORK/shim)"
fi

CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>>"$LOG" || echo 0)
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true; fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, sys, torch
try:
    import triton; tv = triton.__version__
except Exception as exc:  # reported, not fatal: the torch path still runs
    tv = f"missing ({exc})"
name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"no CUDA ({platform.processor() or 'cpu'})"
print(f"[gpu_check] device: {name} | python {sys.version.split()[0]} | torch {torch.__version__} | triton {tv}")
EOF

STEPS=()
FAILED=0
run_step() {  # name, timeout seconds, command...
    local name=$1 limit=$2; shift 2
    local start rc
    say "---- $name (limit ${limit}s): $*"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    cat "$OUT_DIR/$name.log" >> "$LOG"
    local took=$(( $(date +%s) - start ))
    if [ "$rc" -eq 0 ]; then say "$name: ok in ${took}s"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say "$name: TIMED OUT after ${took}s"; FAILED=1
    else say "$name: FAILED (rc=$rc) in ${took}s"; FAILED=1; fi
    STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $took}")
}

# 0. the engine and kernels import without the streaming layers
run_step imports 60 "$PY" -c '
import sys
import poolworker, poolworker.engine, poolworker.kernels
bad = sorted({m.split(".")[0] for m in sys.modules} & {"kafka", "redis", "pydantic_settings"})
print("import poolworker loads:", bad or "none of kafka, redis, pydantic_settings")
sys.exit(1 if bad else 0)'

# 1. correctness. --noconftest: tests/conftest.py loads the Redis and Kafka fixtures.
PYTEST=("$PY" -m pytest --noconftest -p no:cacheprovider -o addopts= -q -rs tests/test_kernels.py)
if [ "$CUDA" = 1 ] && [ "$SMOKE" = 0 ]; then
    run_step pytest_gpu 170 "${PYTEST[@]}" --junitxml="$OUT_DIR/pytest_gpu.xml"
else
    say "no CUDA device (or --smoke): skipping pytest -m gpu; running the kernel tests that need none instead"
    run_step pytest_kernels 120 "${PYTEST[@]}" -m "not gpu" --junitxml="$OUT_DIR/pytest_kernels.xml"
fi

# 2. kernel speed, 3. engine throughput and latency
SMOKE_FLAG=()
[ "$SMOKE" = 1 ] && SMOKE_FLAG=(--smoke)
if [ "$CUDA" = 1 ] || [ "$SMOKE" = 1 ]; then
    run_step kernels_bench 60 "$PY" bench/kernels_bench.py "${SMOKE_FLAG[@]}" --out "$OUT_DIR/kernels_bench.json"
    run_step gpu_engine_bench 150 "$PY" bench/gpu_engine_bench.py "${SMOKE_FLAG[@]}" --out "$OUT_DIR/gpu_engine_bench.json"
else
    say "no CUDA device: the benchmarks need one (bash bench/gpu_check.sh --smoke checks them on CPU)"
    FAILED=1
fi

# A summary: the steps, and the headline numbers as Markdown for bench/RESULTS.md.
STEPS_JSON=$(IFS=,; echo "[${STEPS[*]}]")
"$PY" - "$OUT_DIR" "$STEPS_JSON" "$SMOKE" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from datetime import date
from pathlib import Path
out, steps, smoke = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1"
kb = json.loads((out / "kernels_bench.json").read_text()) if (out / "kernels_bench.json").is_file() else None
eb = json.loads((out / "gpu_engine_bench.json").read_text()) if (out / "gpu_engine_bench.json").is_file() else None
device = (kb or eb or {}).get("device", "unknown")
(out / "gpu_check_summary.json").write_text(json.dumps({"device": device, "date": str(date.today()), "smoke": smoke,
    "steps": steps, "ok": all(s["rc"] == 0 for s in steps)}, indent=2) + "\n")
lines = [f"## GPU check: {device}, {date.today()}{' (smoke: numbers mean nothing)' if smoke else ''}", ""]
lines += ["| step | result | seconds |", "|---|---|---|"] + [f"| {s['step']} | {'ok' if s['rc'] == 0 else 'rc=' + str(s['rc'])} | {s['seconds']} |" for s in steps]
if kb:
    lines += ["", f"Kernels (peak {kb['peak_TBps'] or 'unknown'} TB/s; triton {kb['triton']}, torch {kb['torch']}):", "",
              "| kernel | dtype | case | triton µs | torch µs | speedup | triton TB/s | % of peak |", "|---|---|---|---|---|---|---|---|"]
    for r in kb["results"]:
        frac = f"{r['triton_bw_fraction']:.0%}" if r["triton_bw_fraction"] is not None else "-"
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['case']} | {r['triton_us']:.1f} | {r['torch_us']:.1f} | {r['speedup']:.2f} | {r['triton_TBps']:.3f} | {frac} |")
if eb:
    lines += ["", f"Engine vs SentenceTransformer.encode (ST batch {eb['results'][0]['st_batch_size'] if eb['results'] else '-'}; kernels: {eb['kernels_backend']}):", "",
              "| model | dtype | engine docs/s | engine tok/s | ST docs/s | ratio | engine / ST peak MiB | engine p50 / p99 ms | ST p50 / p99 ms | min cos |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in eb["results"]:
        e, s = r["engine"], r["sentence_transformers"]
        mem = f"{e['peak_gpu_mem_MiB']:.0f} / {s['peak_gpu_mem_MiB']:.0f}" if e["peak_gpu_mem_MiB"] is not None else "-"
        lines.append(f"| {r['model']} | {r['dtype']} | {e['docs_per_s']:.0f} | {e['tokens_per_s']:.0f} | {s['docs_per_s']:.0f} | "
                     f"{r['throughput_ratio_engine_over_st']:.2f} | {mem} | {e['latency_batch1']['p50_ms']:.2f} / {e['latency_batch1']['p99_ms']:.2f} | "
                     f"{s['latency_batch1']['p50_ms']:.2f} / {s['latency_batch1']['p99_ms']:.2f} | {r['min_cosine_engine_vs_st']:.6f} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

if [ "$FAILED" = 0 ]; then say "all steps passed; results in $OUT_DIR"; else say "SOME STEPS FAILED; results and logs in $OUT_DIR"; fi
exit "$FAILED"
