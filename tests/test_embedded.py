"""The embedded Tansu broker: starts on a free port, answers Kafka clients, stops (process gone);
`ctloop broker` runs it in the foreground and stops cleanly on SIGTERM / Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.embedded import BrokerStartError, EmbeddedBroker
from infra.settings import Settings
from infra.stack import kafka_stack

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def round_trip(bootstrap: str, topic: str = "embedded-check") -> bytes:
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(10)
    errors = []
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, b"hello", b"k", on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(10) == 0 and errors == [None]
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "embedded-check"})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                return msg.value()
        raise TimeoutError("nothing consumed")
    finally:
        c.close()


def test_embedded_broker_starts_answers_and_stops():
    with EmbeddedBroker() as broker:
        pid = broker._proc.pid
        assert broker.running and re.fullmatch(r"127\.0\.0\.1:\d+", broker.bootstrap_servers)
        md = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=10)
        assert md.brokers
        assert round_trip(broker.bootstrap_servers) == b"hello"
    assert not broker.running
    assert wait_gone(pid), "Tansu still running after stop()"
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", broker.port))
    broker.stop()  # idempotent


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerStartError, match="Tansu"):
            EmbeddedBroker(port=port, start_timeout_s=5).start()


def test_kafka_stack_uses_configured_or_embedded():
    configured = Settings(bootstrap_servers="somewhere:9092")
    with kafka_stack(configured) as s:
        assert s is configured
    with kafka_stack(Settings()) as s:
        assert s.bootstrap_servers.startswith("127.0.0.1:")
        assert AdminClient({"bootstrap.servers": s.bootstrap_servers}).list_topics(timeout=10).brokers
        port = int(s.bootstrap_servers.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while True:  # stopped: nothing listens any more
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break
        assert time.monotonic() < deadline, "embedded broker still listening after the block"
        time.sleep(0.05)


def _start_cli_broker(tmp_path, *args):
    err = open(tmp_path / "broker.err", "w+")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CTLOOP_TOPIC_PREFIX": "cli."}
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "broker", *args], stdout=subprocess.PIPE,
                            stderr=err, env=env, cwd=ROOT, text=True)
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + 30, []
    while not any(line.startswith("export CTLOOP_BOOTSTRAP_SERVERS=") for line in seen):
        assert time.monotonic() < deadline and proc.poll() is None, f"no address printed: {seen}"
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            pass
    bootstrap = seen[-1].strip().split("=", 1)[1]
    proc.collected = lines  # the rest of stdout
    err.seek(0)
    tansu_pid = int(re.search(r"\(pid (\d+)\)", err.read()).group(1))
    return proc, bootstrap, tansu_pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ctloop_broker_runs_in_the_foreground_and_stops_on_signal(tmp_path, sig):
    proc, bootstrap, tansu_pid = _start_cli_broker(tmp_path, "--create-topics")
    try:
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        assert "cli.predictions" in topics and "cli.deployments" in topics
        assert round_trip(bootstrap) == b"hello"
        proc.send_signal(sig)
        proc.wait(20)
        deadline, out = time.monotonic() + 5, []
        while "stopped\n" not in out and time.monotonic() < deadline:
            try:
                out.append(proc.collected.get(timeout=0.2))
            except Exception:  # noqa: BLE001 - queue.Empty
                pass
        assert proc.returncode == 0 and "stopped\n" in out, out
        assert wait_gone(tansu_pid), "Tansu outlived `ctloop broker`"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_ctloop_broker_on_a_given_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, bootstrap, _pid = _start_cli_broker(tmp_path, "--port", str(port))
    try:
        assert bootstrap == f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)
