"""Trivial processor stages for worker smoke tests (module paths given to processor_stages)."""
from __future__ import annotations


def register(app, ctx) -> None:  # a stage with no agents
    return None
