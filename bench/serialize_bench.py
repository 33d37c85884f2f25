"""Cost of turning item results into result bytes (``assemble`` + ``encode_message``) per body.

The publish stage does this once per request, on the worker's own CPU, so it must stay far below
the cost of the forward pass. Two ways are timed on the same values:

- ``old``: item results as Python lists, encoded with ``json.dumps`` (the encoder before orjson);
- ``new``: item results as numpy float32 arrays, encoded with ``encode_message`` (orjson).

Both outputs are decoded and compared as float32 before timing, so a fast wrong answer cannot
show up as a win. Timings are medians of a few repeats; on a shared host only the ratio between
the two columns of one run means much.

Usage: python bench/serialize_bench.py [--seconds 0.2]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from poolworker.protocol import (
    PoolingRequest,
    encode_message,
    parse_request,
    result_message,
)
from poolworker.tasks import ItemResult, Plan, assemble, plan

DIM = 384  # all-MiniLM-L6-v2


def json_encode(message: Mapping[str, Any]) -> bytes:
    """The encoder before orjson, kept here as the baseline."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class Case:
    name: str
    body: dict[str, Any]
    shapes: list[tuple[int, ...]]  # one per item: () for a score, (D,) a vector, (T, D) a matrix


CASES = [
    Case("embed 1x384 float", {"task": "embed", "input": ["a"]}, [(DIM,)]),
    Case("embed 32x384 float", {"task": "embed", "input": ["a"] * 32}, [(DIM,)] * 32),
    Case("embed 32x384 base64", {"task": "embed", "input": ["a"] * 32, "encoding_format": "base64"}, [(DIM,)] * 32),
    Case("token_embed 100x384 float", {"task": "token_embed", "input": ["a"]}, [(100, DIM)]),
    Case("token_embed 100x384 base64", {"task": "token_embed", "input": ["a"], "encoding_format": "base64"}, [(100, DIM)]),
    Case("classify 32x3", {"task": "classify", "input": ["a"] * 32}, [(3,)] * 32),
    Case("rerank 32 docs", {"task": "rerank", "query": "q", "documents": ["d"] * 32}, [()] * 32),
]


def item_values(shapes: list[tuple[int, ...]], seed: int = 0) -> list[float | np.ndarray]:
    """Model-like outputs: float32, unit-scale, scores as Python floats."""
    rng = np.random.default_rng(seed)
    values: list[float | np.ndarray] = []
    for shape in shapes:
        if shape == ():
            values.append(float(rng.standard_normal()))
        elif len(shape) == 1 and shape[0] < 8:  # class probabilities
            logits = rng.standard_normal(shape).astype(np.float32)
            values.append(np.exp(logits) / np.exp(logits).sum())
        else:
            values.append(rng.standard_normal(shape).astype(np.float32))
    return values


def as_lists(values: list[float | np.ndarray]) -> list[float | list]:
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def message_bytes(request: PoolingRequest, work: Plan, data: list, encode: Callable[[Mapping[str, Any]], bytes]) -> bytes:
    """What the publisher does per request: assemble, wrap, encode."""
    results = [ItemResult(d, 7) for d in data]
    body = assemble(request, work, results, model="all-MiniLM-L6-v2")
    return encode(result_message(request_id=request.request_id, task=request.task, model="all-MiniLM-L6-v2",
                                 metadata={"trace": "abc"}, body=body))


def as_float32(value: Any) -> Any:
    """A decoded body with every number as float32 and every base64 vector decoded, for comparison."""
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_float32(v) for v in value]
    if isinstance(value, float):
        return np.float32(value)
    if isinstance(value, str) and len(value) > 64:  # a base64 vector
        return np.frombuffer(base64.b64decode(value), dtype="<f4").tolist()
    return value


def seconds_per_call(fn: Callable[[], object], budget_s: float) -> float:
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    reps = max(1, int(budget_s / 5 / once))
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - start) / reps)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.2, help="time budget per case and way")
    args = parser.parse_args()
    print(f"{'body':30} {'old bytes':>10} {'new bytes':>10} {'old µs':>9} {'new µs':>9} {'speed-up':>9}")
    for case in CASES:
        request = parse_request(json.dumps({"request_id": "bench-1", **case.body}).encode())
        work = plan(request)
        arrays = item_values(case.shapes)
        lists = as_lists(arrays)
        old = message_bytes(request, work, lists, json_encode)
        new = message_bytes(request, work, arrays, encode_message)
        if as_float32(json.loads(old)) != as_float32(json.loads(new)):
            raise SystemExit(f"{case.name}: old and new bodies differ")
        t_old = seconds_per_call(partial(message_bytes, request, work, lists, json_encode), args.seconds)
        t_new = seconds_per_call(partial(message_bytes, request, work, arrays, encode_message), args.seconds)
        print(f"{case.name:30} {len(old):>10} {len(new):>10} {t_old * 1e6:>9.1f} {t_new * 1e6:>9.1f} {t_old / t_new:>8.1f}x")


if __name__ == "__main__":
    main()
