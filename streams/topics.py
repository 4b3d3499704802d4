"""The one registry of ctloop topics: names (with the configured prefix), partitions, keys, event
types and configs. docs/ARCHITECTURE.md has the same table in words; keep them together."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from streams import catalog as ev

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the loop: its short ``key``, the event types allowed on it, the field used as record
    key, whether it has ``default_partitions`` partitions or one, its topic ``config`` (str to str, e.g.
    retention.ms) and a one-line ``description``."""
    key: str
    """Short name, e.g. "predictions"; the Kafka name is prefix + key."""
    event_types: tuple[str, ...]
    """Event types allowed on the topic; anything else is dead-lettered by consumers."""
    record_key: str
    """What the Kafka record key is (a field of the event)."""
    partitioned: bool = True
    """True: settings.default_partitions partitions; False: one partition (ordered decisions)."""
    config: dict = field(default_factory=dict)
    description: str = ""


SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("predictions", (ev.PREDICTION_LOGGED,), "prediction_id", True, {"retention.ms": str(30 * DAY_MS)},
              "Primary and canary predictions logged by apps."),
    TopicSpec("shadow-predictions", (ev.PREDICTION_LOGGED,), "prediction_id", True, {"retention.ms": str(30 * DAY_MS)},
              "Shadow predictions, same prediction ids as the primary ones (co-partitioned)."),
    TopicSpec("feedback", (ev.FEEDBACK_RECEIVED,), "prediction_id", True, {"retention.ms": str(30 * DAY_MS)},
              "Labels, corrections and reviews (co-partitioned with predictions)."),
    TopicSpec("deployments", (ev.DEPLOYMENT_CONFIGURED,), "deployment", False,
              {"cleanup.policy": "compact"}, "Deployment settings; the latest event per deployment is its configuration."),
    TopicSpec("labeled-examples", (ev.LABELED_EXAMPLE,), "prediction_id", True, {"retention.ms": "-1"},
              "Predictions joined with feedback: the training set. Kept forever: model lineage points into it."),
    TopicSpec("feedback-stats", (ev.FEEDBACK_LOOP_STATS,), "deployment", True, {"retention.ms": str(7 * DAY_MS)},
              "Feedback-loop counters per deployment."),
    TopicSpec("drift", (ev.DRIFT_MEASURED,), "deployment", True, {"retention.ms": str(90 * DAY_MS)},
              "Drift measurements per window."),
    TopicSpec("triggers", (ev.TRAINING_TRIGGERED,), "deployment", True, {"retention.ms": "-1"},
              "Training triggers; trainers consume them in one group."),
    TopicSpec("model-lifecycle", (ev.TRAINING_RUN_STARTED, ev.TRAINING_RUN_FINISHED, ev.TRAINING_RUN_FAILED,
                                  ev.MODEL_REGISTERED, ev.CANDIDATE_REJECTED), "deployment", False,
              {"retention.ms": "-1"}, "Training runs and registrations: the model registry is a fold over it."),
    TopicSpec("shadow-comparisons", (ev.SHADOW_COMPARISON,), "deployment", True, {"retention.ms": str(90 * DAY_MS)},
              "Live primary-versus-shadow comparisons."),
    TopicSpec("model-updates", (ev.MODEL_PROMOTED, ev.MODEL_ROLLED_BACK, ev.CANDIDATE_REJECTED,
                                ev.ONLINE_FALLBACK_SWITCHED), "deployment", False,
              {"retention.ms": "-1"},
              "Promotions, shadow rejections, rollbacks and online-fallback switches; serving apps hot-swap on them."),
    TopicSpec("dead-letters", (ev.DEAD_LETTER,), "source key", True, {"retention.ms": str(30 * DAY_MS)},
              "Records that could not be processed, with the reason and source topic/partition/offset."),
)


class Topics:
    """Topic names and specs under one prefix."""

    def __init__(self, prefix: str = "ctloop.", default_partitions: int = 4, replication_factor: int = 1):
        self.prefix = prefix
        self.default_partitions = default_partitions
        self.replication_factor = replication_factor
        self.specs = {s.key: s for s in SPECS}
        self._by_name = {self.name(s.key): s for s in SPECS}

    @classmethod
    def from_settings(cls, settings) -> "Topics":
        """Topics under ``settings.topic_prefix`` with its default partitions and replication factor."""
        return cls(settings.topic_prefix, settings.default_partitions, settings.replication_factor)

    def name(self, key: str) -> str:
        """The Kafka name of topic ``key`` (prefix + key). Raises KeyError naming the known keys."""
        if key not in self.specs:
            raise KeyError(f"unknown topic {key!r}; known: {', '.join(self.specs)}")
        return self.prefix + key

    # attribute access for the common ones: topics.predictions -> "ctloop.predictions"
    def __getattr__(self, item: str) -> str:
        key = item.replace("_", "-")
        specs = self.__dict__.get("specs", {})
        if key in specs:
            return self.prefix + key
        raise AttributeError(item)

    def spec_of(self, topic_name: str) -> TopicSpec | None:
        """The spec of a full Kafka topic name; None when it is not one of this prefix's topics."""
        return self._by_name.get(topic_name)

    def resolve(self, name_or_key: str) -> str:
        """Accept "predictions" or "ctloop.predictions"."""
        if name_or_key in self._by_name:
            return name_or_key
        if name_or_key in self.specs:
            return self.name(name_or_key)
        return name_or_key

    def partitions(self, key: str) -> int:
        """Partitions topic ``key`` is created with: ``default_partitions``, or 1 for an unpartitioned one.
        Raises KeyError for an unknown key."""
        return self.default_partitions if self.specs[key].partitioned else 1

    def all_names(self) -> list[str]:
        """Kafka names of every topic, in :data:`SPECS` order."""
        return [self.name(k) for k in self.specs]


def create_topics(admin, new_topics: list, timeout_s: float = 15.0) -> dict[str, str]:
    """Create ``new_topics`` (confluent_kafka.admin.NewTopic) with ``admin``; one that exists already
    (created meanwhile by another process) is fine. Returns {topic: "created" | "exists"}; raises
    RuntimeError naming the topic for any other failure."""
    from confluent_kafka import KafkaError

    result: dict[str, str] = {}
    if not new_topics:
        return result
    for name, future in admin.create_topics(list(new_topics), request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            result[name] = "created"
        except Exception as exc:  # noqa: BLE001 - KafkaException carrying a KafkaError
            err = exc.args[0] if exc.args else None
            if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
            result[name] = "exists"
    return result


def ensure_topics(admin, topics: Topics, keys: list[str] | None = None, timeout_s: float = 15.0) -> dict[str, str]:
    """Create missing topics; existing ones are left as they are. Idempotent.

    Returns {topic: "created" | "exists"}."""
    from confluent_kafka.admin import NewTopic

    wanted = keys or list(topics.specs)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    result: dict[str, str] = {}
    new = []
    for key in wanted:
        name = topics.name(key)
        if name in existing:
            result[name] = "exists"
            continue
        spec = topics.specs[key]
        new.append(NewTopic(name, topics.partitions(key), topics.replication_factor, config=dict(spec.config)))
    result.update(create_topics(admin, new, timeout_s))
    _wait_visible(admin, [topics.name(k) for k in wanted], timeout_s)
    return result


def _wait_visible(admin, names: list[str], timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(timeout=timeout_s)
        missing = [n for n in names if n not in md.topics or md.topics[n].error is not None]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout_s}s: {missing}")
        time.sleep(0.05)  # polling a condition with a deadline
