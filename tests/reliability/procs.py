"""Real processes for the reliability tests: ``poolworker run`` subprocesses, a moto S3 server,
and a results reader that keeps its place, so a test can wait for "some answered", break
something, then wait for "all answered"."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from streaming import FAST_GROUP, TANSU

from poolworker.broker import free_port, wait_for_port

from .peers import Reader

REPO = Path(__file__).resolve().parents[2]


def worker_env(bootstrap: str, topics: dict[str, str], **settings) -> dict[str, str]:
    """``POOLWORKER_*`` variables for a worker subprocess; lists and dicts as JSON."""
    values = {"bootstrap_servers": bootstrap, "redis_url": "none", "metrics_port": 0, "partitions": 3,
              "models": ["minilm=all-MiniLM-L6-v2"], **FAST_GROUP, **TANSU, **topics, **settings}
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWORKER_")}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key, value in values.items():
        env[f"POOLWORKER_{key.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return env


@dataclass
class WorkerProcess:
    """One ``poolworker run`` subprocess and its log."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "poolworker.cli", "run", "--log-level", os.environ.get("RELIABILITY_WORKER_LOG", "INFO")], cwd=REPO,
                                     env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, n: int = 4000) -> str:
        return f"--- {self.log_path.name} ---\n{self.log()[-n:]}"

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no leave-group."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (graceful drain), SIGKILL if it does not end in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def wait_for(self, pattern: str, timeout_s: float = 60, after: int = 0) -> re.Match:
        """The first match of ``pattern`` in the log (past character ``after``); fails if the process dies."""
        deadline = time.monotonic() + timeout_s
        rx = re.compile(pattern)
        while True:
            match = rx.search(self.log(), after)
            if match:
                return match
            if not self.alive():
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {pattern!r}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the worker log after {timeout_s}s\n{self.tail()}")
            time.sleep(0.1)

    def assigned(self) -> set[str]:
        """Partitions of the latest assignment logged (kafka-python logs each rebalance's set)."""
        found = re.findall(r"partitions assigned: \[(.*?)\]", self.log())
        if not found:
            return set()
        return {p.strip().strip("'") for p in found[-1].split(",") if p.strip()}

    def metrics_port(self, timeout_s: float = 60) -> int:
        return int(self.wait_for(r"metrics on :(\d+)", timeout_s).group(1))

    def scrape(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port()}{path}", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return metric_value(self.scrape(), name, **labels)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


@dataclass
class ProcessPool:
    """Every process a test starts; ``close()`` ends the ones still running (kill in finally)."""

    tmp_path: Path
    started: list = field(default_factory=list)

    def worker(self, bootstrap: str, topics: dict[str, str], name: str = "worker", **settings) -> WorkerProcess:
        w = WorkerProcess(worker_env(bootstrap, topics, **settings), self.tmp_path / f"{name}.log").start()
        self.started.append(w)
        return w

    def add(self, thing):
        self.started.append(thing)
        return thing

    def close(self) -> None:
        for thing in reversed(self.started):
            try:
                if isinstance(thing, WorkerProcess):
                    if thing.alive():
                        thing.kill()
                elif isinstance(thing, subprocess.Popen):
                    if thing.poll() is None:
                        thing.kill()
                        thing.wait(30)
                else:
                    thing.stop()
            except Exception:  # noqa: BLE001, S110 - keep cleaning the rest
                pass


# ------------------------------------------------------------------------------------------------
# Kafka helpers
# ------------------------------------------------------------------------------------------------
def create_topics(bootstrap: str, topics: dict[str, str], partitions: int) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        names = [topics["requests_topic"], topics["results_topic"], topics["dlq_topic"]]
        admin.create_topics([NewTopic(t, partitions, 1) for t in names])
    finally:
        admin.close()


def embed_requests(n: int, prefix: str = "r", start: int = 0) -> list[tuple[bytes, bytes]]:
    """Short embed requests (two words, ~5 tokens: this CPU runs ~3k tokens/s), keyed so they spread over partitions."""
    return [(f"k{i}".encode(), json.dumps({"request_id": f"{prefix}{i}", "task": "embed", "model": "minilm",
                                           "input": f"doc {i}"}).encode())
            for i in range(start, start + n)]


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]], headers=None,
            **options) -> list:
    """Send (key, value) pairs and wait for the acks; returns each record's metadata."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)
    try:
        futures = [producer.send(topic, key=k, value=v, headers=headers or []) for k, v in messages]
        producer.flush()
        return [f.get(30) for f in futures]
    finally:
        producer.close()


class TopicReader(Reader):
    """Reads a Kafka topic from the beginning (kafka-python, no group) and keeps everything read."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer
        from kafka.structs import TopicPartition

        super().__init__()
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                      auto_offset_reset="earliest", enable_incremental_fetch_sessions=False)
        deadline = time.monotonic() + 20
        parts = None
        while not parts:
            parts = self.consumer.partitions_for_topic(topic)
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} has no partitions")
            time.sleep(0.05)
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self.consumer.seek_to_beginning()

    def fetch(self, timeout_s: float) -> list:
        return [rec for batch in self.consumer.poll(timeout_ms=int(timeout_s * 1000)).values() for rec in batch]

    def close(self) -> None:
        self.consumer.close()


def ids_answered(records: list) -> set[str]:
    return {json.loads(r.value)["request_id"] for r in records}


def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.list_group_offsets(group).get(group, {})
        return {tp.partition: meta.offset for tp, meta in found.items() if meta.offset >= 0}
    finally:
        admin.close()


# ------------------------------------------------------------------------------------------------
# S3 (moto) for durable broker storage
# ------------------------------------------------------------------------------------------------
def start_moto(pool: ProcessPool) -> tuple[str, dict[str, str]]:
    """A moto S3 server with bucket ``tansu``; returns its URL and the broker's AWS env (KAFKA.md)."""
    import shutil

    import boto3

    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if binary is None:
        raise AssertionError("moto_server is not installed: pip install 'moto[server]' (a dev extra)")
    port = free_port()
    pool.add(subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL))
    wait_for_port("127.0.0.1", port, 30)
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="tansu")
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT": url, "AWS_ALLOW_HTTP": "true"}
    return url, env


def kafka_transport_over(producer):
    """The kafka-python transport with ``producer`` in place of a real KafkaProducer (for
    publisher tests without a broker); its offset tracker is ``transport.tracker``."""
    from poolworker.config import WorkerSettings
    from poolworker.consumers.kafka_python import KafkaPythonTransport

    transport = KafkaPythonTransport(WorkerSettings(), on_revoked=lambda _parts: None)
    transport.producer = producer
    return transport


class AckedAtOnce:
    """A kafka-python send future the broker acknowledged at once (for publisher unit tests)."""

    def add_callback(self, fn):
        fn(None)
        return self

    def add_errback(self, fn):
        return self
