"""The deployment configuration as a processor sees it: a fold of the compacted deployments topic
(latest revision per deployment), kept current by a :class:`processors.follower.LogFollower`."""
from __future__ import annotations

import threading

from streams import catalog as ev
from streams.deployments import default_settings


class DeploymentView:
    def __init__(self):
        self._state: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._listeners = []

    def apply(self, event_type: str, value: dict, topic: str = "") -> None:
        if event_type != ev.DEPLOYMENT_CONFIGURED:
            return
        with self._lock:
            current = self._state.get(value["deployment"])
            if current is None or value["revision"] >= current["revision"]:
                self._state[value["deployment"]] = value

    def get(self, deployment: str) -> dict:
        with self._lock:
            found = self._state.get(deployment)
        return found if found is not None else default_settings(deployment)

    def known(self) -> dict[str, dict]:
        with self._lock:
            return dict(self._state)
