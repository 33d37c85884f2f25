"""Triton pooling kernels against their torch references (``kernels/pooling.py``).

Without a GPU the Triton kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (set below,
before the kernel module is imported: triton reads it when a kernel is defined). With one, the
``gpu``-marked tests run them compiled on CUDA in fp32, bf16 and fp16, and check the engine on
CUDA against sentence-transformers (``bench/gpu_check.sh`` runs those, with ``--noconftest`` so
that this module needs nothing from conftest.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # the non-gpu tests run compiled on a GPU machine, interpreted elsewhere
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from poolworker.kernels import pooling as ref

from poolworker import corpus, kernels

REPO = Path(__file__).resolve().parent.parent
TRITON_MISSING = importlib.util.find_spec("triton") is None
needs_triton = pytest.mark.skipif(TRITON_MISSING, reason="triton is not installed (pip install triton): the Triton kernels cannot be checked")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def _triton_module():
    """The Triton kernel module, defined in interpreter mode when there is no GPU (reloaded if
    something imported it before TRITON_INTERPRET was set)."""
    mod = importlib.import_module("poolworker.kernels.triton_pooling")
    if not CUDA:
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(mod._segment_reduce_kernel, InterpretedFunction):
            mod = importlib.reload(mod)
    return mod


@pytest.fixture(scope="module")
def tk():
    return _triton_module()


def packed(lengths: list[int], hidden: int, dtype=torch.float32, device=DEVICE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
    h = torch.randn(int(cu[-1]), hidden, generator=g).to(dtype)
    return h.to(device), cu.to(device)


# Interpreted Triton is slow, but these sizes take seconds: every length case at every H.
LENGTH_CASES = {"1": [1], "2": [2], "7": [7], "512": [512], "2048": [2048], "mixed": [1, 2, 7, 512, 3, 2048, 64, 1, 130]}
SEGMENT_FNS = ["segment_cls", "segment_last", "segment_mean", "segment_max"]
CPU_CASES = [(name, h) for name in LENGTH_CASES for h in (64, 100, 384, 768)]


def assert_segment_close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if name != "segment_mean":  # a copy or a max: exact in any dtype
        assert torch.equal(got, want)
    elif got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:  # same fp32 sum in another order, then one rounding: at most an ulp apart
        torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# Any device: interpreted on CPU without a GPU, compiled on CUDA with one
# ----------------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("fn", SEGMENT_FNS)
@pytest.mark.parametrize("case,hidden", CPU_CASES)
def test_segment_kernels_match_torch(tk, fn, case, hidden):
    h, cu = packed(LENGTH_CASES[case], hidden, seed=hidden)
    assert_segment_close(fn, getattr(tk, fn)(h, cu), getattr(ref, fn)(h, cu))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_in_the_interpreter(tk, dtype):
    h, cu = packed(LENGTH_CASES["mixed"], 100, dtype=dtype, seed=5)
    for fn in SEGMENT_FNS:
        assert_segment_close(fn, getattr(tk, fn)(h, cu), getattr(ref, fn)(h, cu))
    torch.testing.assert_close(tk.normalize_and_cut(h[:40], 64).float(), ref.normalize_and_cut(h[:40], 64).float(), rtol=2e-2, atol=4e-3)
    if CUDA or dtype == torch.float16:  # the interpreter's tl.dot has no bf16 (numpy has none)
        torch.testing.assert_close(tk.maxsim(h[:9], h[9:]), ref.maxsim(h[:9], h[9:]), rtol=1e-4, atol=1e-2)


@needs_triton
@pytest.mark.parametrize("fn", ["segment_mean", "segment_max"])
@pytest.mark.parametrize("split", ["one program per sequence", "tokens split over programs"])
def test_segment_reductions_both_launch_shapes(tk, monkeypatch, fn, split):
    """Few long sequences split their tokens over programs; many short ones don't. Force each."""
    monkeypatch.setattr(tk, "_programs_wanted", (lambda device: 1) if split.startswith("one") else (lambda device: 10**6))
    h, cu = packed([300, 1, 2048, 129], 100, seed=3)
    assert_segment_close(fn, getattr(tk, fn)(h, cu), getattr(ref, fn)(h, cu))


@needs_triton
def test_segment_kernels_accept_non_contiguous_rows(tk):
    h, cu = packed([5, 9, 1], 130)
    view = h[:, 2:102]  # row stride 130, 100 features
    for fn in SEGMENT_FNS:
        assert_segment_close(fn, getattr(tk, fn)(view, cu), getattr(ref, fn)(view, cu))


@needs_triton
@pytest.mark.parametrize("dim", [64, 100, 384, 768])
@pytest.mark.parametrize("dimensions", [None, 32, 50, 10_000])
def test_normalize_and_cut_matches_torch(tk, dim, dimensions):
    x = torch.randn(37, dim, generator=torch.Generator().manual_seed(dim)).to(DEVICE)
    x[3] = 0.0  # a zero row stays zero (eps), as in F.normalize
    got, want = tk.normalize_and_cut(x, dimensions), ref.normalize_and_cut(x, dimensions)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_triton
def test_normalize_and_cut_wide_rows_and_other_shapes(tk):
    g = torch.Generator().manual_seed(1)
    wide = torch.relu(torch.randn(3, 30522, generator=g)).to(DEVICE)  # a SPLADE vector: the two-pass path
    torch.testing.assert_close(tk.normalize_and_cut(wide), ref.normalize_and_cut(wide), rtol=1e-5, atol=1e-7)
    cube = torch.randn(2, 5, 48, generator=g).to(DEVICE)
    torch.testing.assert_close(tk.normalize_and_cut(cube, 40), ref.normalize_and_cut(cube, 40), rtol=1e-5, atol=1e-6)
    strided = torch.randn(48, 9, generator=g).to(DEVICE).T  # feature stride != 1
    torch.testing.assert_close(tk.normalize_and_cut(strided, 20), ref.normalize_and_cut(strided, 20), rtol=1e-5, atol=1e-6)
    assert torch.equal(tk.normalize_and_cut(cube, 7, normalize=False), ref.normalize_and_cut(cube, 7, normalize=False))
    assert tk.normalize_and_cut(torch.empty(0, 16, device=DEVICE)).shape == (0, 16)


@needs_triton
@pytest.mark.parametrize("dim", [64, 100, 128, 384])
@pytest.mark.parametrize("lq,ld", [(1, 1), (7, 2), (32, 7), (5, 512)])
def test_maxsim_matches_torch(tk, dim, lq, ld):
    g = torch.Generator().manual_seed(lq * 1000 + ld)
    q, d = torch.randn(lq, dim, generator=g).to(DEVICE), torch.randn(ld, dim, generator=g).to(DEVICE)
    got, want = tk.maxsim(q, d), ref.maxsim(q, d)
    assert got.shape == () and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@needs_triton
def test_maxsim_long_document_and_many(tk):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(32, 128, generator=g).to(DEVICE)
    long_doc = torch.randn(2048, 128, generator=g).to(DEVICE)
    torch.testing.assert_close(tk.maxsim(q, long_doc), ref.maxsim(q, long_doc), rtol=1e-5, atol=1e-4)
    docs = [torch.randn(n, 128, generator=g).to(DEVICE) for n in (1, 2, 7, 300, 65, 16)]
    got = tk.maxsim_many(q, docs)
    assert got.shape == (len(docs),) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref.maxsim_many(q, docs), rtol=1e-5, atol=1e-4)
    assert tk.maxsim_many(q, []).shape == (0,)


AOT_COMPILE = r"""
import itertools, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import poolworker.kernels.triton_pooling as tk

def build(fn, sig, consts):
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": 4})
    assert kernel.asm.get("cubin"), "no cubin"

for dt in ("fp32", "bf16"):
    for last in (False, True):
        build(tk._gather_rows_kernel, {"hidden_ptr": f"*{dt}", "cu_ptr": "*i64", "out_ptr": f"*{dt}", "H": "i32",
              "stride_h": "i32", "stride_o": "i32", "LAST": "constexpr", "BLOCK_H": "constexpr"}, {"LAST": last, "BLOCK_H": 1024})
    for is_max, split in itertools.product((False, True), (False, True)):
        build(tk._segment_reduce_kernel, {"hidden_ptr": f"*{dt}", "cu_ptr": "*i64", "out_ptr": "*fp32" if split else f"*{dt}",
              "H": "i32", "N": "i32", "stride_h": "i32", "stride_o": "i32", "split": "i32", "IS_MAX": "constexpr",
              "SPLIT_TOKENS": "constexpr", "BLOCK_T": "constexpr", "BLOCK_H": "constexpr"},
              {"IS_MAX": is_max, "SPLIT_TOKENS": split, "BLOCK_T": 32, "BLOCK_H": 128})
    for one_pass, bm, bd in ((True, 8, 512), (False, 1, 2048)):
        build(tk._normalize_rows_kernel, {"x_ptr": f"*{dt}", "out_ptr": f"*{dt}", "M": "i32", "D": "i32", "stride_x": "i32",
              "stride_o": "i32", "eps": "fp32", "BLOCK_M": "constexpr", "BLOCK_D": "constexpr", "ONE_PASS": "constexpr"},
              {"BLOCK_M": bm, "BLOCK_D": bd, "ONE_PASS": one_pass})
    for one_k in (True, False):
        build(tk._maxsim_kernel, {"q_ptr": f"*{dt}", "d_ptr": f"*{dt}", "cu_ptr": "*i64", "out_ptr": "*fp32", "Lq": "i32",
              "D": "i32", "stride_q": "i32", "stride_d": "i32", "stride_o": "i32", "BLOCK_Q": "constexpr", "BLOCK_N": "constexpr",
              "BLOCK_K": "constexpr", "ONE_K": "constexpr", "PRECISION": "constexpr"},
              {"BLOCK_Q": 64, "BLOCK_N": 32, "BLOCK_K": 128, "ONE_K": one_k, "PRECISION": "ieee" if dt == "fp32" else None})
print("compiled")
"""


@needs_triton
def test_kernels_compile_for_hopper():
    """The interpreter is lenient; the real compiler is not. Every kernel variant compiles to an
    sm_90 cubin (triton's own ptxas, no GPU or driver needed), in a process without
    TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", AOT_COMPILE], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-4000:]


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
def test_dispatch_cpu_tensors_take_torch(monkeypatch):
    monkeypatch.delenv("POOLWORKER_KERNELS", raising=False)
    assert kernels.backend_for(torch.zeros(1)) is ref
    monkeypatch.setenv("POOLWORKER_KERNELS", "torch")
    assert kernels.backend_for(torch.zeros(1)) is ref
    monkeypatch.setenv("POOLWORKER_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="POOLWORKER_KERNELS"):
        kernels.segment_cls(torch.zeros(2, 3), torch.tensor([0, 2]))


@needs_triton
def test_dispatch_forced_triton_runs_the_kernels(tk, monkeypatch):
    monkeypatch.setenv("POOLWORKER_KERNELS", "auto" if CUDA else "triton")
    h, cu = packed([3, 1, 9], 64)
    assert kernels.backend_for(h) is tk
    assert_segment_close("segment_mean", kernels.segment_mean(h, cu), ref.segment_mean(h, cu))
    q = torch.randn(4, 64, device=DEVICE)
    torch.testing.assert_close(kernels.maxsim_many(q, [h[:3], h[3:]]), ref.maxsim_many(q, [h[:3], h[3:]]), rtol=1e-5, atol=1e-4)


def test_package_imports_and_runs_without_triton():
    """A finder that refuses triton: the package imports, CPU calls work, CUDA would fall back."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('triton blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from poolworker import kernels\n"
        "h = torch.arange(12.).reshape(4, 3); cu = torch.tensor([0, 1, 4])\n"
        "print(kernels.segment_mean(h, cu).tolist())\n"
        "assert kernels.triton_kernels() is None and 'blocked' in kernels.triton_error()\n"
        "assert 'triton' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "POOLWORKER_KERNELS"}
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]]


# ----------------------------------------------------------------------------------------------
# CUDA: compiled kernels in fp32 / bf16 / fp16
# ----------------------------------------------------------------------------------------------
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GPU_LENGTHS = {
    "singles": [1] * 64,
    "short": [2, 7, 1, 3, 5] * 20,
    "long": [2048, 512, 2048],
    "ragged": [int(x) for x in torch.randint(1, 2049, (200,), generator=torch.Generator().manual_seed(0))],
}


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [100, 384, 768, 1024])
@pytest.mark.parametrize("case", list(GPU_LENGTHS))
def test_cuda_segment_kernels(dtype, hidden, case):
    h, cu = packed(GPU_LENGTHS[case], hidden, dtype=dtype, device="cuda", seed=hidden)
    assert kernels.backend_for(h) is _triton_module(), f"CUDA tensors should take the Triton path: {kernels.triton_error()}"
    for fn in SEGMENT_FNS:
        assert_segment_close(fn, getattr(kernels, fn)(h, cu), getattr(ref, fn)(h, cu))


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim,dimensions", [(384, None), (384, 128), (768, 256), (1024, 1000), (4096, 512), (30522, None)])
def test_cuda_normalize_and_cut(dtype, dim, dimensions):
    x = torch.randn(1000, dim, device="cuda").to(dtype)
    got, want = kernels.normalize_and_cut(x, dimensions), ref.normalize_and_cut(x, dimensions)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 4e-3}
    torch.testing.assert_close(got.float(), want.float(), **tol)


@gpu
@needs_cuda
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [64, 96, 128, 768])
def test_cuda_maxsim(dtype, dim):
    g = torch.Generator().manual_seed(dim)
    q = torch.randn(32, dim, generator=g).to(dtype).cuda()
    docs = [torch.randn(n, dim, generator=g).to(dtype).cuda() for n in (1, 2, 7, 180, 512, 2048)]
    tol = {"rtol": 1e-5, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-3, "atol": 1e-2}
    for doc in docs:
        torch.testing.assert_close(kernels.maxsim(q, doc), ref.maxsim(q, doc), **tol)
    torch.testing.assert_close(kernels.maxsim_many(q, docs), ref.maxsim_many(q, docs), **tol)


# ----------------------------------------------------------------------------------------------
# CUDA: the engine against sentence-transformers
# ----------------------------------------------------------------------------------------------
@gpu
@needs_cuda
def test_engine_on_cuda_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from poolworker import Engine

    try:
        path = corpus.find_minilm()
        texts = corpus.load_texts(500, corpus.find_corpus())
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    engine = Engine(str(path), device="cuda", dtype="float32")
    outs = engine.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    got = torch.tensor([o.outputs.embedding for o in outs])
    st = SentenceTransformer(str(path), device="cuda")
    want = st.encode(texts, batch_size=32, convert_to_tensor=True).float().cpu()
    assert got.shape == want.shape
    cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
    worst = int(cos.argmin())
    assert cos.min().item() >= 0.9999, f"text #{worst}: cosine {cos[worst].item():.7f}"
    if not TRITON_MISSING:
        assert kernels.backend_for(torch.zeros(1, device="cuda")) is _triton_module()
