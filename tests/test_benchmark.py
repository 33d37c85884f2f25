"""``poolworker bench`` / bench/engine_bench.py on a tiny run: the numbers it reports are the ones
its own definitions give (ratios of the measured times, MFU against the measured peak), and its
outputs really are sentence-transformers' outputs. ``poolworker bench --pipeline``
(bench/pipeline.py): its contenders run against a real broker and its report follows from them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import builders
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # the benchmarks live in bench/, outside the installed package

from bench.engine_race import format_table, linear_flops_per_token, run_benchmark


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, minilm_path):
    out = tmp_path_factory.mktemp("bench")
    lines: list[str] = []
    results = run_benchmark(models=("minilm",), short_docs=24, long_docs=3, repeats=2, latency_n=3, out_dir=out,
                            minilm_path=minilm_path, corpus=builders.corpus_path(), log=lines.append)
    return out, results, lines


def test_reported_numbers_follow_from_the_measured_times(tiny_run):
    out, _, _ = tiny_run
    saved = json.loads((out / "engine_bench.json").read_text())
    model = saved["models"]["minilm"]
    assert set(model["sets"]) == {"short", "long"}
    from transformers import AutoConfig

    flops = linear_flops_per_token(AutoConfig.from_pretrained(model["path"]))
    for row in model["sets"].values():
        st, en = row["sentence-transformers"], row["engine"]
        for c in (st, en):
            assert len(c["seconds_all"]) == 2
            assert c["seconds_median"] == pytest.approx(sum(c["seconds_all"]) / 2)
            assert c["tokens_per_s"] == pytest.approx(row["tokens"] / c["seconds_median"])
            assert c["mfu"] == pytest.approx(row["tokens"] * flops / c["seconds_median"] / 1e9 / row["gemm_peak_gflops"])
        assert row["speedup"] == pytest.approx(st["seconds_median"] / en["seconds_median"])
        assert row["speedup_ceiling"] == pytest.approx(1 / st["mfu"])
        assert row["gemm_peak_gflops"] == model["gemm_peak_gflops"]  # one peak, the best of the run
        assert row["min_cosine_vs_st"] >= 0.99999
    assert model["forward_path"].startswith("packed")
    lat = model["latency_batch1"]["engine"]
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]


def test_long_documents_are_long_and_table_lists_every_set(tiny_run):
    out, results, lines = tiny_run
    long_row = results["models"]["minilm"]["sets"]["long"]
    assert long_row["mean_tokens"] >= 250  # ~300-token documents, cut at MiniLM's 256
    table = format_table(results)
    assert table.count("| minilm |") == 2
    assert "ceiling" in table and (out / "engine_bench.png").is_file()
    assert any("ceiling" in line for line in lines)


def test_prepared_gpu_data_fits_a_device_carry_and_embeds_the_same(tmp_path, minilm_engine, corpus, Engine, monkeypatch):
    """bench/prepare_gpu_data.py: the float16 MiniLM copy plus the corpus stay under the 64 MiB a
    device run may carry, and the copy embeds like the original (weights rounded to fp16 only)."""
    import importlib.util

    import torch

    from poolworker import corpus as inputs

    spec = importlib.util.spec_from_file_location("prepare_gpu_data", Path(__file__).resolve().parents[1] / "bench" / "prepare_gpu_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.prepare(tmp_path)
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert size < 64 * 2**20
    assert written["corpus"].read_bytes() == builders.corpus_path().read_bytes()

    monkeypatch.setenv(inputs.MINILM_ENV, str(written["model"]))
    monkeypatch.setenv(inputs.CORPUS_ENV, str(written["corpus"]))
    assert inputs.find_minilm() == written["model"] and inputs.find_corpus() == written["corpus"]
    copy = Engine(str(written["model"]))
    texts = corpus[:32]
    a = torch.tensor([o.outputs.embedding for o in copy.embed(texts, truncate_prompt_tokens=-1)])
    b = torch.tensor([o.outputs.embedding for o in minilm_engine.embed(texts, truncate_prompt_tokens=-1)])
    assert torch.nn.functional.cosine_similarity(a, b).min().item() >= 0.9999


def test_bench_needs_a_source_checkout(monkeypatch, tmp_path):
    """An installed package has no bench/: ``poolworker bench`` says so instead of an ImportError."""
    from typer.testing import CliRunner

    from poolworker import cli

    assert cli.bench_module("engine_race").run_benchmark is run_benchmark
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "poolworker" / "cli.py"))
    result = CliRunner().invoke(cli.app, ["bench", "--model", "minilm"])
    assert result.exit_code == 2 and "source checkout" in result.output


# ----------------------------------------------------------------------------------------------
# bench/pipeline.py
# ----------------------------------------------------------------------------------------------
def test_pipeline_inputs_are_short_distinct_real_texts(corpus):
    from bench.pipeline import embed_requests, short_texts

    texts = short_texts(corpus, 3 * len(corpus))
    assert len(set(texts)) == len(texts) == 3 * len(corpus)  # cycled past the corpus, still distinct
    assert texts[0] == corpus[0].splitlines()[0].strip() and all("\n" not in t for t in texts)
    key, value = embed_requests(texts[:1], "tiny")[0]
    assert key == b"r0" and json.loads(value) == {"request_id": "r0", "task": "embed", "model": "tiny", "input": texts[0],
                                                   "truncate_prompt_tokens": -1}


def test_pipeline_numbers_follow_from_the_measurements(tmp_path):
    from bench.pipeline import (
        bracketed,
        format_table,
        percentiles,
        ratios,
        throughput,
        write_chart,
    )

    assert throughput([1000, 1500, 3000], started_ms=500) == {"docs": 3, "seconds": 2.5, "docs_per_s": 1.2, "first_to_last_s": 2.0,
                                                             "first_to_last_docs_per_s": 1.0}
    lat = percentiles([float(v) for v in range(1, 102)])
    assert lat["p50_ms"] == 51 and lat["p99_ms"] == 100 and lat["max_ms"] == 101
    row = {"docs": 100, "seconds": 1.0}
    results = {"machine": {"processor": "cpu", "cpus": 2, "date": "today"},
               "tiny": {"relay": {**row, "docs_per_s": 5000.0}, "worker_p1": {**row, "docs_per_s": 2500.0, "processes": 1},
                        "worker_p2": {**row, "docs_per_s": 4000.0, "processes": 2, "threads": 1, "inference_seconds": 0.5},
                        "engine": {**row, "docs_per_s": 10000.0}},
               "minilm": {"worker_p1": {**row, "docs_per_s": 90.0, "processes": 1},
                          "worker_librdkafka_p1": {**row, "docs_per_s": 97.0, "processes": 1, "transport": "kafka-librdkafka"},
                          "engine": bracketed({**row, "docs_per_s": 110.0}, {**row, "seconds": 1.2, "docs_per_s": 90.0})}}
    assert results["minilm"]["engine"]["runs_docs_per_s"] == [110.0, 90.0] and results["minilm"]["engine"]["seconds"] == 1.1
    results["ratios"] = ratios(results)
    assert results["ratios"] == pytest.approx({"worker/relay": 0.5, "worker/engine": 0.25, "2 procs/1 proc": 1.6,
                                               "worker 2 procs/relay": 0.8, "minilm worker/engine": 0.9,
                                               "minilm worker (librdkafka)/engine": 0.97})
    table = format_table(results)
    assert "| worker --processes 2 | 1 |" in table and "**1.60x**" in table
    assert "| worker --processes 1 --transport kafka-librdkafka |" in table and "**0.97x**" in table
    assert "25%" in table  # model busy: 0.5 s of inference per process over a 1 s span
    assert write_chart(results, tmp_path / "pipeline.png").is_file()


def test_pipeline_contenders_against_a_real_broker(broker, tmp_path, minilm_path, corpus):
    """The relay and a one-process worker on the same pre-loaded requests: every request
    answered once, a rate and a latency measured, the worker drained with exit 0."""
    from reliability.procs import ProcessPool

    from bench.models import tiny_bert
    from bench.pipeline import Sizes, embed_requests, run_relay, run_worker, short_texts

    sizes = Sizes.smoke()
    texts = short_texts(corpus, 120)
    messages = embed_requests(texts, "tiny")
    probe = texts[:5]
    relay = run_relay(broker.bootstrap_servers, messages, "tiny", sizes, probe)
    assert relay["distinct_request_ids"] == len(texts) and relay["docs_per_s"] > 0 and relay["latency"]["n"] == len(probe)

    pool = ProcessPool(tmp_path)
    try:
        tiny = tiny_bert(tmp_path / "tiny", minilm_path)
        worker = run_worker(pool, broker.bootstrap_servers, messages, "tiny", tiny, 1, sizes, probe)
    finally:
        pool.close()
    assert worker["distinct_request_ids"] == len(texts) and worker["errors"] == 0 and worker["exit_code"] == 0
    assert worker["latency"]["n"] == len(probe) and 0 < worker["latency"]["p50_ms"] <= worker["latency"]["p99_ms"]
    assert worker["assignments"] == {"worker": 1} and worker["inference_seconds"] > 0


def test_gil_contention_bench_times_the_model_stage_five_ways(tmp_path):
    """bench/gil_contention.py runs the worker's own model stage on real prepared requests (it
    refuses to time refused ones, and a model process that answers the wrong number of items)
    and reports each of its five conditions per text."""
    import torch

    env_before, threads_before = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    from bench.gil_contention import main

    result = main(["--texts", "120", "--batch", "40", "--out", str(tmp_path)])
    # its one-thread setting must not outlive it: later model processes of this session inherit the environment
    assert (os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()) == (env_before, threads_before)
    assert len(result) == 5 and "alone" in result
    for row in result.values():
        assert row["wall_us_per_text"] > 0 and row["cpu_us_per_text"] > 0
    assert json.loads((tmp_path / "gil_contention.json").read_text()) == result
