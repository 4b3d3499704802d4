"""The deployment configuration as a processor sees it: a fold of the compacted deployments topic
(latest revision per deployment), kept current by a :class:`processors.follower.LogFollower`."""
from __future__ import annotations

import threading

from streams import catalog as ev
from streams.deployments import default_settings


class DeploymentView:
    """The latest DeploymentConfigured value per deployment (highest revision wins), thread-safe."""
    def __init__(self):
        self._state: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._listeners = []

    def apply(self, event_type: str, value: dict, topic: str = "") -> None:
        """Fold one event (a :data:`processors.follower.Handler`); other event types are ignored."""
        if event_type != ev.DEPLOYMENT_CONFIGURED:
            return
        with self._lock:
            current = self._state.get(value["deployment"])
            if current is None or value["revision"] >= current["revision"]:
                self._state[value["deployment"]] = value

    def get(self, deployment: str) -> dict:
        """The settings dict of ``deployment``; the schema defaults when none was folded."""
        with self._lock:
            found = self._state.get(deployment)
        return found if found is not None else default_settings(deployment)

    def known(self) -> dict[str, dict]:
        """A copy of every folded deployment's settings: {deployment: settings dict}."""
        with self._lock:
            return dict(self._state)
