"""Stage: drift per deployment and feature (processors/drift_detection.py) -> DriftMeasured.

One agent reads predictions (primary role; feature windows) and labeled examples (the error stream
for ADWIN). A follower folds deployments (drift_threshold) and model-updates: after a ModelPromoted
the deployment's reference and detectors reset, so the new champion is judged on traffic after its
promotion. The reference is the deployment's attached base dataset (``attach_dataset_version``,
numeric columns) when it has one, else the first window of traffic. Window state is in memory: after a restart the first window becomes the reference again.
Windows are per deployment in one place whatever the number of workers: ``forward`` reads predictions
and labeled examples (keyed by prediction id, so spread over every worker) and re-keys the primary
role's feature rows and outcomes by deployment, in arrival order, to the internal topic
``<prefix>drift-inputs``; ``measure`` reads that topic on the deployment's owner
(processors/ownership.py) and fills the windows.
"""
from __future__ import annotations

import asyncio
import json
import logging

from processors.dead_letters import dead_letter
from processors.deployment_view import DeploymentView
from processors.drift_detection import DeploymentDrift, load_reference
from processors.follower import LogFollower
from processors.ownership import forward_to_owners
from streams import catalog as ev
from streams.record_size import RecordTooLarge
from streams.serde import new_event

log = logging.getLogger(__name__)
COMPONENT = "processors.drift"
INPUTS_KEY = "drift-inputs"


def register(app, ctx) -> None:
    """The drift stage: predictions and labeled examples in, DriftMeasured on the drift topic.
    Declares its faust agents, and the timers, tasks and tables it needs, on ``app`` (``ctx``: the shared
    :class:`processors.app.ProcessorContext`)."""
    settings, topics, m = ctx.settings, ctx.topics, ctx.metrics
    view = DeploymentView()
    detectors: dict[str, DeploymentDrift] = {}
    promoted: list[str] = []   # deployments to reset (filled by the follower thread, drained by the agent)
    references: dict[str, tuple[str, list, object]] = {}   # deployment -> (dataset uri, features, rows)
    promoted_since_dataset: set[str] = set()  # a promoted champion is judged against its own first window

    def detector(dep: str) -> DeploymentDrift:
        d = detectors.get(dep)
        if d is None:
            d = detectors[dep] = DeploymentDrift(settings.drift_window_size, settings.drift_psi_threshold,
                                                 settings.drift_ks_pvalue)
            ref = references.get(dep)
            if ref is not None and dep not in promoted_since_dataset:
                d.set_reference(ref[1], ref[2], "training_data")
        return d

    def on_log_event(event_type, value, topic):
        if event_type == ev.DEPLOYMENT_CONFIGURED:
            view.apply(event_type, value)
            dep, uri = value["deployment"], value.get("dataset_version")
            known = references.get(dep)
            if uri and (known is None or known[0] != uri):
                try:
                    features, rows = load_reference(uri)
                except Exception as exc:  # noqa: BLE001 - a bad dataset must not stop drift on traffic
                    log.warning("drift: cannot use dataset %s of %s as the reference (%s); the first window is", uri, dep, exc)
                    return
                references[dep] = (uri, features, rows)
                promoted_since_dataset.discard(dep)
                promoted.append(dep)  # restart the detector on the new reference
            elif not uri and known is not None:
                references.pop(dep, None)
                promoted.append(dep)
        elif event_type in (ev.MODEL_PROMOTED, ev.MODEL_ROLLED_BACK):
            if value.get("reason") != "initial model":  # the initial model was trained on the dataset itself
                promoted_since_dataset.add(value["deployment"])
            promoted.append(value["deployment"])

    LogFollower(settings, [topics.deployments, topics.model_updates], on_log_event, serde=ctx.serde,
                name="drift-follower").start()

    share_g = m.gauge("ctloop_drift_share_ratio", "Fraction of features drifting on the last window.", ("deployment",))
    psi_g = m.gauge("ctloop_drift_psi", "PSI of a feature on the last window.", ("deployment", "feature"))
    windows = m.counter("ctloop_drift_windows_total", "Drift windows measured.", ("deployment", "detected"))
    versions: dict[str, str] = {}

    source = app.topic(topics.predictions, topics.labeled_examples, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    inputs_topic = f"{settings.topic_prefix}{INPUTS_KEY}"

    @app.agent(source, name=f"{COMPONENT}.forward")
    async def forward(stream):
        """predictions + labeled examples (any partition) -> drift-inputs keyed by deployment:
        ``{"items": [["p", features, event_time, model_version] | ["o", correct], ...]}``."""
        def item_of(etype, value):
            if value["role"] != "primary":
                return None
            return (["o", bool(value["correct"])] if etype == ev.LABELED_EXAMPLE else
                    ["p", value["features"], int(value["event_time"]), value["model_version"]])

        async for events in stream.take_events(4000, within=0.05):
            # a row over max_message_bytes alone (huge features) is logged and not measured
            await forward_to_owners(ctx, events, component=COMPONENT, topic=inputs_topic, item_of=item_of,
                                    what="a drift input row")

    inputs = app.topic(inputs_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(inputs, name=COMPONENT)
    async def measure(stream):
        async for events in stream.take_events(100, within=0.05):
            produced = False
            while promoted:
                detectors.pop(promoted.pop(), None)
            for event in events:
                try:
                    dep = event.message.key.decode()
                    items = json.loads(event.message.value)["items"]
                except Exception:  # noqa: BLE001 - an internal record we cannot use
                    log.exception("drift: inputs record rejected")
                    continue
                for item in items:
                    if item[0] == "o":
                        detector(dep).add_outcome(bool(item[1]))
                        continue
                    _, features, event_time, version = item
                    versions[dep] = version
                    try:
                        result = detector(dep).add(features, int(event_time))
                    except Exception as exc:  # noqa: BLE001 - a window that cannot be measured must not stop the stage
                        log.exception("drift: window of %s failed", dep)
                        dead_letter(ctx, topic=event.message.topic, partition=event.message.partition,
                                    offset=event.message.offset, key=event.message.key, value=event.message.value,
                                    reason=f"drift window failed: {type(exc).__name__}: {exc}",
                                    error_type="processing_error", component=COMPONENT)
                        detectors.pop(dep, None)
                        continue
                    if result is None:
                        continue
                    threshold = float(view.get(dep)["drift_threshold"])
                    detected = threshold > 0 and result["drift_share"] >= threshold
                    record = new_event(ev.DRIFT_MEASURED, deployment=dep, model_version=versions.get(dep, ""),
                                       drift_threshold=threshold, drift_detected=detected, **result)
                    try:
                        ctx.producer.produce(topics.drift, ev.DRIFT_MEASURED, record, key=dep)
                    except RecordTooLarge as exc:  # a window of too many features: no record is to blame
                        log.error("drift: the DriftMeasured of %s is not sent: %s", dep, exc)
                        continue
                    share_g.labels(dep).set(result["drift_share"])
                    for f in result["features"]:
                        psi_g.labels(dep, f["feature"]).set(f["psi"])
                    windows.labels(dep, str(detected).lower()).inc()
                    produced = True
            if produced:
                await asyncio.get_running_loop().run_in_executor(None, ctx.producer.flush)
