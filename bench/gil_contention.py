"""How much the model thread loses to Python work on other threads of the same process.

The worker's model thread runs forward passes (torch releases the interpreter lock inside each
op and takes it back after), while the receive and publish threads run Python. This measures
the model thread's own stage — ``batching.infer`` on requests the preparer already tokenized,
with the near-free tiny BERT (hidden 32, one layer), single intra-op thread — three ways in one
run:

- alone;
- while one other thread runs a pure-Python loop (the worst case of a busy receive thread);
- the same, with the interpreter's switch interval cut from 5 ms to ``--switch-interval``;
- the same engine calls run by a child process that loaded its own copy of the model, fed the
  token ids through a pipe (``multiprocessing``), alone and while the busy thread runs here: a
  sketch of the model-process layout bench/RESULTS.md proposes, timed from this side (sending
  ids, waiting, receiving the float32 results).

It reports wall and thread-CPU microseconds per text. The gap between the two in the live
worker (``poolworker_inference_seconds`` against the thread's CPU time) is what this isolates: a
forward needs the lock back after every op, and gets it only when the other thread lets go.

Usage: python bench/gil_contention.py [--texts 5000] [--switch-interval 0.0002]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _model_process(path: str, conn) -> None:
    """The child: its own engine; answers each ``(call without engine, inputs)`` with
    ``run_call``'s results until it receives None."""
    from dataclasses import replace

    from poolworker.engine import Engine
    from poolworker.tasks import run_call

    engine = Engine(path)
    conn.send("ready")
    while (work := conn.recv()) is not None:
        call, inputs = work
        conn.send(run_call(replace(call, engine=engine), inputs))


def _timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    run()
    return time.perf_counter() - wall, time.thread_time() - cpu


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """One intra-op thread here and in the child (which inherits ``OMP_NUM_THREADS``), both
    restored afterwards: a test calls ``main`` inside its own process, and a count left in the
    environment would pin every process that test session spawns later to one thread."""
    import torch

    from poolworker.model_process import temporary_environment

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with temporary_environment({"OMP_NUM_THREADS": "1"}):
            yield
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> dict:
    with _one_intra_op_thread():
        return _measure(argv)


def _measure(argv: list[str] | None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=5000)
    p.add_argument("--batch", type=int, default=124, help="requests per model batch (the worker's typical batch)")
    p.add_argument("--switch-interval", type=float, default=0.0002)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = p.parse_args(argv)

    import gc

    import numpy as np

    from bench.models import tiny_bert
    from bench.pipeline import embed_requests, short_texts
    from poolworker.batching import infer
    from poolworker.cache import NullCache
    from poolworker.corpus import find_minilm, load_texts
    from poolworker.engine import Engine
    from poolworker.prepare import Preparer
    from poolworker.tasks import run_call
    from poolworker.work import Source

    args.out.mkdir(parents=True, exist_ok=True)
    texts = short_texts(load_texts(None), args.texts)
    model_path = tiny_bert(args.out / "tiny-bert", find_minilm())
    engine = Engine(model_path)
    preparer = Preparer({"tiny": engine}, NullCache(), results_topic="out", allowed_reply_topics=None,
                        max_request_bytes=1 << 20, max_items_per_request=16)
    records = [(Source("requests", i % 6, i, key, None), value) for i, (key, value) in enumerate(embed_requests(texts, "tiny"))]
    prepared = preparer.prepare(records)
    if any(getattr(x, "error", None) is not None for x in prepared):
        raise SystemExit("a request was refused: the benchmark's requests are wrong")
    batches = [prepared[i : i + args.batch] for i in range(0, len(prepared), args.batch)]
    gc.collect()
    gc.freeze()  # as the worker does after loading

    def model_stage() -> None:
        for batch in batches:
            infer(batch)

    model_stage()  # warm-up
    rows = {"alone": _timed(model_stage)}
    stop = threading.Event()

    def busy_python() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    import multiprocessing
    from dataclasses import replace

    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_model_process, args=(str(model_path), there), daemon=True)
    child.start()
    if here.recv() != "ready":
        raise SystemExit("the model process did not start")
    if len({p.call for p in prepared}) != 1:
        raise SystemExit("the requests do not share one engine call")
    remote = [(replace(b[0].call, engine=None), [x for p in b for _, x in p.inputs]) for b in batches]

    def remote_stage() -> None:
        for call, inputs in remote:
            here.send((call, inputs))
            results = here.recv()
            if len(results) != len(inputs):
                raise SystemExit("the model process answered the wrong number of items")

    remote_stage()  # warm-up
    call, inputs = remote[0]  # the child's answers are the model stage's own, or the row means nothing
    here.send((call, inputs))
    for theirs, ours in zip(here.recv(), run_call(batches[0][0].call, inputs)):
        if not np.array_equal(theirs.data, ours.data):
            raise SystemExit("the model process computed other vectors than this process")
    rows["in a model process fed through a pipe, alone"] = _timed(remote_stage)
    other = threading.Thread(target=busy_python, daemon=True)
    other.start()
    default_interval = sys.getswitchinterval()
    try:
        rows[f"beside a busy Python thread (switch interval {default_interval * 1e3:g} ms)"] = _timed(model_stage)
        sys.setswitchinterval(args.switch_interval)
        rows[f"beside a busy Python thread (switch interval {args.switch_interval * 1e3:g} ms)"] = _timed(model_stage)
        sys.setswitchinterval(default_interval)
        rows[f"in a model process, beside a busy Python thread here ({default_interval * 1e3:g} ms)"] = _timed(remote_stage)
    finally:
        sys.setswitchinterval(default_interval)
        stop.set()
        other.join()
        here.send(None)
        child.join(30)
    n = len(prepared)
    result = {name: {"wall_us_per_text": wall / n * 1e6, "cpu_us_per_text": cpu / n * 1e6} for name, (wall, cpu) in rows.items()}
    alone = result["alone"]["wall_us_per_text"]
    print(f"model stage (batching.infer), tiny BERT, {n} texts in batches of {args.batch}:")
    for name, row in result.items():
        print(f"  {name:<66} wall {row['wall_us_per_text']:8.1f} us/text  cpu {row['cpu_us_per_text']:6.1f}  "
              f"x{row['wall_us_per_text'] / alone:.1f}")
    (args.out / "gil_contention.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
