"""Run ctloop processes as real subprocesses (tests, benchmarks).

``running_processors(settings)`` starts ``python -m processors.worker`` with the settings passed as
``CTLOOP_*`` environment variables, waits (with a deadline) until the worker has written its ready file
(consumers assigned, tables recovered), yields the :class:`subprocess.Popen`, and stops it on exit
(SIGTERM, then SIGKILL after a deadline). ``proc.kill()`` inside the block simulates a crash; the
exit is then a no-op.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from infra.child_env import settings_environment
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings, base: dict | None = None) -> dict[str, str]:
    """Environment with every field of ``settings`` as CTLOOP_<FIELD>."""
    env = dict(os.environ if base is None else base)
    env.update(settings_environment(settings))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def wait_for(condition: Callable[[], object], timeout_s: float, what: str = "condition", interval_s: float = 0.05):
    """Poll ``condition`` until it returns something truthy; TimeoutError naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s}s")
        time.sleep(interval_s)  # short polling sleep inside a deadline loop


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@contextlib.contextmanager
def running_processors(settings: Settings, stages: list[str] | tuple[str, ...] | str | None = None,
                       timeout_s: float = 60, *, log_dir: str | Path | None = None,
                       stop_timeout_s: float = 20.0) -> Iterator[subprocess.Popen]:
    """Start a processor worker subprocess on ``settings`` and wait until it is ready.

    ``stages``: stage module names (``"processors.feedback_join"`` or ``"feedback_join"``), a comma
    string, or None for ``settings.processor_stages``. The worker's output goes to a log file under
    ``log_dir`` (default: settings.data_dir); its tail is in the error when it fails to start.
    ``proc.log_path`` and ``proc.ready`` (the ready file's JSON) are set on the yielded Popen."""
    if stages is not None:
        settings = settings.replace(processor_stages=stages if isinstance(stages, str) else ",".join(stages))
    run_dir = Path(log_dir or settings.data_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    ready_file = run_dir / f"processors-{tag}.ready"
    log_path = run_dir / f"processors-{tag}.log"
    settings = settings.replace(processor_ready_file=str(ready_file))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "processors.worker"], cwd=str(ROOT), env=settings_env(settings),
                                stdout=log_file, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    try:
        deadline = time.monotonic() + timeout_s
        while not ready_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"processor worker exited with {proc.returncode} before it was ready:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"processor worker not ready within {timeout_s}s:\n{_tail(log_path)}")
            time.sleep(0.05)  # polling the ready file inside a deadline loop
        proc.ready = json.loads(ready_file.read_text())
        yield proc
    finally:
        stop_process(proc, stop_timeout_s)
