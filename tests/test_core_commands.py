"""`ctloop tail`, `ctloop topics` and `ctloop settings` run as subprocesses against a real broker."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Producer

from infra.settings import settings_table
from streams.sdk import CtloopClient

ROOT = Path(__file__).resolve().parent.parent


def ctloop_env(settings, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTLOOP_")}
    env.update({"CTLOOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "CTLOOP_TOPIC_PREFIX": settings.topic_prefix,
                "CTLOOP_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def ctloop(settings, *args, timeout_s: float = 60, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ctloop_env(settings, **env), timeout=timeout_s)


def test_tail_prints_decoded_events_and_errors_as_json_lines(settings, topics):
    with CtloopClient(settings) as client:
        pid = client.log_prediction("fraud", {"amount": 12.5}, label="ok", model_version="3")
        client.log_feedback(pid, "fraud", label="fraud")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(topics.predictions, b"not avro", b"bad-key")
    assert producer.flush(10) == 0

    result = ctloop(settings, "tail", "predictions", "--from-beginning", "--max", "2", "--timeout", "15")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    good = next(line for line in lines if "event_type" in line)
    bad = next(line for line in lines if "error" in line)
    assert good["event_type"] == "PredictionLogged" and good["key"] == pid and good["topic"] == topics.predictions
    assert good["value"]["features"] == {"amount": 12.5} and good["value"]["label"] == "ok"
    assert bad["error_type"] == "undecodable" and "framing" in bad["error"] and bad["key"] == "bad-key"

    # a full topic name works too, and --timeout ends it when nothing more comes
    result = ctloop(settings, "tail", topics.feedback, "--from-beginning", "--timeout", "3")
    assert result.returncode == 0, result.stderr
    (line,) = [json.loads(x) for x in result.stdout.splitlines()]
    assert line["event_type"] == "FeedbackReceived" and line["value"]["prediction_id"] == pid


def test_tail_without_from_beginning_shows_only_new_events(settings, topics):
    with CtloopClient(settings) as client:
        client.log_prediction("d", {"x": -1.0}, label="old", model_version="1")
        proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "tail", "predictions", "--max", "1", "--timeout", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=ctloop_env(settings))
        try:
            deadline = time.monotonic() + 60
            i = 0
            while proc.poll() is None:  # keep logging until tail (once it has started) prints one
                assert time.monotonic() < deadline, "tail printed nothing"
                client.log_prediction("d", {"x": float(i)}, label="new", model_version="1")
                client.flush()
                i += 1
                time.sleep(0.2)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert line["value"]["label"] == "new"


def test_tail_errors_are_clear(settings, topics):
    result = ctloop(settings, "tail", "no-such-topic", "--timeout", "1")
    assert result.returncode != 0 and "does not exist" in result.stderr
    result = ctloop(settings, "tail", "predictions", "--timeout", "1", CTLOOP_BOOTSTRAP_SERVERS="")
    assert result.returncode == 2 and "CTLOOP_BOOTSTRAP_SERVERS" in result.stderr


def test_topics_creates_idempotently_and_prints_the_registry(settings):
    first = ctloop(settings, "topics", "--json")
    assert first.returncode == 0, first.stderr
    rows = {r["key"]: r for r in map(json.loads, first.stdout.splitlines())}
    assert {r["status"] for r in rows.values()} == {"created"}
    assert rows["predictions"]["partitions"] == 4 and rows["deployments"]["partitions"] == 1
    assert rows["deployments"]["config"] == {"cleanup.policy": "compact"}
    assert rows["feedback"]["topic"] == settings.topic_prefix + "feedback"
    second = ctloop(settings, "topics")
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and second.stdout.count("exists") == len(rows)
    assert "cleanup.policy=compact" in second.stdout


def test_settings_lists_every_variable(settings):
    result = ctloop(settings, "settings", CTLOOP_DEFAULT_PARTITIONS="7")
    assert result.returncode == 0, result.stderr
    for var, _default, _doc in settings_table():
        assert var in result.stdout
    assert "(set: 7)" in result.stdout
    md = ctloop(settings, "settings", "--markdown")
    assert md.stdout.startswith("| Variable | Default | Description |")
    assert len(md.stdout.strip().splitlines()) == len(settings_table()) + 2
    bad = ctloop(settings, "settings", CTLOOP_DEFAULT_PARTITIONS="many")
    assert bad.returncode != 0 and "CTLOOP_DEFAULT_PARTITIONS='many' is not a valid int" in bad.stderr
    assert "Traceback" not in bad.stderr
