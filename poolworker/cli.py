"""Command line: ``poolworker run | dev | gateway | submit | models | bench``."""

from __future__ import annotations

import itertools
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from tqdm.auto import tqdm

from .gateway.cli import gateway

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve pooling models from streams.")
app.command("gateway")(gateway)

_FALLBACK_DOCS = [
    "Kafka topics carry the requests; a consumer group spreads partitions over workers.",
    "Sentence embeddings map texts to vectors whose cosine similarity tracks meaning.",
    "Redis caches results so repeated documents are answered without a forward pass.",
    "Micro-batching groups requests under a token budget to keep the model busy.",
]


@app.command()
def models(
    model: Annotated[str, typer.Argument(help="Local folder, bundled name (all-MiniLM-L6-v2) or HF cache name.")],
    convert: Annotated[str | None, typer.Option(help="Override conversion: embed or classify.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own code to run.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled (.bin) weights.")] = False,
    hf_overrides: Annotated[str | None, typer.Option(help="vLLM-style hf_overrides as JSON (generative rerankers, bge-m3).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a model's architecture, supported tasks and resolved pooler config."""
    from poolworker import Engine

    try:
        info = Engine(model, convert=convert, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                      hf_overrides=hf_overrides).describe()
    except (ValueError, TypeError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        typer.echo(f"{key:<{width}}  {shown}")


def _demo_texts(limit: int) -> list[str]:
    from .corpus import find_corpus, load_texts

    try:
        return load_texts(limit, find_corpus())
    except FileNotFoundError:
        return (_FALLBACK_DOCS * (limit // len(_FALLBACK_DOCS) + 1))[:limit]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def run(
    transport: Annotated[str | None, typer.Option(help="kafka (default), kafka-librdkafka, redis-streams or nats.")] = None,
    transport_url: Annotated[str | None, typer.Option(help="redis://HOST:PORT/DB (redis-streams) or nats://HOST:PORT (nats).")] = None,
    redelivery_timeout_s: Annotated[float | None, typer.Option(help="redis-streams/nats: seconds a record may stay "
                                                               "unacknowledged before another worker gets it.")] = None,
    max_deliveries: Annotated[int | None, typer.Option(help="redis-streams/nats: a record handed out more often goes to the DLQ.")] = None,
    results_max_len: Annotated[int | None, typer.Option(help="redis-streams: trim the results stream to about this many entries.")] = None,
    bootstrap_servers: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (host:port,...).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="NAME=PATH, or a path/bundled name; repeatable.")] = None,
    requests_topic: Annotated[str | None, typer.Option(help="Topic to consume requests from.")] = None,
    results_topic: Annotated[str | None, typer.Option(help="Topic to publish results to.")] = None,
    dlq_topic: Annotated[str | None, typer.Option(help="Topic for unparseable messages.")] = None,
    group_id: Annotated[str | None, typer.Option(help="Consumer group (Kafka group, Redis Streams group, NATS durable consumer).")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions of topics created at start.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for the result cache, or 'none'.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics, /healthz, /readyz (0: any).")] = None,
    kafka_option: Annotated[list[str] | None, typer.Option("--kafka-option", help="KEY=VALUE for kafka-python; repeatable.")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Token budget of one micro-batch.")] = None,
    max_batch_requests: Annotated[int | None, typer.Option(help="Requests in one micro-batch at most.")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(help="How long a batch waits to fill.")] = None,
    max_inflight_requests: Annotated[int | None, typer.Option(help="Pause consuming above this many unfinished requests.")] = None,
    allowed_reply_topics: Annotated[str | None, typer.Option(help="Regex of topics reply_to may name.")] = None,
    processes: Annotated[int | None, typer.Option(help="Worker processes on this host, one consumer group (1: this process serves).")] = None,
    model_process: Annotated[bool | None, typer.Option("--model-process/--no-model-process", help="Forward passes in a process "
                                                       "of their own beside each worker process (default), or on a thread.")] = None,
    hf_overrides: Annotated[list[str] | None, typer.Option("--hf-overrides", help="MODEL=JSON: vLLM-style hf_overrides for "
                                                           "one --model (generative rerankers, bge-m3); repeatable.")] = None,
    io_processor: Annotated[list[str] | None, typer.Option("--io-processor", help="MODEL=PLUGIN: serve task 'plugin' for MODEL "
                                                           "through an IO processor plugin (docs/plugins.md); repeatable.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML or JSON settings file.")] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Consume pooling requests from a queue (Kafka by default) and publish results (flags > POOLWORKER_* env > --config)."""
    from .config import WorkerSettings, parse_key_values
    from .consumers.transport import TransportUnavailable

    _setup_logging(log_level)
    try:
        settings = WorkerSettings.load(
            config, transport=transport, transport_url=transport_url, redelivery_timeout_s=redelivery_timeout_s,
            max_deliveries=max_deliveries, results_max_len=results_max_len, bootstrap_servers=bootstrap_servers, models=model or None, requests_topic=requests_topic,
            results_topic=results_topic, dlq_topic=dlq_topic, group_id=group_id, partitions=partitions,
            redis_url=redis_url, metrics_port=metrics_port,
            kafka_options=parse_key_values(kafka_option, "--kafka-option") if kafka_option else None,
            max_batch_tokens=max_batch_tokens, max_batch_requests=max_batch_requests, max_wait_ms=max_wait_ms,
            max_inflight_requests=max_inflight_requests, allowed_reply_topics=allowed_reply_topics, processes=processes, model_process=model_process,
            io_processors=io_processor or None, hf_overrides=hf_overrides or None,
        )
        if settings.processes == 1:
            from .model_process import serve_with_early_model_process

            serve_with_early_model_process(settings)
            return
        from .processes import run_processes

        status = run_processes(settings, log_level)
    except (ValueError, TypeError, FileNotFoundError, TransportUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(status)


@app.command()
def dev(
    model: Annotated[str, typer.Option(help="Model to serve.")] = "all-MiniLM-L6-v2",
    documents: Annotated[int, typer.Option(help="Demo documents to stream through the worker.")] = 1000,
    port: Annotated[int, typer.Option(help="Port of the local broker (0: any free port).")] = 0,
    redis_url: Annotated[str, typer.Option(help="Redis for the cache; the in-process cache when it does not answer.")] = "redis://127.0.0.1:6379/0",
    exit_after_demo: Annotated[bool, typer.Option(help="Stop after the demo instead of serving on.")] = False,
    gateway_port: Annotated[int, typer.Option(help="Port of the HTTP gateway (taken: any free port).")] = 8000,
) -> None:
    """Embedded defaults: a local Tansu broker, Redis or an in-process cache, the bundled model;
    streams demo documents through the worker, prints results and throughput, then keeps serving."""
    from .broker import FETCH_MAX_WAIT_MS, start_local_broker
    from .client import PoolClient
    from .config import WorkerSettings
    from .model_process import start_model_process

    _setup_logging("WARNING")
    logging.getLogger("kafka").setLevel(logging.ERROR)  # its IO-loop timing warnings are noise here
    signal.signal(signal.SIGTERM, _interrupt)
    broker = start_local_broker(port or None)
    stop = threading.Event()
    thread: threading.Thread | None = None
    gateway = None
    try:
        settings = WorkerSettings.load(None, bootstrap_servers=broker.bootstrap_servers, models=[model], redis_url=redis_url,
                                       metrics_port=0, session_timeout_ms=4000, heartbeat_interval_ms=500,
                                       fetch_max_wait_ms=FETCH_MAX_WAIT_MS, allowed_reply_topics=REPLY_TOPICS)
        typer.echo(f"broker (Tansu) on {broker.bootstrap_servers}; loading {model} ...")
        early = start_model_process(settings)  # loads while this process imports torch
        from .worker import Worker

        worker = Worker(settings, dev=True, model_process=early)
        thread = threading.Thread(target=worker.run, args=(stop,), name="poolworker-dev", daemon=True)
        thread.start()
        _wait_until_assigned(worker, thread)
        gateway = _start_gateway(broker.bootstrap_servers, model, settings.requests_topic, gateway_port)
        texts = _demo_texts(documents)
        with PoolClient(broker.bootstrap_servers, model=model) as client:
            start = time.perf_counter()
            futures = [client.submit({"task": "embed", "input": t, "truncate_prompt_tokens": -1}, key=str(i)) for i, t in enumerate(texts)]
            client.flush()
            arrivals = _await_as_they_come(futures, timeout_s=300)
            results = [f.result() for f in futures]
            elapsed = time.perf_counter() - start
        tokens = sum(r.get("usage", {}).get("prompt_tokens", 0) for r in results)
        hits = worker.metrics.registry.get_sample_value("poolworker_cache_hits_total") or 0
        errors = sum(1 for r in results if r.get("error"))
        for text, r in list(zip(texts, results))[:3]:
            vec = r["data"][0]["embedding"]
            typer.echo(f"  {' '.join(text.split())[:56]!r:60} -> [{', '.join(f'{v:+.4f}' for v in vec[:4])}, ...] ({len(vec)} dims)")
        gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)
        typer.echo(f"{len(results)} documents ({tokens} tokens, {errors} errors) through Kafka in {elapsed:.1f}s "
                   f"(longest wait between two results: {gap:.2f}s): "
                   f"{len(results) / elapsed:.0f} docs/s, {tokens / elapsed:.0f} tokens/s; cache {worker.cache.description}: "
                   f"{hits:.0f} of {len(results)} documents were cache hits")
        if exit_after_demo:
            return
        typer.echo(
            f"\nserving. Send requests to topic {settings.requests_topic!r} on {broker.bootstrap_servers}, results on "
            f"{settings.results_topic!r}; metrics on http://127.0.0.1:{worker.metrics_port}/metrics\n"
            f"  python -c \"from poolworker.client import PoolClient; "
            f"print(PoolClient('{broker.bootstrap_servers}').embed('hello')['data'][0]['embedding'][:4])\"\n"
            f"  poolworker submit requests.jsonl --bootstrap-servers {broker.bootstrap_servers}\n"
            f"HTTP (vLLM's and TEI's API) on {gateway.url}:\n"
            f"  curl -s {gateway.url}/v1/embeddings -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{model}\", \"input\": \"hello\"}}'\n"
            f"  python -c \"from openai import OpenAI; print(len(OpenAI(base_url='{gateway.url}/v1', api_key='unused')"
            f".embeddings.create(model='{model}', input='hello').data[0].embedding))\"\n"
            f"Ctrl-C stops."
        )
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        typer.echo("stopping ...")
    finally:
        if gateway is not None:
            gateway.stop()
        stop.set()
        if thread is not None:
            thread.join(60)
        broker.stop()


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM (``docker stop``, systemd, ``timeout``) stops ``dev`` the way Ctrl-C does: without
    it Python exits at once and the local broker it started keeps running on its own."""
    raise KeyboardInterrupt


# The reply topics of gateways (``poolworker.replies.<instance>``): what dev's worker may answer on.
REPLY_TOPICS = r"poolworker\.replies\..+"


def _start_gateway(bootstrap_servers: str, model: str, requests_topic: str, port: int):
    """An HTTP gateway in front of the dev worker, on ``port`` or, if that is taken, any port."""
    from .gateway.server import serve_in_thread
    from .gateway.settings import GatewaySettings

    common = {"bootstrap_servers": bootstrap_servers, "models": [model], "requests_topic": requests_topic}
    try:
        return serve_in_thread(GatewaySettings(port=port, **common))
    except OSError:
        return serve_in_thread(GatewaySettings(port=0, **common))


def _await_as_they_come(futures: list, timeout_s: float) -> list[float]:
    """Wait for every future with a progress bar that moves as results arrive (not in submission
    order, which partitions do not keep); returns the arrival times, in arrival order."""
    from concurrent.futures import as_completed

    arrivals = []
    with tqdm(total=len(futures), desc="demo documents", unit="doc") as bar:
        for _ in as_completed(futures, timeout=timeout_s):
            arrivals.append(time.perf_counter())
            bar.update(1)
    return arrivals


def _wait_until_assigned(worker, thread: threading.Thread, timeout_s: float = 60.0) -> None:
    """The demo's clock starts once the worker owns partitions (group join takes seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and thread.is_alive():
        if worker.loop.ready():
            return
        time.sleep(0.1)
    if not thread.is_alive():
        raise RuntimeError("the worker stopped while starting; see the log above")


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL file: one request per line (the message contract).")],
    bootstrap_servers: Annotated[str, typer.Option(help="Kafka bootstrap servers.")] = "127.0.0.1:9092",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write results as JSONL (default: stdout).")] = None,
    requests_topic: Annotated[str, typer.Option(help="Request topic.")] = "poolworker.requests",
    results_topic: Annotated[str, typer.Option(help="Result topic.")] = "poolworker.results",
    timeout_s: Annotated[float, typer.Option(help="How long to wait for all results.")] = 600.0,
    transport: Annotated[str, typer.Option(help="kafka, kafka-librdkafka, redis-streams or nats.")] = "kafka",
    transport_url: Annotated[str | None, typer.Option(help="redis://HOST:PORT/DB or nats://HOST:PORT (non-Kafka transports).")] = None,
) -> None:
    """Produce requests from a file and write their results as JSONL, in file order."""
    from .client import PoolClient

    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    requests = []
    for n, line in enumerate(lines, 1):
        try:
            requests.append(json.loads(line))
        except json.JSONDecodeError as exc:
            typer.echo(f"error: {file}:{n}: not JSON ({exc})", err=True)
            raise typer.Exit(2) from exc
    deadline = time.monotonic() + timeout_s
    servers = bootstrap_servers if transport.startswith("kafka") else transport_url
    if not servers:
        typer.echo(f"error: --transport {transport} needs --transport-url", err=True)
        raise typer.Exit(2)
    with PoolClient(servers, requests_topic=requests_topic, results_topic=results_topic, transport=transport) as client:
        futures = [client.submit(r, key=str(r.get("request_id", n))) for n, r in enumerate(requests)]
        client.flush()
        out = output.open("w", encoding="utf-8") if output else sys.stdout
        failed = 0
        try:
            for future in tqdm(futures, desc="results", unit="req", disable=output is None):
                result = future.result(max(0.1, deadline - time.monotonic()))
                failed += bool(result.get("error"))
                out.write(json.dumps(result) + "\n")
        finally:
            if output:
                out.close()
    typer.echo(f"{len(futures)} results, {failed} errors", err=True)


def bench_module(name: str):
    """``bench/<name>.py`` of the source checkout this package runs from. The benchmarks are
    tools of the repository, not of the installed package, so an installed copy has none."""
    import importlib

    root = Path(__file__).resolve().parents[1]
    script = root / "bench" / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"poolworker bench needs a source checkout: {script} does not exist (the benchmarks live in the "
                                "repository's bench/ folder and are not installed; clone it and run `pip install -e .` there)")
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return importlib.import_module(f"bench.{name}")


@app.command()
def bench(
    pipeline: Annotated[bool, typer.Option("--pipeline", help="Worker vs plain relay vs Engine.embed, --processes 1 vs 2 (bench/pipeline.py) "
                                                              "instead of engine vs sentence-transformers.")] = False,
    model: Annotated[list[str] | None, typer.Option("--model", help="minilm and/or bert-base (random weights); repeatable.")] = None,
    short_docs: Annotated[int, typer.Option(help="Short corpus texts per run.")] = 2000,
    long_docs: Annotated[int, typer.Option(help="~300-token documents per run.")] = 300,
    repeats: Annotated[int, typer.Option(help="Alternating repeats per measurement (medians are reported).")] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    docs: Annotated[int | None, typer.Option(help="--pipeline: tiny-model requests (default 20000).")] = None,
    minilm_docs: Annotated[int | None, typer.Option(help="--pipeline: MiniLM requests, 0 to skip (default 2000).")] = None,
    processes: Annotated[str | None, typer.Option(help="--pipeline: worker process counts, comma-separated (default 1,2).")] = None,
    smoke: Annotated[bool, typer.Option(help="--pipeline: tiny sizes (checks the script, not the speed).")] = False,
    transports: Annotated[str | None, typer.Option(help="Instead: per transport (comma-separated, or 'all'), the worker "
                                                        "against a relay written with that queue's own client (bench/transports.py).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and PNG go.")] = Path("bench/out"),
) -> None:
    """Engine vs sentence-transformers on the same machine: docs/s, tokens/s, MFU against the
    measured GEMM peak, batch-1 latency, peak memory. With --pipeline: is the worker the
    bottleneck (worker vs a plain Kafka relay vs the engine alone). JSON + PNG in --out-dir.
    Needs a source checkout (the benchmarks live in bench/)."""
    try:
        module = bench_module("transports" if transports else "pipeline" if pipeline else "engine_race")
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if transports:
        from .consumers.transport import TRANSPORTS

        chosen = TRANSPORTS if transports == "all" else tuple(t for t in transports.split(",") if t)
        module.run_transports(chosen, docs or 20_000, out_dir)
        return
    if pipeline:
        sizes = module.sizes_from(smoke, docs=docs, minilm_docs=minilm_docs, processes=processes)
        module.run_pipeline(sizes, out_dir)
        return
    module.run_benchmark(models=tuple(model or ("minilm", "bert-base")), short_docs=short_docs, long_docs=long_docs,
                         repeats=repeats, device=device, out_dir=out_dir)


if __name__ == "__main__":
    app()
