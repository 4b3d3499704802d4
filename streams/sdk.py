"""The app SDK: what an app imports to log predictions and feedback.

>>> from streams.sdk import CtloopClient                            # doctest: +SKIP
>>> with CtloopClient(settings) as client:
...     pid = client.log_prediction("fraud", {"amount": 12.5}, label="ok", model_version="3")
...     client.log_feedback(pid, "fraud", label="fraud")

Calls do not block: events are encoded and handed to a batching producer. When its buffer is full, a
call waits for deliveries (back-pressure) instead of growing memory. Delivery failures are counted and
raised at ``flush()``/``close()``. Invalid input is refused at the call with an error naming the field.
"""
from __future__ import annotations

import struct
import threading
import time

from streams import catalog as ev
from streams.ids import UuidSource
from streams.producer import EventProducer
from streams.record_packer import PredictionPacker
from streams.serde import EncodeError, Serde
from streams.topics import Topics
from streams.validation import (_NUMBERS, FLOAT32_MAX, FEEDBACK_KINDS, FEEDBACK_TYPES, ROLES, VERDICTS, InvalidEvent,
                                check_event_time, check_features, check_features_strict, check_number,
                                check_optional_str, check_probabilities, check_probabilities_strict, check_str,
                                numbers_in_range)

try:  # the C hot path, built by setup.py where a compiler is available (streams/_speedups.c)
    from streams._speedups import encode_prediction as _encode_prediction_c
except ImportError:  # pragma: no cover - depends on the build
    _encode_prediction_c = None


_PREDICTION_FIELDS = ("event_id", "event_time", "prediction_id", "deployment", "model_name", "model_version", "role",
                      "features", "label", "score", "probabilities", "latency_ms")


class CtloopClient:
    """The app's client: ``log_prediction`` and ``log_feedback`` (non-blocking, input checked at the call
    with an error naming the field), ``flush``/``close`` (raise on lost deliveries); a context manager."""
    def __init__(self, settings, *, producer: EventProducer | None = None, serde: Serde | None = None):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.serde = serde or (producer.serde if producer else Serde.from_settings(settings))
        self._owns_producer = producer is None
        self.producer = producer or EventProducer(settings, self.serde)
        self._uuid = UuidSource()
        self._lock = threading.Lock()
        self._predictions_topic = self.topics.predictions
        self._shadow_topic = self.topics.shadow_predictions
        self._feedback_topic = self.topics.feedback
        self._encode_prediction = self.serde._encoder(ev.PREDICTION_LOGGED)[1]
        # positional variant: field values in schema order, no dict per event (only while the schema's
        # fields are the ones log_prediction passes; after an evolution the dict path fills defaults)
        self._encode_prediction_fields = getattr(self._encode_prediction, "fields", None)
        self._prediction_defaults = self.serde.catalog[ev.PREDICTION_LOGGED].defaults
        if self.serde.catalog[ev.PREDICTION_LOGGED].field_names != _PREDICTION_FIELDS:
            self._encode_prediction_fields = None
        self._encode_feedback = self.serde._encoder(ev.FEEDBACK_RECEIVED)[1]
        self._prediction_header = self.serde.single_object_header(ev.PREDICTION_LOGGED) if self.serde.registry is None else None
        self._packer = PredictionPacker(self._prediction_header) if self._prediction_header is not None else None
        # The C encoder writes the fields in _PREDICTION_FIELDS order after the single-object header:
        # only for that schema and framing, and only when settings allow it.
        self._encode_fast = (_encode_prediction_c if settings.sdk_speedups and self._packer is not None
                             and self._encode_prediction_fields is not None else None)
        self._feedback_header = self.serde.single_object_header(ev.FEEDBACK_RECEIVED) if self.serde.registry is None else None
        self._settings_client = None
        self._max_past_s = float(settings.event_time_max_past_s)
        self._max_future_s = float(settings.event_time_max_future_s)

    def _check_event_time(self, event_time) -> int:
        """A caller's event_time within the settings' bound around this process's clock."""
        return check_event_time(event_time, time.time_ns() // 1_000_000, self._max_past_s, self._max_future_s)

    # -- predictions ----------------------------------------------------------------------------
    def log_prediction(self, deployment: str, features: dict, *, label: str | None = None, score: float | None = None,
                       probabilities: dict | None = None, model_version: str, model_name: str = "",
                       role: str = "primary", prediction_id: str | None = None, latency_ms: float = 0.0,
                       event_time: int | None = None) -> str:
        """Log one prediction; returns its prediction id (give it to log_feedback).

        features: name -> number finite in float32 (|x| <= 3.4e38); strings must be UTF-8 encodable;
        event_time: ms since the epoch, default now; a given one must lie within
        ``settings.event_time_max_past_s`` / ``event_time_max_future_s`` of this process's clock.
        Raises InvalidEvent naming the offending field (``features['x']``, ``label``, ``event_time``...)."""
        if event_time is not None:
            event_time = self._check_event_time(event_time)
        encode = self._encode_fast
        if encode is not None:  # checks and encodes in one C call; None means "not the plain case"
            if prediction_id is None:
                prediction_id = self._uuid()
            value = encode(self._prediction_header, self._uuid(),
                           time.time_ns() // 1_000_000 if event_time is None else event_time, prediction_id,
                           deployment, model_name, model_version, role, features, label, score, probabilities,
                           latency_ms)
            if value is not None:
                self.producer.produce_raw(self._shadow_topic if role == "shadow" else self._predictions_topic,
                                          value, prediction_id)
                return prediction_id
        return self._log_prediction_checked(deployment, features, label, score, probabilities, model_version,
                                            model_name, role, prediction_id, latency_ms, event_time)

    def _log_prediction_checked(self, deployment, features, label, score, probabilities, model_version, model_name,
                                role, prediction_id, latency_ms, event_time) -> str:
        """The Python path: every check names the field it refuses; encodes any valid record."""
        # Checks are ordered for the common case (plain str/float arguments): each falls back to a
        # precise check that names the field only when the cheap test fails.
        if deployment.__class__ is not str or not deployment:
            check_str("deployment", deployment)
        if model_version.__class__ is not str or not model_version:
            check_str("model_version", model_version)
        if model_name.__class__ is not str:
            check_str("model_name", model_name, allow_empty=True)
        if role not in ROLES:
            raise InvalidEvent("role", f"must be one of {ROLES}, got {role!r}")
        # features: numbers finite in float32 here; names are checked by the encoders (a non-string or
        # non-UTF-8 name fails encoding, and _refuse below then names it)
        fast = features.__class__ is dict and features and _NUMBERS.issuperset(map(type, features.values())) \
            and numbers_in_range(features.values())
        if not fast:
            check_features(features)
        if label is None:
            if score is None:
                raise InvalidEvent("label", "a prediction needs a label or a score")
        elif label.__class__ is not str:
            check_str("label", label)
        if score is not None:
            if score.__class__ is not float or not -FLOAT32_MAX <= score <= FLOAT32_MAX:  # False for nan
                score = check_number("score", score)
        if probabilities:
            vals = probabilities.values()
            try:  # fast path; NaN makes the sum differ from itself, and anything odd gets the precise check
                fast = probabilities.__class__ is dict and _NUMBERS.issuperset(map(type, vals)) \
                    and 0.0 <= min(vals) and max(vals) <= 1.0 and sum(vals) == sum(vals)
            except TypeError:
                fast = False
            if not fast:
                check_probabilities(probabilities)
        else:
            probabilities = {}
        if latency_ms.__class__ is not float or not -FLOAT32_MAX <= latency_ms <= FLOAT32_MAX:
            latency_ms = check_number("latency_ms", latency_ms)
        if prediction_id is None:
            prediction_id = self._uuid()  # UuidSource.pop is atomic under the GIL: no lock needed
        elif prediction_id.__class__ is not str or not prediction_id:
            check_str("prediction_id", prediction_id)
        if event_time is None:
            event_time = time.time_ns() // 1_000_000
        elif event_time.__class__ is not int:
            event_time = self._check_event_time(event_time)  # already checked in log_prediction; type only
        topic = self._shadow_topic if role == "shadow" else self._predictions_topic
        value = None
        if self._packer is not None:  # one struct.pack per record shape (streams/record_packer.py)
            value = self._packer.pack(self._uuid(), event_time, prediction_id, deployment, model_name, model_version,
                                      role, features, label, score, probabilities, latency_ms)
        if value is None:
            value = self._encode_prediction_generic(self._uuid(), event_time, prediction_id, deployment, model_name,
                                                    model_version, role, features, label, score, probabilities,
                                                    latency_ms, topic)
        self.producer.produce_raw(topic, value, prediction_id)
        return prediction_id

    def _encode_prediction_generic(self, event_id, event_time, prediction_id, deployment, model_name, model_version,
                                   role, features, label, score, probabilities, latency_ms, topic) -> bytes:
        """The field-by-field encoders: shapes the packer does not take, and Confluent framing."""
        if self._prediction_header is not None and self._encode_prediction_fields is not None:
            try:
                value = self._prediction_header + self._encode_prediction_fields(
                    event_id, event_time, prediction_id, deployment, model_name, model_version, role, features,
                    label, score, probabilities, latency_ms)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error) as exc:
                self._refuse(deployment, model_name, model_version, features, label, probabilities, prediction_id,
                             event_time, exc)
        else:
            record = {
                **self._prediction_defaults,
                "event_id": event_id, "event_time": event_time, "prediction_id": prediction_id,
                "deployment": deployment, "model_name": model_name, "model_version": model_version, "role": role,
                "features": features, "label": label, "score": score, "probabilities": probabilities,
                "latency_ms": latency_ms,
            }
            try:
                value = self.serde.encode(ev.PREDICTION_LOGGED, record, topic)
            except EncodeError as exc:
                self._refuse(deployment, model_name, model_version, features, label, probabilities, prediction_id,
                             event_time, exc)
        return value

    @staticmethod
    def _refuse(deployment, model_name, model_version, features, label, probabilities, prediction_id, event_time,
                exc: Exception):
        """An encoder refused a record the cheap checks passed: run every precise check so that the error
        names the field (a non-string or non-UTF-8 feature name, a lone surrogate in a label...)."""
        check_str("deployment", deployment)
        check_str("model_name", model_name, allow_empty=True)
        check_str("model_version", model_version)
        check_str("prediction_id", prediction_id)
        check_features_strict(features)
        check_optional_str("label", label)
        check_probabilities_strict(probabilities)
        if event_time.__class__ is not int:
            raise InvalidEvent("event_time", f"expected milliseconds since the epoch (an integer), got {event_time!r}")
        raise InvalidEvent("record", f"cannot encode prediction: {exc}") from None

    # -- feedback -------------------------------------------------------------------------------
    def log_feedback(self, prediction_id: str, deployment: str, *, label: str | None = None,
                     feedback_type: str = "label", kind: str = "explicit", verdict: str | None = None,
                     reviewer: str | None = None, event_time: int | None = None) -> str:
        """Log feedback about a prediction; returns the feedback event id. Strings must be UTF-8 encodable;
        a given event_time must lie within the settings' bound around this process's clock (see
        log_prediction). Raises InvalidEvent naming the offending field.

        feedback_type: label (the true label), correction (replaces an earlier label) or review
        (a verdict, correct/incorrect, on the predicted label, optionally with the right label)."""
        check_str("prediction_id", prediction_id)
        check_str("deployment", deployment)
        if feedback_type not in FEEDBACK_TYPES:
            raise InvalidEvent("feedback_type", f"must be one of {FEEDBACK_TYPES}, got {feedback_type!r}")
        if kind not in FEEDBACK_KINDS:
            raise InvalidEvent("kind", f"must be one of {FEEDBACK_KINDS}, got {kind!r}")
        if feedback_type == "review":
            if verdict not in VERDICTS:
                raise InvalidEvent("verdict", f"review feedback needs a verdict in {VERDICTS}, got {verdict!r}")
            if label is not None:
                check_str("label", label)
        else:
            check_str("label", label)
            if verdict is not None:
                raise InvalidEvent("verdict", "only review feedback has a verdict")
        if reviewer is not None:
            check_str("reviewer", reviewer)
        if event_time is None:
            event_time = time.time_ns() // 1_000_000
        else:
            event_time = self._check_event_time(event_time)
        with self._lock:
            event_id = self._uuid()
        record = {
            "event_id": event_id, "event_time": event_time,
            "prediction_id": prediction_id, "deployment": deployment, "feedback_type": feedback_type, "kind": kind,
            "label": label, "verdict": verdict, "reviewer": reviewer,
        }
        if self._feedback_header is not None:
            value = self._feedback_header + self._encode_feedback(record)
        else:
            value = self.serde.encode(ev.FEEDBACK_RECEIVED, record, self._feedback_topic)
        self.producer.produce_raw(self._feedback_topic, value, prediction_id)
        return event_id

    # -- deployment settings (events on the compacted deployments topic) -------------------------
    @property
    def deployments(self):
        """A :class:`streams.deployments.DeploymentSettingsClient` sharing this client's producer."""
        if self._settings_client is None:
            from streams.deployments import DeploymentSettingsClient

            self._settings_client = DeploymentSettingsClient(self.settings, producer=self.producer)
        return self._settings_client

    def __getattr__(self, name: str):
        # setup_feedback_loop, attach_dataset_version, toggle_feedback_loop, setup_continuous_training,
        # toggle_continuous_training, set_shadow_model, setup_continuous_deployment,
        # toggle_continuous_deployment: delegated to the deployment settings client.
        from streams.deployments import SETTINGS_OPERATIONS

        if name in SETTINGS_OPERATIONS:
            return getattr(self.deployments, name)
        raise AttributeError(name)

    # -- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait up to ``timeout_s`` for every logged event. Raises streams.producer.DeliveryError: ``lost``
        names the events given up on (re-send them: ``client.producer.resend(err.lost)``), ``in_flight``
        counts those still being retried (not lost: flush again, do not re-send)."""
        self.producer.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and close the client's own producer (a producer passed in is only flushed). Raises
        streams.producer.DeliveryError like flush; its ``lost`` events cannot go through this client any
        more: re-send them through a new one (``with CtloopClient(settings) as c: c.producer.resend(err.lost)``)."""
        if self._owns_producer:
            self.producer.close(timeout_s)
        else:
            self.producer.flush(timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
