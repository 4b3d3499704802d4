"""Moved to :mod:`infra.harness.processes` (bench/ uses it too and must not import tests/); re-exported here."""
from infra.harness.processes import ROOT, running_processors, settings_env, stop_process, wait_for  # noqa: F401
