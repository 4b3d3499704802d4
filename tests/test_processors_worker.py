"""The processor worker starts against the real broker, becomes ready, serves metrics and stops on SIGTERM."""
from __future__ import annotations

import signal
import urllib.request

from streams.sdk import CtloopClient
from tests.helpers.processes import running_processors, wait_for


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_worker_without_agents_becomes_ready_and_stops_on_sigterm(settings):
    with running_processors(settings, stages=["tests.helpers.stages"], timeout_s=60) as proc:
        assert proc.poll() is None
        port = proc.ready["metrics_port"]
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_worker_with_one_stage_is_assigned_and_processes(settings, topics):
    with running_processors(settings, stages=["tests.helpers.echo_stage"], timeout_s=60) as proc:
        assert any(t.startswith(topics.predictions) for t in proc.ready["assigned"]), proc.ready
        with CtloopClient(settings) as client:
            for i in range(20):
                client.log_prediction("smoke", {"x": float(i)}, label="a", model_version="1")
        port = proc.ready["metrics_port"]
        wait_for(lambda: "ctloop_test_echo_events_total 20.0" in _metrics(port), 30, "20 events counted")
