"""Checks of events at the edge: the SDK refuses invalid input at the call, consumers dead-letter
invalid events written by other clients. Each error names the offending field."""
from __future__ import annotations

import math

from streams import catalog as ev

ROLES = ("primary", "shadow", "canary")
FEEDBACK_TYPES = ("label", "correction", "review")
FEEDBACK_KINDS = ("explicit", "implicit")
VERDICTS = ("correct", "incorrect")


class InvalidEvent(ValueError):
    """Input that violates an event's contract; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def check_str(field: str, value, *, allow_empty: bool = False) -> None:
    if value.__class__ is not str:
        raise InvalidEvent(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidEvent(field, "must not be empty")


_NUMBERS = frozenset((float, int))
_STR = frozenset((str,))


def check_features(features, field: str = "features") -> None:
    # fast path (the SDK hot path): all names str, all values float/int (not bool), and a finite
    # sum (a NaN or infinity makes the sum non-finite; an overflowing sum just takes the slow path)
    if features.__class__ is dict and features:
        values = features.values()
        if _NUMBERS.issuperset(map(type, values)) and _STR.issuperset(map(type, features)):
            try:
                if math.isfinite(sum(values)):
                    return
            except OverflowError:
                pass
    if not isinstance(features, dict):
        raise InvalidEvent(field, f"expected a mapping of name to number, got {type(features).__name__}")
    if not features:
        raise InvalidEvent(field, "must not be empty")
    isfinite = math.isfinite
    for name, value in features.items():
        cls = value.__class__
        if cls is not float and cls is not int:
            if cls is bool or not isinstance(value, (int, float)):
                raise InvalidEvent(f"{field}[{name!r}]", f"expected a number, got {type(value).__name__}")
        try:
            finite = isfinite(value)
        except OverflowError:  # an int beyond the range of a double
            finite = False
        if not finite:
            raise InvalidEvent(f"{field}[{name!r}]", f"must be finite, got {value}")
        if name.__class__ is not str:
            raise InvalidEvent(field, f"feature names must be strings, got {name!r}")


def check_probabilities(probabilities, field: str = "probabilities") -> None:
    if probabilities.__class__ is dict:  # fast path, as in check_features
        values = probabilities.values()
        if _NUMBERS.issuperset(map(type, values)) and (not values or (
                math.isfinite(sum(values)) and min(values) >= 0 and max(values) <= 1)):
            return
    if not isinstance(probabilities, dict):
        raise InvalidEvent(field, f"expected a mapping of label to probability, got {type(probabilities).__name__}")
    for name, value in probabilities.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= 1:
            raise InvalidEvent(f"{field}[{name!r}]", f"must be a probability in [0, 1], got {value!r}")


def check_prediction(value: dict) -> None:
    check_str("prediction_id", value.get("prediction_id"))
    check_str("deployment", value.get("deployment"))
    check_str("model_version", value.get("model_version"))
    if value.get("role") not in ROLES:
        raise InvalidEvent("role", f"must be one of {ROLES}, got {value.get('role')!r}")
    check_features(value.get("features"))
    if value.get("label") is None and value.get("score") is None:
        raise InvalidEvent("label", "a prediction needs a label or a score")
    score = value.get("score")
    if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score)):
        raise InvalidEvent("score", f"must be a finite number, got {score!r}")
    check_probabilities(value.get("probabilities") or {})


def check_feedback(value: dict) -> None:
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


VALIDATORS = {ev.PREDICTION_LOGGED: check_prediction, ev.FEEDBACK_RECEIVED: check_feedback}


def validate_event(event_type: str, value: dict) -> None:
    """Raise InvalidEvent when a decoded event breaks its contract (only types with a validator)."""
    check = VALIDATORS.get(event_type)
    if check is not None:
        check(value)
