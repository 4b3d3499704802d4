"""CTLOOP_METRICS_PORT and child processes (issue 13, item 4): a child never inherits its parent's
metrics port, so a parent serving on CTLOOP_METRICS_PORT and its child both run."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from infra.child_env import child_environment, child_metrics_port
from infra.metrics import Metrics
from infra.settings import Settings
from tests.helpers.processes import ROOT, stop_process, wait_for


def test_child_port_rule():
    assert child_metrics_port(9104) == 9105
    assert child_metrics_port(9104, 2) == 9106
    assert child_metrics_port(0) == 0 and child_metrics_port(0, 3) == 0   # 0: each picks a free port
    with pytest.raises(ValueError, match="index"):
        child_metrics_port(9104, 0)
    with pytest.raises(ValueError, match="metrics_port"):
        child_metrics_port(-1)
    with pytest.raises(ValueError, match="65535"):
        child_metrics_port(65535)


def test_child_environment_replaces_the_parents_port():
    parent = {"CTLOOP_METRICS_PORT": "9104", "PATH": "/bin", "CTLOOP_TOPIC_PREFIX": "other."}
    settings = Settings(metrics_port=9104, topic_prefix="ctloop.")
    env = child_environment(settings, metrics_port=child_metrics_port(settings.metrics_port), base=parent)
    assert env["CTLOOP_METRICS_PORT"] == "9105"
    assert env["CTLOOP_TOPIC_PREFIX"] == "ctloop." and env["PATH"] == "/bin"
    assert Settings.from_env(env).metrics_port == 9105
    assert parent["CTLOOP_METRICS_PORT"] == "9104", "the parent's environment is not changed"
    with pytest.raises(TypeError):
        child_environment(settings)  # the port must be named
    with pytest.raises(ValueError, match="metrics_port"):
        child_environment(settings, metrics_port=70000)


def _free_pair() -> int:
    """A port P with P and P + 1 free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


@pytest.mark.slow
def test_worker_started_by_a_parent_serving_on_the_port_does_not_clash(settings, topics, monkeypatch, tmp_path):
    """The parent serves /metrics on CTLOOP_METRICS_PORT (set in its environment, as compose does); the
    processors worker it starts serves on port + 1 and becomes ready; both answer."""
    port = _free_pair()
    parent = Metrics("parent")
    assert parent.serve(port) == port
    monkeypatch.setenv("CTLOOP_METRICS_PORT", str(port))
    ready = tmp_path / "worker.ready"
    log_path = tmp_path / "worker.log"
    child = settings.replace(metrics_port=port, processor_stages="processors.feedback_join",
                             processor_ready_file=str(ready))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "processors.worker"], cwd=str(ROOT), stdout=log_file,
                                stderr=subprocess.STDOUT,
                                env=child_environment(child, metrics_port=child_metrics_port(port)))
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 90, "the worker's ready file")
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
        assert json.loads(ready.read_text())["metrics_port"] == port + 1
        body = urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/metrics", timeout=10).read().decode()
        assert "ctloop_" in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).status == 200
    finally:
        stop_process(proc)
        parent._server.shutdown()
        parent._server.server_close()
    assert "Address already in use" not in Path(log_path).read_text(errors="replace")


@pytest.mark.slow
def test_the_demos_processors_worker_gets_the_demos_port_plus_one(settings, topics, monkeypatch, tmp_path):
    """infra/demo/runner.py: the demo serves on CTLOOP_METRICS_PORT and its processors subprocess (which
    crashed with "Address already in use" when it inherited the port) serves on port + 1."""
    from infra.demo.runner import ProcessorsProcess

    port = _free_pair()
    parent = Metrics("demo")
    assert parent.serve(port) == port
    monkeypatch.setenv("CTLOOP_METRICS_PORT", str(port))
    worker = ProcessorsProcess(settings.replace(metrics_port=port, processor_stages="processors.feedback_join"), tmp_path)
    try:
        worker.start(timeout_s=90)
        assert worker.alive(), worker.tail()
        assert json.loads(worker.ready_file.read_text())["metrics_port"] == port + 1
    finally:
        worker.stop()
        parent._server.shutdown()
        parent._server.server_close()
    assert "Address already in use" not in worker.tail(100_000)
