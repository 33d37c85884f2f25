"""Worker settings: precedence, Kafka options passed through, secrets redacted, CLI parsing."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from poolworker.cli import app
from poolworker.config import WorkerSettings, parse_key_values, parse_model_specs


def test_flags_beat_env_beat_file(tmp_path, monkeypatch):
    config = tmp_path / "worker.toml"
    config.write_text('[poolworker]\ngroup_id = "from-file"\nmax_wait_ms = 11\nresults_topic = "file.results"\n')
    monkeypatch.setenv("POOLWORKER_MAX_WAIT_MS", "22")
    monkeypatch.setenv("POOLWORKER_GROUP_ID", "from-env")
    s = WorkerSettings.load(config, group_id="from-flag", max_batch_tokens=None)
    assert s.group_id == "from-flag"  # flag
    assert s.max_wait_ms == 22  # env over file
    assert s.results_topic == "file.results"  # file over default
    assert s.max_batch_tokens == WorkerSettings.model_fields["max_batch_tokens"].default  # None flag = unset


def test_json_config_file_and_list_env(tmp_path, monkeypatch):
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"partitions": 12}))
    monkeypatch.setenv("POOLWORKER_MODELS", '["a=/models/a", "all-MiniLM-L6-v2"]')
    s = WorkerSettings.load(config)
    assert s.partitions == 12
    assert parse_model_specs(s.models) == {"a": "/models/a", "all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}


def test_invalid_values_are_rejected(monkeypatch):
    with pytest.raises(ValidationError):
        WorkerSettings(max_batch_tokens=0)
    with pytest.raises(ValidationError):
        WorkerSettings(allowed_reply_topics="([unclosed")
    with pytest.raises(ValidationError):
        WorkerSettings(no_such_setting=1)
    monkeypatch.setenv("POOLWORKER_MAX_WAIT_MS", "soon")
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_redis_none_disables_the_cache():
    assert WorkerSettings(redis_url="none").redis_url is None
    assert WorkerSettings(redis_url="").redis_url is None


def test_kafka_options_reach_kafka_python_unchanged():
    options = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
               "sasl_plain_password": "s3cret", "ssl_cafile": "/etc/ca.pem", "session_timeout_ms": 45000}
    s = WorkerSettings(kafka_options=options, bootstrap_servers="kafka:9093")
    for built in (s.consumer_options(), s.producer_options(), s.admin_options()):
        for key in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile"):
            assert built[key] == options[key]
        assert built["bootstrap_servers"] == "kafka:9093"
    assert s.consumer_options()["session_timeout_ms"] == 45000  # kafka_options win over the defaults
    assert "session_timeout_ms" not in s.producer_options()  # only keys the client accepts
    import kafka

    for cls, built in ((kafka.KafkaConsumer, s.consumer_options()), (kafka.KafkaProducer, s.producer_options())):
        assert set(built) <= set(cls.DEFAULT_CONFIG), set(built) - set(cls.DEFAULT_CONFIG)


def test_producer_batches_up_to_256_kib_unless_kafka_options_say_otherwise():
    # kafka-python's 16 KiB default held ~20 results a batch and cost the worker 40-65% of its
    # rate (config.PRODUCER_BATCH_BYTES); a user's batch_size still wins, as every kafka option does
    assert WorkerSettings().producer_options()["batch_size"] == 256 * 1024
    assert WorkerSettings(kafka_options={"batch_size": 16384}).producer_options()["batch_size"] == 16384
    assert "batch_size" not in WorkerSettings().consumer_options()


def test_secrets_are_redacted():
    s = WorkerSettings(kafka_options={"sasl_plain_password": "s3cret", "ssl_password": "p4ss", "security_protocol": "SSL"},
                       redis_url="rediss://user:hunter2@cache:6380/0")
    shown = json.dumps(s.redacted())
    for secret in ("s3cret", "p4ss", "hunter2"):
        assert secret not in shown
    assert "SSL" in shown and "cache:6380" in shown


def test_model_specs_and_key_values():
    assert parse_model_specs(["x=/a", "y=/b"]) == {"x": "/a", "y": "/b"}
    with pytest.raises(ValueError, match="twice"):
        parse_model_specs(["x=/a", "x=/b"])
    with pytest.raises(ValueError):
        parse_model_specs(["=/a"])
    assert parse_key_values(["a=1", "b=true", "c=SASL_SSL", "d=x=y"], "--kafka-option") == {"a": 1, "b": True, "c": "SASL_SSL", "d": "x=y"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["novalue"], "--kafka-option")


def test_run_cli_rejects_bad_flags_cleanly():
    result = CliRunner().invoke(app, ["run", "--kafka-option", "novalue"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = CliRunner().invoke(app, ["run", "--model", "a=/x", "--model", "a=/y"])
    assert result.exit_code == 2 and "twice" in result.output


def test_each_kafka_client_gets_only_the_options_it_accepts():
    from poolworker.config import options_for

    options = {"security_protocol": "SSL", "fetch_max_wait_ms": 7, "linger_ms": 3, "request_timeout_ms": 5000}
    assert options_for("consumer", options) == {"security_protocol": "SSL", "fetch_max_wait_ms": 7, "request_timeout_ms": 5000}
    assert options_for("producer", options) == {"security_protocol": "SSL", "linger_ms": 3, "request_timeout_ms": 5000}
    assert WorkerSettings(fetch_max_wait_ms=7).consumer_options()["fetch_max_wait_ms"] == 7


def test_a_fetch_waits_as_long_as_kafkas_own_clients_let_it_unless_told(monkeypatch):
    """Apache Kafka answers a fetch as soon as a record arrives, so the default wait (the Kafka
    clients' own) only bounds an empty fetch; Tansu needs the short wait set explicitly."""
    import kafka

    from poolworker.broker import FETCH_MAX_WAIT_MS

    monkeypatch.delenv("POOLWORKER_FETCH_MAX_WAIT_MS", raising=False)
    assert WorkerSettings().fetch_max_wait_ms == kafka.KafkaConsumer.DEFAULT_CONFIG["fetch_max_wait_ms"]
    monkeypatch.setenv("POOLWORKER_FETCH_MAX_WAIT_MS", str(FETCH_MAX_WAIT_MS))
    assert WorkerSettings().consumer_options()["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS


def test_queues_reached_by_url_need_one_before_anything_loads():
    for transport in ("redis-streams", "nats"):
        with pytest.raises(ValidationError, match="needs transport_url"):
            WorkerSettings(transport=transport)
    assert WorkerSettings(transport="nats", transport_url="nats://127.0.0.1:4222").transport_url
    result = CliRunner().invoke(app, ["run", "--transport", "redis-streams"])
    assert result.exit_code == 2 and "transport_url" in result.output
    result = CliRunner().invoke(app, ["run", "--transport", "rabbitmq"])
    assert result.exit_code == 2


def test_transport_url_secrets_are_redacted():
    s = WorkerSettings(transport="redis-streams", transport_url="redis://:hunter2@cache:6379/0")
    assert "hunter2" not in json.dumps(s.redacted())
