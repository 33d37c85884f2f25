"""Gateway benchmark: what does the HTTP hop cost over calling the pool on Kafka directly?

One run, one Tansu broker, one ``poolworker run`` subprocess (no cache) and one gateway
subprocess in front of it. The worker serves ``--model``: ``tiny`` (default; a random one-layer
BERT with hidden 32 and MiniLM's tokenizer, ``bench/models.tiny_bert``) keeps the pool far from
its capacity, so what differs between the two paths is the HTTP hop; ``minilm`` is the bundled
model, whose forward dominates on a CPU. Single-text ``embed`` calls are sent open-loop at a steady
``--rate`` for ``--seconds``, alternately:

1. ``direct``: ``PoolClient.submit`` from this process (the Kafka request/reply a Python client
   makes without any gateway);
2. ``gateway``: ``POST /v1/embeddings`` with httpx (async) to the gateway, which makes the same
   Kafka call on its own reply topic.

Each call's latency runs from its scheduled send time to its answer, so a client falling behind
schedule is counted, not hidden. Every text is distinct (no cache hits). ``--rounds`` alternating
rounds; the table reports each contender's median over rounds of requests/s, p50 and p99, the
gateway/direct ratios, and the CPU each process spent per call (the load generator, the gateway,
the worker): on a shared machine the CPU a path costs says more than its latency does. Last,
``--sequential`` calls each way one at a time (no queueing anywhere): the hop's own latency. Writes ``gateway.json`` to ``--out``. Only ratios from one run mean
anything on a shared machine.

Usage: python bench/gateway_bench.py [--rate 40] [--seconds 10] [--rounds 2] [--sequential 100] [--model tiny|minilm] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):  # bench.* and the real-process helpers of the reliability tests
    if str(_path) not in sys.path:
        sys.path.append(str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil
from reliability.procs import ProcessPool, create_topics

DEFAULT_OUT = ROOT / "bench" / "out"
REPLY_TOPICS = r"poolworker\.replies\..+"
GATEWAY_MAIN = "from poolworker.gateway.server import serve; from poolworker.gateway.settings import GatewaySettings; serve(GatewaySettings(), 'warning')"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _texts(n: int, tag: str) -> list[str]:
    """Distinct short texts (the cache would otherwise answer repeats)."""
    return [f"{tag} request {i}: Kafka partitions spread load over the consumers of a group." for i in range(n)]


def _cpu_s(processes: dict) -> dict[str, float]:
    """User + system CPU seconds each process has spent so far."""
    return {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}


def _summary(latencies_s: list[float], elapsed_s: float, errors: int) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies_s)
    pick = (lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]) if ms else (lambda q: float("nan"))
    return {"requests": len(ms), "errors": errors, "rps": len(ms) / elapsed_s if elapsed_s else 0.0,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def run_direct(client, texts: list[str], rate: float) -> dict[str, float]:
    """Open-loop ``PoolClient.submit`` at ``rate``; latency from the scheduled send to the answer."""
    answered: list[float | None] = []  # None: an error
    lock = threading.Lock()
    all_done = threading.Event()
    start = time.perf_counter()

    def finished(future, scheduled: float) -> None:
        now = time.perf_counter()
        with lock:
            answered.append(now - scheduled if future.exception() is None and not future.result().get("error") else None)
            if len(answered) == len(texts):
                all_done.set()

    for i, text in enumerate(texts):
        scheduled = start + i / rate
        time.sleep(max(0.0, scheduled - time.perf_counter()))
        future = client.submit({"task": "embed", "model": "minilm", "input": text})
        future.add_done_callback(lambda f, s=scheduled: finished(f, s))
    all_done.wait(120)
    elapsed = time.perf_counter() - start
    with lock:
        done = [x for x in answered if x is not None]
    return _summary(done, elapsed, len(texts) - len(done))


async def _run_gateway(url: str, texts: list[str], rate: float) -> dict[str, float]:
    import httpx

    done: list[float] = []
    errors = 0
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one(text: str, scheduled: float) -> None:
            nonlocal errors
            response = await http.post("/v1/embeddings", json={"model": "minilm", "input": text})
            if response.status_code == 200:
                done.append(time.perf_counter() - scheduled)
            else:
                errors += 1

        tasks = []
        for i, text in enumerate(texts):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(one(text, scheduled)))
        await asyncio.gather(*tasks)
    return _summary(done, time.perf_counter() - start, errors)


def _wait_http(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway at {url} did not come up")


def _warm(client, url: str) -> None:
    """One call each way until both answer: the worker has joined its group and loaded MiniLM."""
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if not client.submit({"task": "embed", "model": "minilm", "input": "warm"}).result(10).get("error"):
                break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    for _ in range(5):
        httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": "warm"}, timeout=60).raise_for_status()


def _model_spec(model: str, work: Path) -> str:
    """``minilm=<path>`` for the worker's ``--model``: the bundled MiniLM or the tiny BERT."""
    from poolworker.corpus import find_minilm

    if model == "minilm":
        return f"minilm={find_minilm()}"
    from bench.models import tiny_bert

    return f"minilm={tiny_bert(work / 'tiny-bert', find_minilm())}"


def _sequential(client, url: str, n: int) -> dict[str, dict[str, float]]:
    """p50/p99 of ``n`` calls made one after another on each path (alternating)."""
    import httpx

    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(n):
            start = time.perf_counter()
            client.request({"task": "embed", "model": "minilm", "input": f"sequential direct {i}"}, 60)
            times["direct"].append(time.perf_counter() - start)
            start = time.perf_counter()
            http.post("/v1/embeddings", json={"model": "minilm", "input": f"sequential gateway {i}"}).raise_for_status()
            times["gateway"].append(time.perf_counter() - start)
    return {name: {k: v for k, v in _summary(ts, 1.0, 0).items() if k.endswith("_ms")} for name, ts in times.items()}


def run(rate: float, seconds: float, rounds: int, out_dir: Path, model: str = "tiny", sequential: int = 100) -> dict:
    from poolworker.broker import start_local_broker
    from poolworker.client import PoolClient

    n = max(1, int(rate * seconds))
    out_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    broker = start_local_broker()
    tag = uuid.uuid4().hex[:8]
    topics = {"requests_topic": f"b{tag}.requests", "results_topic": f"b{tag}.results", "dlq_topic": f"b{tag}.dlq", "group_id": f"g{tag}"}
    create_topics(broker.bootstrap_servers, topics, partitions=1)  # the direct client reads the results topic at once
    with closing(ProcessPool(out_dir)) as pool:
        worker = pool.worker(broker.bootstrap_servers, topics, partitions=1, allowed_reply_topics=REPLY_TOPICS, max_wait_ms=2,
                             models=[_model_spec(model, out_dir)])
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWORKER_")}
        env.update(POOLWORKER_GATEWAY_BOOTSTRAP_SERVERS=broker.bootstrap_servers, POOLWORKER_GATEWAY_PORT=str(port),
                   POOLWORKER_GATEWAY_REQUESTS_TOPIC=topics["requests_topic"], POOLWORKER_GATEWAY_PARTITIONS="1",
                   POOLWORKER_GATEWAY_MODELS='["minilm"]')
        gateway = pool.add(subprocess.Popen([sys.executable, "-c", GATEWAY_MAIN], cwd=ROOT, env=env))
        url = f"http://127.0.0.1:{port}"
        _wait_http(url)
        processes = {"client": psutil.Process(), "gateway": psutil.Process(gateway.pid), "worker": psutil.Process(worker.pid)}
        with PoolClient(broker.bootstrap_servers, requests_topic=topics["requests_topic"], results_topic=topics["results_topic"]) as client:
            _warm(client, url)
            runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
            for r in range(rounds):
                for name, call in (("direct", lambda t: run_direct(client, t, rate)),
                                   ("gateway", lambda t: asyncio.run(_run_gateway(url, t, rate)))):
                    before = _cpu_s(processes)
                    summary = call(_texts(n, f"{name}{r}"))
                    after = _cpu_s(processes)
                    summary.update({f"cpu_ms_per_call_{k}": (after[k] - before[k]) * 1000 / n for k in processes})
                    runs[name].append(summary)
                print(f"round {r + 1}: direct {runs['direct'][-1]}, gateway {runs['gateway'][-1]}", flush=True)
            one_at_a_time = _sequential(client, url, sequential)
    broker.stop()
    medians = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    ratios = {k: medians["gateway"][k] / medians["direct"][k] for k in ("rps", "p50_ms", "p99_ms") if medians["direct"][k]}
    result = {"model": model, "rate": rate, "seconds": seconds, "rounds": rounds, "runs": runs, "medians": medians,
              "sequential": one_at_a_time,
              "gateway_over_direct": ratios, "host": {"cpus": os.cpu_count(), "load_average": {"start": load_start, "end": os.getloadavg()}}}
    (out_dir / "gateway.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return result


def table(result: dict) -> str:
    m, ratio = result["medians"], result["gateway_over_direct"]
    rows = ["| path | requests/s | p50 ms | p99 ms | errors | CPU ms/call: client, gateway, worker |", "|---|---|---|---|---|---|"]
    for name in ("direct", "gateway"):
        x = m[name]
        cpu = ", ".join(f"{x[f'cpu_ms_per_call_{k}']:.1f}" for k in ("client", "gateway", "worker"))
        rows.append(f"| {name} | {x['rps']:.1f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['errors']:.0f} | {cpu} |")
    rows.append(f"| gateway / direct | {ratio.get('rps', float('nan')):.2f} | {ratio.get('p50_ms', float('nan')):.2f} | "
                f"{ratio.get('p99_ms', float('nan')):.2f} | | |")
    seq = result["sequential"]
    rows += ["", "| one call at a time | p50 ms | p99 ms |", "|---|---|---|"]
    rows += [f"| {name} | {seq[name]['p50_ms']:.1f} | {seq[name]['p99_ms']:.1f} |" for name in ("direct", "gateway")]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0, help="calls per second, both paths")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians are reported)")
    parser.add_argument("--sequential", type=int, default=100, help="calls made one at a time on each path, at the end")
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny", help="what the worker serves")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, not the speed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.seconds, args.rounds, args.sequential = 10.0, 1.0, 1, 5
    run(args.rate, args.seconds, args.rounds, args.out, args.model, args.sequential)


if __name__ == "__main__":
    main()
