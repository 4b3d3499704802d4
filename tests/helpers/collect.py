"""Moved to :mod:`infra.harness.collect` (bench/ uses it too and must not import tests/); re-exported here."""
from infra.harness.collect import Collector  # noqa: F401
