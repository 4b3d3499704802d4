"""Liveness and supervision of processor workers.

* A broker restart (the embedded broker keeps data in memory: the new one is empty) makes a worker
  exit with code 75 at once (its topics are gone or recreated), instead of staying alive and stuck;
  /healthz and ctloop_processor_last_progress_seconds report it meanwhile. A worker started again on
  the new broker becomes ready (its own topics that the broker cannot serve are made again) and joins.
* ``CTLOOP_PROCESSOR_WORKERS=2``: ``python -m processors.worker`` supervises two workers in one
  group (partitions split between them); a worker that dies stops the set with a non-zero exit.
"""
from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import pytest

from infra.embedded import EmbeddedBroker, free_port
from infra.metrics import Metrics
from infra.settings import Settings
from processors.liveness import EXIT_BROKER_LOST, BrokerWatch
from processors.worker import child_settings
from tests.helpers.processes import running_processors, wait_for


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_watch_is_unhealthy_at_the_first_failed_probe_and_stalls_after_the_timeout():
    now = {"t": 0.0}
    answers = iter([None, "broker gone", "broker gone", "broker gone", None])
    stalls = []
    m = Metrics("test")
    w = BrokerWatch(lambda: next(answers), 10.0, stalls.append, metrics=m, clock=lambda: now["t"],
                    wall=lambda: 1000 + now["t"])
    assert w.probe() is None and w.health()[0]
    now["t"] = 4
    assert w.probe() == "broker gone" and w.health() == (False, {"problem": "broker gone", "last_progress_seconds": 1000,
                                                                  "stall_timeout_s": 10.0})
    now["t"] = 9
    w.probe()
    assert stalls == []                               # 9 s since the last good probe: not yet
    now["t"] = 10
    w.probe()
    assert stalls == ["broker gone"]                  # at the timeout, once
    now["t"] = 11
    assert w.probe() is None and w.health()[0]
    assert "ctloop_processor_last_progress_seconds 1011.0" in m.exposition()
    assert "ctloop_processor_healthy 1.0" in m.exposition()
    with pytest.raises(ValueError, match="processor_stall_timeout_s"):
        BrokerWatch(lambda: None, -1, stalls.append)


def test_lost_topics_stall_at_once_and_a_zero_timeout_never_stalls():
    from processors.liveness import Problem

    stalls = []
    lost = Problem.of("topics recreated", lost=True)
    w = BrokerWatch(lambda: lost, 60.0, stalls.append, clock=lambda: 0.0)
    w.probe()
    assert stalls == [lost] and not w.health()[0]             # conclusive: no waiting for the timeout
    never = BrokerWatch(lambda: lost, 0, stalls.append, clock=lambda: 1e9)
    never.probe()
    assert stalls == [lost] and not never.health()[0]         # 0: report, never exit


def test_a_table_recovery_that_receives_nothing_is_a_problem():
    from processors.liveness import recovery_problem

    class Recovery:
        in_recovery, remaining, _recovery_started_at = True, 5, 100.0
        _active_events_received_at: dict = {}

        def active_remaining_total(self):
            return self.remaining

    r = Recovery()
    assert recovery_problem(r, now=104.0) is None                       # quiet for 4 s: not yet
    problem = recovery_problem(r, now=106.0)
    assert problem and not problem.lost and "5 changelog records left" in problem
    r._active_events_received_at = {"tp": 105.0}
    assert recovery_problem(r, now=106.0) is None                       # records arrive
    r.remaining = 0
    assert recovery_problem(r, now=200.0) is None                       # nothing left to read
    r.remaining, r.in_recovery = 5, False
    assert recovery_problem(r, now=200.0) is None                       # not recovering
    assert recovery_problem(None) is None and recovery_problem(object()) is None


def test_broker_check_sees_missing_and_recreated_topics(settings, admin):
    from confluent_kafka.admin import NewTopic

    from processors.liveness import broker_check

    name = f"{settings.topic_prefix}liveness-probe"
    for f in admin.create_topics([NewTopic(name, 1, 1)]).values():
        f.result(10)
    check = broker_check(settings, [name])
    assert check() is None
    for f in admin.delete_topics([name]).values():
        f.result(10)
    problem = wait_for(check, 10, "the deleted topic seen as missing")
    assert problem.lost and "missing" in problem
    for f in admin.create_topics([NewTopic(name, 1, 1)]).values():
        f.result(10)
    problem = wait_for(lambda: (lambda p: p if p and "recreated" in p else None)(check()), 10, "the recreated topic")
    assert problem.lost


def test_healthz_answers_200_or_503_next_to_metrics():
    m = Metrics("test")
    m.gauge("ctloop_test_value", "a value").set(3)
    port = m.serve(0, addr="127.0.0.1")
    status, body = _get(port, "/healthz")
    assert status == 200 and json.loads(body)["healthy"] is True
    m.set_health(lambda: (False, {"problem": "no broker"}))
    status, body = _get(port, "/healthz")
    assert status == 503 and json.loads(body) == {"healthy": False, "problem": "no broker"}
    status, body = _get(port, "/metrics")
    assert status == 200 and "ctloop_test_value 3.0" in body


def test_child_settings_split_ports_and_ready_files():
    s = Settings(processor_workers=3, metrics_port=9100, processor_ready_file="/tmp/r")
    assert [(c.processor_workers, c.metrics_port, c.processor_ready_file) for c in
            (child_settings(s, i) for i in range(3))] == [(1, 9100, "/tmp/r.0"), (1, 9101, "/tmp/r.1"), (1, 9102, "/tmp/r.2")]
    assert child_settings(s.replace(metrics_port=0), 2).metrics_port == 0


def _stale_write_across_a_restart(bootstrap_servers: str, topic: str, restart) -> None:
    """Write one record (a tombstone) to ``topic`` with a producer that learned the broker's metadata
    before ``restart()`` restarts the broker empty, as a worker's producer still does in the second
    before its watch makes it exit: the new broker stores it under the name of a topic it does not
    have."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def write():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, metadata_max_age_ms=600_000)
        await producer.start()
        try:
            await producer.send_and_wait(topic, None, key=b'"stale"', partition=0)   # metadata of the old broker
            restart()
            await asyncio.wait_for(producer.send_and_wait(topic, None, key=b'"stale"', partition=0), 10)
        finally:
            await producer.stop()

    asyncio.run(write())


def test_records_written_before_their_topic_existed_are_found_and_the_topic_made_again():
    """Tansu keeps a batch produced to a topic it does not have; a CreateTopics afterwards resets the
    partition's high watermark but keeps the batch, so ListOffsets says 1 and a fetch serves nothing
    (faust's recovery waited for it forever). The worker's own topics are checked and made again."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from processors.topic_repair import repair_own_topics, unreadable_partitions

    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    brokers = [broker]
    name, spec = "repair.changelog", NewTopic("repair.changelog", num_partitions=2, replication_factor=1,
                                                config={"cleanup.policy": "compact"})
    try:
        first = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        for f in first.create_topics([spec]).values():
            f.result(10)

        def restart():
            brokers[-1].stop()
            brokers.append(EmbeddedBroker(port=port).start())

        _stale_write_across_a_restart(broker.bootstrap_servers, name, restart)
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        assert name not in admin.list_topics(timeout=10).topics        # no topic, yet a batch under its name
        for f in admin.create_topics([spec]).values():
            f.result(10)
        on_broker = Settings(bootstrap_servers=broker.bootstrap_servers)
        assert unreadable_partitions(on_broker, [name, "repair.absent"]) == {name: [0]}
        assert repair_own_topics(on_broker, [spec]) == [name]
        assert unreadable_partitions(on_broker, [name]) == {}
        consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "repair-check"})
        try:
            assert consumer.get_watermark_offsets(TopicPartition(name, 0), timeout=10) == (0, 0)
        finally:
            consumer.close()
        assert repair_own_topics(on_broker, [spec]) == []   # sound topics are left alone
    finally:
        brokers[-1].stop()


@pytest.mark.slow
def test_a_broker_restart_makes_the_worker_exit_at_once(settings, tmp_path):
    """The stall timeout is long (60 s): the exit comes from seeing the topics gone or recreated (new
    topic ids), within a few 1 s probes, not from the timeout. A worker started again on the new
    (empty) broker becomes ready and joins fresh pairs, although a record was written to its changelog
    on the new broker before the topic existed there (as the exiting worker's producer does)."""
    from confluent_kafka.admin import AdminClient

    from streams import catalog as ev
    from streams.sdk import CtloopClient
    from streams.topics import Topics, ensure_topics
    from tests.helpers.collect import Collector

    port = free_port()
    brokers = [EmbeddedBroker(port=port).start()]
    try:
        s = settings.replace(bootstrap_servers=brokers[0].bootstrap_servers, processor_stall_timeout_s=60.0)
        changelog = f"{s.topic_prefix}processors-feedback-join-changelog"

        def restart():
            brokers[-1].stop()
            brokers.append(EmbeddedBroker(port=port).start())   # same address, empty

        with running_processors(s, stages=["processors.feedback_join"], timeout_s=60) as proc:
            metrics_port = proc.ready["metrics_port"]
            assert _get(metrics_port, "/healthz")[0] == 200
            assert "ctloop_processor_last_progress_seconds" in _get(metrics_port, "/metrics")[1]
            _stale_write_across_a_restart(s.bootstrap_servers, changelog, restart)
            ensure_topics(AdminClient({"bootstrap.servers": s.bootstrap_servers}), Topics.from_settings(s))  # as apps do
            wait_for(lambda: proc.poll() is not None, 20, "the worker's exit")   # 60 s stall timeout: not used
            assert proc.returncode == EXIT_BROKER_LOST
            log = proc.log_path.read_text()
            assert "no usable broker" in log and ("topics recreated" in log or "topics missing" in log)
        # its supervisor starts it again: on the new broker it becomes ready and joins what is logged now
        with running_processors(s, stages=["processors.feedback_join"], timeout_s=40) as proc:
            with Collector(s, Topics.from_settings(s).labeled_examples) as col, CtloopClient(s) as client:
                pid = client.log_prediction("restart-d", {"x": 1.0}, label="a", model_version="1")
                client.log_feedback(pid, "restart-d", label="a")
                client.flush()
                col.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id=pid), 30, "the fresh pair joined")
            assert proc.poll() is None
    finally:
        brokers[-1].stop()


@pytest.mark.slow
def test_processor_workers_supervises_workers_in_one_group(settings, topics):
    s = settings.replace(processor_workers=2)
    with running_processors(s, stages=["processors.feedback_join"], timeout_s=90) as proc:
        workers = proc.ready["workers"]
        assert len({w["pid"] for w in workers}) == 2
        # one group: once it has settled, the workers own disjoint halves of the predictions partitions
        def split():
            owned = [{a for a in json.loads(_get(w["metrics_port"], "/healthz")[1])["assigned"]
                      if a.startswith(topics.predictions + "[")} for w in workers]
            return (all(owned) and not owned[0] & owned[1] and len(owned[0] | owned[1]) == 4) and owned
        owned = wait_for(split, 40, "the partitions split between the two workers")
        assert sorted(len(o) for o in owned) == [2, 2]
        import os

        os.kill(workers[0]["pid"], signal.SIGKILL)             # one worker dies
        wait_for(lambda: proc.poll() is not None, 40, "the supervisor's exit")
        assert proc.returncode == 128 + signal.SIGKILL
        wait_for(lambda: _gone(workers[1]["pid"]), 40, "the other worker stopped")


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:   # a zombie of the exited supervisor's child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True
    return False
