"""The environment of a ctloop child process, and its metrics port.

Rule (issue 13): a child process never inherits its parent's ``CTLOOP_METRICS_PORT``. Every long-running
ctloop process serves /metrics on ``settings.metrics_port``; a child started with the parent's
environment would try to bind the same port and die with ``OSError: [Errno 98] Address already in
use`` (the demo's processors subprocess did, under docker-compose). So whoever starts a child names
its port: :func:`child_metrics_port` gives the ``index``-th child (1, 2, ...) ``parent + index``, and
keeps 0 (the OS picks a free port) when the parent's is 0. :func:`child_environment` writes every
setting as ``CTLOOP_<FIELD>`` with that port, whatever the parent's environment says.

Where children are started: ``infra/demo/runner.py`` (the demo's processors worker: demo port + 1);
``processors/worker.py`` (a supervisor serves no metrics; its workers get ``metrics_port + i``,
``child_settings``); ``bench/faults.py`` (explicit port 0).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from infra.settings import Settings


def child_metrics_port(parent_port: int, index: int = 1) -> int:
    """The metrics port of a parent's ``index``-th child (index >= 1): ``parent_port + index``, or 0
    (a free port) when the parent's is 0. Raises ValueError for index < 1, a negative parent port or a
    result above 65535."""
    if not isinstance(index, int) or index < 1:
        raise ValueError(f"index: a child's index starts at 1 (the parent has the port itself), got {index!r}")
    if not isinstance(parent_port, int) or parent_port < 0:
        raise ValueError(f"metrics_port: must be an integer >= 0, got {parent_port!r}")
    if parent_port == 0:
        return 0
    port = parent_port + index
    if port > 65535:
        raise ValueError(f"metrics_port: child {index} of port {parent_port} would be {port}, above 65535")
    return port


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every field of ``settings`` as ``CTLOOP_<FIELD>`` (booleans as true/false)."""
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[f"CTLOOP_{f.name.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


def child_environment(settings: Settings, *, metrics_port: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: ``base`` (default ``os.environ``) with every setting as
    ``CTLOOP_<FIELD>`` and ``CTLOOP_METRICS_PORT`` set to ``metrics_port``, which the caller must name
    (use :func:`child_metrics_port`): the parent's own port never reaches the child."""
    if not isinstance(metrics_port, int) or not 0 <= metrics_port <= 65535:
        raise ValueError(f"metrics_port: must be an integer in [0, 65535], got {metrics_port!r}")
    env = dict(os.environ if base is None else base)
    env.update(settings_environment(settings.replace(metrics_port=metrics_port)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
