"""The online-fallback fold: the one rule that says whether a deployment's online learner serves.

**Rule.** The online fallback of a deployment is active iff, among its ModelPromoted, ModelRolledBack
and *applied* OnlineFallbackSwitched records on model-updates, in log order, the latest is an
OnlineFallbackSwitched with ``active`` true. So a promotion (or rollback) retires the fallback: a
retrained champion promoted over it serves again.

An OnlineFallbackSwitched is applied only when its ``expected_decision`` (the event id of the latest
decision the decider had folded; null: none) is still the latest decision of the deployment
(compare-and-set on the log): a duplicate or stale switch, e.g. from two owners during a rebalance,
is refused and changes nothing. Promotions and rollbacks count as records, in log order, whether or
not the registry fold applied them (a refused promotion therefore retires the fallback too; the stage
engages it again on its next example if its evidence still holds). Each event is folded once (by
event id).

Serving (trainers/serving.py), the fallback stage (processors/online_fallback.py), ``ctloop status``,
the demo summary and the report all use :class:`FallbackFold`.
"""
from __future__ import annotations

from dataclasses import dataclass

from streams import catalog as ev

ONLINE_PREFIX = "online:"
"""Served version names of online learners: ``online:<learner>`` (e.g. online:arf)."""

DECISION_TYPES = (ev.MODEL_PROMOTED, ev.MODEL_ROLLED_BACK, ev.ONLINE_FALLBACK_SWITCHED)


def online_version(learner: str) -> str:
    """The served version name of ``learner`` ("arf" -> "online:arf")."""
    return ONLINE_PREFIX + learner


def is_online_version(version: str | None) -> bool:
    """Whether ``version`` names an online learner (``online:...``), not a registered model version."""
    return bool(version) and str(version).startswith(ONLINE_PREFIX)


@dataclass(frozen=True)
class FallbackState:
    """A deployment's fallback as folded: ``active``; the latest decision's ``event_id``, type and
    time (epoch ms); for a switch also its learner, model_version, reason, champion_version, evidence."""

    active: bool
    decision_id: str | None
    decision_type: str
    since_ms: int
    learner: str = ""
    model_version: str = ""
    reason: str = ""
    champion_version: str | None = None
    evidence: dict | None = None


class FallbackFold:
    """Fold model-updates events (in log order) into :class:`FallbackState` per deployment.

    ``apply(event_type, value)`` returns True when the event was applied (a switch whose precondition
    fails, a repeated event id and other event types return False). Not thread-safe: callers that read
    from another thread hold their own lock."""

    def __init__(self):
        self._states: dict[str, FallbackState] = {}
        self._seen: set[str] = set()
        self.refused: list[dict] = []
        """Refused switches (value dicts), in fold order."""
        self.engagements: dict[str, int] = {}
        self.retirements: dict[str, int] = {}
        """Per deployment: applied switches to active, and ends of an active fallback (a switch to
        inactive, or a promotion/rollback while active)."""

    def apply(self, event_type: str, value: dict) -> bool:
        """Fold one ModelPromoted, ModelRolledBack or OnlineFallbackSwitched value (once per event_id); True
        when applied. A switch whose ``expected_decision`` is not the deployment's latest decision is refused
        (kept in :attr:`refused`); a promotion or rollback ends an active fallback."""
        if event_type not in DECISION_TYPES:
            return False
        event_id = value.get("event_id")
        if event_id is not None:
            if event_id in self._seen:
                return False
            self._seen.add(event_id)
        dep = value["deployment"]
        current = self._states.get(dep)
        was_active = current is not None and current.active
        if event_type == ev.ONLINE_FALLBACK_SWITCHED:
            latest = current.decision_id if current is not None else None
            if value.get("expected_decision") != latest:
                self.refused.append(value)
                return False
            active = bool(value["active"])
            self._states[dep] = FallbackState(active, event_id, event_type, int(value.get("event_time") or 0),
                                              value.get("learner") or "", value.get("model_version") or "",
                                              value.get("reason") or "", value.get("champion_version"),
                                              dict(value.get("evidence") or {}))
            if active and not was_active:
                self.engagements[dep] = self.engagements.get(dep, 0) + 1
        else:
            self._states[dep] = FallbackState(False, event_id, event_type, int(value.get("event_time") or 0),
                                              reason=f"retired by {event_type}" if was_active else "")
            active = False
        if was_active and not active:
            self.retirements[dep] = self.retirements.get(dep, 0) + 1
        return True

    def state(self, deployment: str) -> FallbackState | None:
        """The deployment's latest decision as folded (None: no promotion, rollback or switch yet)."""
        return self._states.get(deployment)

    def active(self, deployment: str) -> bool:
        """Whether the deployment's online fallback serves now."""
        s = self._states.get(deployment)
        return s is not None and s.active

    def latest_decision(self, deployment: str) -> str | None:
        """Event id of the deployment's latest decision (what a new switch must name as expected_decision)."""
        s = self._states.get(deployment)
        return s.decision_id if s is not None else None


def fold_events(events) -> FallbackFold:
    """A :class:`FallbackFold` of ``events`` (streams.consumer.Event or (event_type, value) pairs), in
    the order given (log order of model-updates)."""
    fold = FallbackFold()
    for e in events:
        if isinstance(e, tuple):
            fold.apply(e[0], e[1])
        else:
            fold.apply(e.event_type, e.value)
    return fold
