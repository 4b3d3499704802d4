"""Tests delete the topics they made (issue 13: 509 of 569 topics on a shared broker were leftovers).

Every topic prefix a test run hands out starts with the run's own prefix (``t<6 hex>-``, the
``test_run_prefix`` fixture), so a run can find exactly its topics, even on a broker other runs share:

* the ``settings`` fixture deletes the topics of its test's prefix when the test ends;
* when the session's broker goes (``kafka_bootstrap`` teardown), :func:`sweep` deletes whatever is left
  with the run's prefix, plus the topics made during the run by tests that build their own prefix
  (``t<10 hex>.``) or by the demo (``ctloop.demo-<id>.``), then lists the run's prefix again: a topic
  still there fails the session (:class:`LeftoverTopics`).
"""
from __future__ import annotations

import re
import time
from typing import Iterable

from confluent_kafka.admin import AdminClient

# prefixes that tests (or the demo) make up themselves, not from the run's prefix
OWN_PREFIXES = (re.compile(r"^t[0-9a-f]{10}\."), re.compile(r"^ctloop\.demo-\d{8}-\d{6}-[0-9a-f]{4}\."))


class LeftoverTopics(AssertionError):
    """Topics of this test run that are still on the broker after the cleanup."""


def list_topics(admin: AdminClient, timeout_s: float = 10.0) -> set[str]:
    return set(admin.list_topics(timeout=timeout_s).topics)


def delete_topics(admin: AdminClient, names: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """Delete ``names``; returns those the broker refused or did not confirm within ``timeout_s``."""
    names = sorted(set(names))
    if not names:
        return []
    failed = []
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported to the caller by name
            if "UNKNOWN_TOPIC" not in str(exc):
                failed.append(name)
    return failed


def delete_prefix(bootstrap: str, prefix: str, timeout_s: float = 10.0) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (a test's own); returns the names deleted."""
    if not prefix:
        raise ValueError("prefix: must be non-empty (an empty prefix would delete every topic)")
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000)})
    names = [t for t in list_topics(admin, timeout_s) if t.startswith(prefix)]
    delete_topics(admin, names, timeout_s)
    return names


def sweep(bootstrap: str, run_prefix: str, before: set[str], timeout_s: float = 30.0) -> list[str]:
    """The end of a test session: delete the run's topics (``run_prefix``) and those made during the run
    under a test's own prefix (:data:`OWN_PREFIXES`, not in ``before``); returns the names deleted.
    Raises LeftoverTopics naming any topic with ``run_prefix`` still listed after ``timeout_s``."""
    if not run_prefix:
        raise ValueError("run_prefix: must be non-empty")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    now = list_topics(admin)
    doomed = {t for t in now if t.startswith(run_prefix)}
    doomed |= {t for t in now - before if any(p.match(t) for p in OWN_PREFIXES)}
    delete_topics(admin, doomed, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        left = sorted(t for t in list_topics(admin) if t.startswith(run_prefix))
        if not left:
            return sorted(doomed)
        if time.monotonic() > deadline:
            raise LeftoverTopics(f"{len(left)} topics of test run {run_prefix!r} are still on the broker: {left[:20]}")
        time.sleep(0.2)  # polling the broker's topic list inside a deadline loop
