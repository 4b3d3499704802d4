"""Checks of events at the edge: the SDK refuses invalid input at the call, consumers dead-letter
invalid events written by other clients. Each error names the offending field.

Edge rules (docs/WIRE_FORMAT.md, "Edge rules"):

* every number (features, score, probabilities, latency_ms) is finite **in float32**: models compute
  in float32, so |x| <= FLOAT32_MAX (about 3.4e38); 1e39 is finite in the float64 wire type but
  becomes infinity in the model and poisons training.
* every string (names, labels, ids, map keys) is encodable as UTF-8: a lone surrogate (what
  ``surrogateescape`` decoding produces from undecodable bytes) is refused naming its field.
* ``event_time`` lies within a bound around a reference clock: the SDK's own clock at the call, the
  record's Kafka timestamp in consumers (:func:`check_event_time`).
"""
from __future__ import annotations

import math
import struct

from streams import catalog as ev

ROLES = ("primary", "shadow", "canary")
FEEDBACK_TYPES = ("label", "correction", "review")
FEEDBACK_KINDS = ("explicit", "implicit")
VERDICTS = ("correct", "incorrect")

FLOAT32_MAX: float = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
"""The largest finite float32 (3.4028234663852886e38); numbers at the edge must not exceed it in magnitude."""


class InvalidEvent(ValueError):
    """Input that violates an event's contract; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelOutputError(RuntimeError):
    """A model returned output that cannot be logged (e.g. NaN probabilities): the model's fault, not
    the request's. ``field`` names the output field (``probabilities['a']``, ``label``...)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _unencodable(value: str) -> str | None:
    """None when ``value`` encodes as UTF-8, else a description of the first offending character."""
    if value.isascii():
        return None
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        return (f"is not encodable as UTF-8: {value[exc.start]!r} at index {exc.start} (a lone surrogate, e.g. "
                f"from surrogateescape decoding)")
    return None


def check_str(field: str, value, *, allow_empty: bool = False) -> None:
    """Raise InvalidEvent(field) unless ``value`` is a str (non-empty unless ``allow_empty``) encodable
    as UTF-8."""
    if value.__class__ is not str:
        raise InvalidEvent(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidEvent(field, "must not be empty")
    problem = _unencodable(value)
    if problem is not None:
        raise InvalidEvent(field, problem)


def check_optional_str(field: str, value) -> None:
    """None, or a string as :func:`check_str` with ``allow_empty``."""
    if value is not None:
        check_str(field, value, allow_empty=True)


def check_strings(record: dict, prefix: str = "") -> None:
    """Every string in ``record`` (values, map keys, nested maps and lists) encodable as UTF-8; raises
    InvalidEvent naming the first one that is not (``field``, ``field[key]``, ``field[i]``)."""
    for name, value in record.items():
        field = f"{prefix}[{name!r}]" if prefix else str(name)
        if isinstance(name, str) and _unencodable(name) is not None:
            raise InvalidEvent(prefix or field, f"key {name!r} {_unencodable(name)}")
        _check_nested_strings(field, value)


def _check_nested_strings(field: str, value) -> None:
    if isinstance(value, str):
        problem = _unencodable(value)
        if problem is not None:
            raise InvalidEvent(field, problem)
    elif isinstance(value, dict):
        check_strings(value, field)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_nested_strings(f"{field}[{i}]", item)


def check_number(field: str, value) -> float:
    """``value`` as a float when it is an int or float (not bool), finite and representable in float32
    (|value| <= FLOAT32_MAX); else InvalidEvent(field)."""
    if value.__class__ is not float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidEvent(field, f"expected a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:  # an int beyond the range of a double
        x = math.inf
    if not math.isfinite(x):
        raise InvalidEvent(field, f"must be finite, got {value!r}")
    if not -FLOAT32_MAX <= x <= FLOAT32_MAX:
        raise InvalidEvent(field, f"must be representable as float32 (|x| <= {FLOAT32_MAX:.8g}), got {value!r}")
    return x


_NUMBERS = frozenset((float, int))
_STR = frozenset((str,))


def numbers_in_range(values) -> bool:
    """Fast test of a non-empty collection of exact floats/ints: all finite in float32. A NaN or
    infinity makes the sum non-finite; the min/max bound the magnitudes. False means: run the precise
    checks (which name the field)."""
    try:
        return math.isfinite(sum(values)) and -FLOAT32_MAX <= min(values) and max(values) <= FLOAT32_MAX
    except (OverflowError, TypeError):
        return False


def check_features(features, field: str = "features") -> None:
    """A non-empty dict of feature name (UTF-8 encodable str) to number finite in float32; raises
    InvalidEvent naming ``features`` or ``features['name']``."""
    # fast path (the hot path): all names str, all values float/int (not bool), all in float32 range
    # (names are checked for UTF-8 by the encoders, which fall back to check_features_strict)
    if features.__class__ is dict and features:
        values = features.values()
        if _NUMBERS.issuperset(map(type, values)) and _STR.issuperset(map(type, features)) \
                and numbers_in_range(values):
            return
    check_features_strict(features, field)


def check_features_strict(features, field: str = "features") -> None:
    """:func:`check_features` without the fast path: every name and value checked, UTF-8 included."""
    if not isinstance(features, dict):
        raise InvalidEvent(field, f"expected a mapping of name to number, got {type(features).__name__}")
    if not features:
        raise InvalidEvent(field, "must not be empty")
    for name, value in features.items():
        if name.__class__ is not str:
            raise InvalidEvent(field, f"feature names must be strings, got {name!r}")
        problem = _unencodable(name)
        if problem is not None:
            raise InvalidEvent(field, f"feature name {name!r} {problem}")
        check_number(f"{field}[{name!r}]", value)


def check_probabilities(probabilities, field: str = "probabilities") -> None:
    """A dict of label (UTF-8 encodable str) to a probability in [0, 1]; raises InvalidEvent naming
    ``probabilities`` or ``probabilities['label']``."""
    if probabilities.__class__ is dict:  # fast path, as in check_features
        values = probabilities.values()
        if _NUMBERS.issuperset(map(type, values)) and _STR.issuperset(map(type, probabilities)) and (not values or (
                math.isfinite(sum(values)) and min(values) >= 0 and max(values) <= 1)):
            return
    check_probabilities_strict(probabilities, field)


def check_probabilities_strict(probabilities, field: str = "probabilities") -> None:
    """:func:`check_probabilities` without the fast path (UTF-8 of the labels included)."""
    if not isinstance(probabilities, dict):
        raise InvalidEvent(field, f"expected a mapping of label to probability, got {type(probabilities).__name__}")
    for name, value in probabilities.items():
        if name.__class__ is not str:
            raise InvalidEvent(field, f"labels must be strings, got {name!r}")
        problem = _unencodable(name)
        if problem is not None:
            raise InvalidEvent(field, f"label {name!r} {problem}")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= 1:
            raise InvalidEvent(f"{field}[{name!r}]", f"must be a probability in [0, 1], got {value!r}")


def check_event_time(event_time, reference_ms: int, max_past_s: float, max_future_s: float, *,
                     reference: str = "the SDK's clock", field: str = "event_time") -> int:
    """``event_time`` (an int, milliseconds since the epoch) within ``max_past_s`` seconds before and
    ``max_future_s`` seconds after ``reference_ms``; a bound of 0 (or less) is no bound on that side.
    Returns it; raises InvalidEvent(field) naming the skew and the reference clock."""
    if event_time.__class__ is not int:
        if not isinstance(event_time, int) or isinstance(event_time, bool):
            raise InvalidEvent(field, f"expected milliseconds since the epoch (an integer), got {event_time!r}")
        event_time = int(event_time)
    if not -2**63 <= event_time < 2**63:
        raise InvalidEvent(field, f"{event_time} is out of the range of a long (milliseconds since the epoch)")
    skew_ms = event_time - reference_ms
    if max_past_s > 0 and -skew_ms > max_past_s * 1000:
        raise InvalidEvent(field, f"{event_time} is {-skew_ms / 1000:.0f}s before {reference} ({reference_ms}); "
                                  f"at most {max_past_s:g}s allowed (event_time_max_past_s)")
    if max_future_s > 0 and skew_ms > max_future_s * 1000:
        raise InvalidEvent(field, f"{event_time} is {skew_ms / 1000:.0f}s after {reference} ({reference_ms}); "
                                  f"at most {max_future_s:g}s allowed (event_time_max_future_s)")
    return event_time


def check_prediction(value: dict) -> None:
    """A decoded PredictionLogged (a consumer's view of a record another client wrote)."""
    check_str("event_id", value.get("event_id"))
    check_str("prediction_id", value.get("prediction_id"))
    check_str("deployment", value.get("deployment"))
    check_str("model_name", value.get("model_name"), allow_empty=True)
    check_str("model_version", value.get("model_version"))
    if value.get("role") not in ROLES:
        raise InvalidEvent("role", f"must be one of {ROLES}, got {value.get('role')!r}")
    check_features(value.get("features"))
    if value.get("label") is None and value.get("score") is None:
        raise InvalidEvent("label", "a prediction needs a label or a score")
    check_optional_str("label", value.get("label"))
    score = value.get("score")
    if score is not None:
        check_number("score", score)
    check_probabilities(value.get("probabilities") or {})
    if "latency_ms" in value:
        check_number("latency_ms", value["latency_ms"])


def check_feedback(value: dict) -> None:
    """A decoded FeedbackReceived."""
    check_str("event_id", value.get("event_id"))
    check_str("prediction_id", value.get("prediction_id"))
    check_str("deployment", value.get("deployment"))
    ftype = value.get("feedback_type")
    if ftype not in FEEDBACK_TYPES:
        raise InvalidEvent("feedback_type", f"must be one of {FEEDBACK_TYPES}, got {ftype!r}")
    if value.get("kind") not in FEEDBACK_KINDS:
        raise InvalidEvent("kind", f"must be one of {FEEDBACK_KINDS}, got {value.get('kind')!r}")
    label, verdict = value.get("label"), value.get("verdict")
    if ftype in ("label", "correction"):
        check_str("label", label)
    elif verdict not in VERDICTS:
        raise InvalidEvent("verdict", f"review feedback needs a verdict in {VERDICTS}, got {verdict!r}")
    elif label is not None:
        check_str("label", label)
    check_optional_str("reviewer", value.get("reviewer"))


VALIDATORS = {ev.PREDICTION_LOGGED: check_prediction, ev.FEEDBACK_RECEIVED: check_feedback}
"""Events apps write (the edge); events ctloop's own stages write are trusted."""


def validate_event(event_type: str, value: dict, *, record_time_ms: int | None = None,
                   event_time_max_past_s: float = 0.0, event_time_max_future_s: float = 0.0) -> None:
    """Raise InvalidEvent when a decoded event breaks its contract (only types with a validator).

    ``record_time_ms``: the record's Kafka timestamp (LogAppendTime on ctloop's topics: the broker's
    clock at append; CreateTime: the producer's); when given (> 0), ``event_time`` must lie within
    the bounds around it (seconds; 0 is no bound). Replaying old records is not refused: the
    timestamp is the record's own, not the consumer's wall clock."""
    check = VALIDATORS.get(event_type)
    if check is not None:
        check(value)
        if record_time_ms is not None and record_time_ms > 0 and (event_time_max_past_s > 0 or event_time_max_future_s > 0):
            check_event_time(value.get("event_time"), record_time_ms, event_time_max_past_s, event_time_max_future_s,
                             reference="the record's Kafka timestamp")


def unrepresentable_rows(x):
    """Rows of a 2-D float array (n x d) holding a value a float32 model cannot represent: infinite, or
    finite with |value| > FLOAT32_MAX. NaN (a missing value) is not counted here. Returns a bool array
    of n. The edge refuses such values; this is the trainers' defence for records already in the log."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (np.abs(x) > FLOAT32_MAX).any(axis=1) if x.ndim == 2 else np.zeros(len(x), dtype=bool)
