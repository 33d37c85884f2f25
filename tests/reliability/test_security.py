"""Security: TLS to the broker (as far as Tansu allows), secrets never printed, remote code off
by default, and cache keys that keep two models apart. Covered elsewhere and not repeated here:
SASL/SSL options reaching kafka-python unchanged (tests/test_config.py::
test_kafka_options_reach_kafka_python_unchanged), Redis AUTH and rediss:// URLs
(tests/test_cache.py), pickle weights refused by default (tests/test_engine_errors.py::
test_pickle_refused_by_default)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
from services import RedisServer

from poolworker.broker import free_port, tansu_binary, wait_for_port
from poolworker.config import WorkerSettings

from .procs import REPO, TopicReader, create_topics, embed_requests, produce, worker_env

REDIS_PASSWORD = "redis-pw-7f3a9c"
KAFKA_SECRET = "sasl-pw-5d1e2b"
SSL_SECRET = "ssl-key-pw-0c4b8e"


def _self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_listener(pool, tmp_path):
    """Tansu 0.6.0 lists ``--cert``/``--key`` but cannot serve TLS: the two flags are mutually
    exclusive in its CLI, and with ``--cert`` alone (certificate, or certificate + key in one PEM)
    the listener still speaks plaintext Kafka and never answers a ClientHello. This test proves
    exactly that, and runs a worker over TLS once a broker build can do it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = _self_signed(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(cert.read_text() + key.read_text())
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    base = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    both = subprocess.run(base + ["--cert", str(cert), "--key", str(key)], capture_output=True, text=True, timeout=30, check=False)
    proc = pool.add(subprocess.Popen(base + ["--cert", str(bundle)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_for_port("127.0.0.1", port, 10)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            handshake = tls.version()
    except (OSError, ssl.SSLError) as exc:
        handshake = None
        failure = f"{type(exc).__name__}: {exc}"
    if handshake is None:
        assert both.returncode != 0 and "cannot be used with" in both.stderr, both.stderr
        pytest.skip(f"Tansu cannot serve TLS: '--cert' with '--key' is refused ({both.stderr.strip().splitlines()[0]}); "
                    f"with '--cert' alone the TLS handshake fails ({failure}): the listener is plaintext")
    # A broker that does TLS: a worker must reach it with kafka_options only.
    bs = f"127.0.0.1:{port}"
    tls_options = {"security_protocol": "SSL", "ssl_cafile": str(cert)}
    topics = {"requests_topic": "tls.requests", "results_topic": "tls.results", "dlq_topic": "tls.dlq", "group_id": "tls"}
    worker = pool.worker(bs, topics, "tls-worker", kafka_options=tls_options)
    worker.wait_for(r"partitions assigned: \[.+\]", 90)
    produce(bs, topics["requests_topic"], embed_requests(5), **tls_options)
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(topics["results_topic"], bootstrap_servers=bs, auto_offset_reset="earliest",
                             consumer_timeout_ms=30_000, **tls_options)
    got = [r for _, r in zip(range(5), consumer)]
    consumer.close()
    assert len(got) == 5
    proc.kill()


def test_secrets_never_reach_logs_metrics_or_dev_output(broker, pool, topics, tmp_path):
    redis = pool.add(RedisServer(tmp_path, "--requirepass", REDIS_PASSWORD))
    redis.start()
    bs = broker.bootstrap_servers
    create_topics(bs, topics, partitions=1)
    worker = pool.worker(bs, topics, "worker", partitions=1, redis_url=redis.url(f":{REDIS_PASSWORD}@"),
                         kafka_options={"sasl_plain_password": KAFKA_SECRET, "ssl_password": SSL_SECRET})
    reader = TopicReader(bs, topics["results_topic"])
    try:
        produce(bs, topics["requests_topic"], embed_requests(5))
        assert reader.until(lambda r: len(r) >= 5, 90), worker.tail()
        produce(bs, topics["requests_topic"], embed_requests(5, prefix="again"))  # same texts: cache hits via AUTH
        assert reader.until(lambda r: len(r) >= 10, 90), worker.tail()
    finally:
        reader.close()
    assert worker.metric("poolworker_cache_hits_total") >= 5  # AUTH worked: the password did reach redis-py
    metrics = worker.scrape()
    worker.stop()

    wrong = pool.add(RedisServer(tmp_path, "--requirepass", "the-right-one"))
    wrong.start()  # a refused password must not be echoed in the warning either
    dev = subprocess.run([sys.executable, "-m", "poolworker.cli", "dev", "--documents", "8", "--exit-after-demo",
                          "--redis-url", wrong.url(f":{REDIS_PASSWORD}@")], cwd=REPO, capture_output=True, text=True,
                         timeout=180, env=worker_env(bs, {}), check=False)
    assert dev.returncode == 0, dev.stdout[-2000:] + dev.stderr[-2000:]
    outputs = {"worker log": worker.log(), "/metrics": metrics, "poolworker dev": dev.stdout + dev.stderr}
    assert "***" in outputs["worker log"]  # the settings are logged, redacted
    for where, text in outputs.items():
        for secret in (REDIS_PASSWORD, KAFKA_SECRET, SSL_SECRET):
            assert secret not in text, f"{secret!r} appears in the {where}"


def test_remote_code_and_pickle_are_off_by_default(minilm_path, tmp_path, Engine):
    settings = WorkerSettings()
    assert settings.trust_remote_code is False and settings.allow_pickle is False
    evil = tmp_path / "evil"
    shutil.copytree(minilm_path, evil)
    marker = tmp_path / "code-ran"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    config = json.loads((evil / "config.json").read_text())
    config.update(architectures=["EvilModel"], auto_map={"AutoModel": "modeling_evil.EvilModel"})
    (evil / "config.json").write_text(json.dumps(config))
    try:  # refused, or served by the transformers class of its model_type: never by the folder's own code
        engine = Engine(str(evil))
    except ValueError as exc:
        assert "trust_remote_code" in str(exc)
    else:
        assert type(engine.model.backbone).__module__.startswith("transformers."), type(engine.model.backbone)
    assert not marker.exists(), "the model folder's own code ran without trust_remote_code"


def test_cache_keys_keep_two_models_apart(minilm_path, tmp_path, Engine, broker, redis_url):
    """Two checkpoints with the same config and the same weight file sizes (a fine-tune, or a new
    version deployed at the same path) must not share cache entries: the same request to each
    gives each model's own answer."""
    import torch
    from safetensors.torch import load_file, save_file
    from streaming import RunningWorker, worker_settings

    from poolworker.cache import make_cache
    from poolworker.client import PoolClient
    from poolworker.metrics import Metrics
    from poolworker.worker import Worker

    tuned = tmp_path / "tuned"
    shutil.copytree(minilm_path, tuned)
    before = Engine(str(tuned))  # version 1 of the model at this path
    key_before = before.model.fingerprint  # computed at load time
    weights = next(tuned.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("layer.0.attention.self.query.weight"))
    tensors[name] = tensors[name] + 0.05 * torch.randn_like(tensors[name])
    save_file(tensors, str(weights), metadata={"format": "pt"})
    base, other = Engine(str(minilm_path)), Engine(str(tuned))
    assert (tuned / weights.name).stat().st_size == (minilm_path / weights.name).stat().st_size
    # version 2 replaced version 1 in place: same config, same file sizes; the fingerprint
    # (cache keys use it) hashes the weight bytes, so it tells them apart
    assert key_before != other.model.fingerprint

    metrics = Metrics()
    settings = worker_settings(broker)
    running = RunningWorker(Worker(settings, engines={"base": base, "tuned": other},
                                   cache=make_cache(redis_url, metrics=metrics), metrics=metrics)).start()
    text = f"one text, two models {time.time_ns()}"
    try:
        with PoolClient(broker.bootstrap_servers, requests_topic=settings.requests_topic,
                        results_topic=settings.results_topic) as client:
            first = client.embed(text, model="base")["data"][0]["embedding"]
            second = client.embed(text, model="tuned")["data"][0]["embedding"]
            again = client.embed(text, model="tuned")["data"][0]["embedding"]
    finally:
        running.stop()
    expected = other.embed(text)[0].outputs.embedding
    assert max(abs(a - b) for a, b in zip(second, expected)) < 1e-6  # the tuned model's own answer
    assert max(abs(a - b) for a, b in zip(first, second)) > 1e-3
    assert again == second
    assert metrics.registry.get_sample_value("poolworker_cache_hits_total") == 1  # only the repeat hit
