"""Moved to :mod:`trainers.serving` (serving loads torch models; the floor ``streams/`` never imports torch).

Kept only so the modules the lead is moving keep working: ``processors/promotion.py`` and
``infra/demo/runner.py`` import :class:`streams.follower.TopicFollower` from here, and
``infra/demo/runner.py`` imports ``Deployment``. ``TopicFollower`` is the floor's own; the serving names
are looked up lazily in :mod:`trainers.serving` (importing this module loads no torch). The edge
streams -> trainers is allowlisted in ``tests/test_layering.py``; delete this module once nothing imports it.
"""
from __future__ import annotations

from streams.follower import TopicFollower  # noqa: F401

_MOVED = ("Deployment", "NoChampionError", "Prediction", "canary_bucket")


def __getattr__(name: str):
    """``Deployment``, ``NoChampionError``, ``Prediction``, ``canary_bucket``: from :mod:`trainers.serving`."""
    if name in _MOVED:
        from trainers import serving  # allowlisted upward edge (tests/test_layering.py)

        return getattr(serving, name)
    raise AttributeError(f"module 'streams.serving' has no attribute {name!r} (serving moved to trainers.serving)")
