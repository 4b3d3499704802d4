"""One ``struct.pack`` per logged prediction.

Apps log predictions of few shapes: the same deployment, model version, role, label set, feature
names and probability labels, over and over. For each such shape, :class:`PredictionPacker` builds once
a ``struct.Struct`` covering the whole single-object-encoded PredictionLogged record: the constant
parts (header, strings, map keys) are fixed ``Ns`` arguments, and only the ids, the time and the
numbers change from call to call. Encoding is then one C call instead of a walk over the fields. The
bytes are exactly the generic encoder's (tests compare them). Shapes that do not fit (ids that are not
36 ASCII characters, strings not encodable as UTF-8, more than ``limit`` shapes) return None, and the
caller uses the generic encoder. The packer checks no values: numbers are packed as they are (a double
per value), so its caller (``CtloopClient._log_prediction_checked``) checks them first (finite in
float32, streams/validation.py).
"""
from __future__ import annotations

import struct

from streams.codec import _long

_ID_LEN = b"\x48"  # zigzag varint of 36: the length of a UUID string


def _string(value: str) -> bytes:
    raw = value.encode()
    return _long(len(raw)) + raw


class PredictionPacker:
    """Encodes PredictionLogged records with one precompiled ``struct.Struct`` per record shape (see the
    module docstring); at most ``limit`` shapes. ``header``: the schema's 10-byte single-object header."""
    limit = 1024

    def __init__(self, header: bytes):
        self.header = header
        self._layouts: dict[tuple, tuple] = {}
        self._last_ms = -1
        self._last_ms_bytes = b""

    def pack(self, event_id: str, event_time: int, prediction_id: str, deployment: str, model_name: str,
             model_version: str, role: str, features: dict, label, score, probabilities: dict,
             latency_ms: float) -> bytes | None:
        """The single-object-encoded PredictionLogged bytes (identical to the generic encoder's), or None
        when the record does not fit a packed shape (ids not 36 ASCII characters, a string not UTF-8 encodable,
        an event_time outside int64, more than ``limit`` shapes): the caller then encodes it generically.
        Values are not checked (``event_time`` epoch ms, ``latency_ms`` ms)."""
        try:
            pid = prediction_id.encode()
        except (UnicodeEncodeError, AttributeError):  # the caller's precise checks name the field
            return None
        if len(pid) != 36 or len(event_id) != 36:  # struct's "36s" would pad or cut silently
            return None
        if event_time != self._last_ms:
            if event_time.__class__ is not int or not -2**63 <= event_time < 2**63:
                return None
            self._last_ms, self._last_ms_bytes = event_time, _long(event_time)
        time_bytes = self._last_ms_bytes
        key = (deployment, model_name, model_version, role, label, score is None, len(time_bytes),
               tuple(features), tuple(probabilities))
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= self.limit:
                return None
            try:
                layout = self._layout(key)
            except (TypeError, AttributeError, ValueError):  # e.g. a non-string feature name
                return None
            self._layouts[key] = layout
        pack, template, feature_slice, prob_slice, score_index = layout
        args = template.copy()
        args[1] = event_id.encode()  # our own UUID4 strings: ASCII
        args[2] = time_bytes
        args[4] = pid
        args[feature_slice] = features.values()
        if prob_slice is not None:
            args[prob_slice] = probabilities.values()
        if score_index is not None:
            args[score_index] = score
        args[-1] = latency_ms
        try:
            return pack(*args)
        except struct.error:  # a non-ASCII id (more than 36 bytes), a non-number
            return None

    def _layout(self, key: tuple) -> tuple:
        from streams.validation import ROLES

        deployment, model_name, model_version, role, label, score_is_none, time_len, feature_names, prob_names = key
        # args: 0 header + id length, 1 event_id, 2 event_time, 3 id length, 4 prediction_id, 5 strings, ...
        fmt = [f"{len(self.header) + 1}s", "36s", f"{time_len}s", "1s", "36s"]
        template: list = [self.header + _ID_LEN, None, None, _ID_LEN, None]
        middle = _string(deployment) + _string(model_name) + _string(model_version) + _long(ROLES.index(role))

        def constant(raw: bytes) -> None:
            fmt.append(f"{len(raw)}s")
            template.append(raw)

        def number_map(names: tuple) -> slice | None:
            if not names:
                constant(b"\x00")
                return None
            constant(_long(len(names)))
            first = len(template)
            for name in names:
                constant(_string(name))
                fmt.append("d")
                template.append(0.0)
            constant(b"\x00")  # end of the map's blocks
            return slice(first + 1, len(template) - 1, 2)

        constant(middle)
        feature_slice = number_map(feature_names)
        label_bytes = b"\x00" if label is None else b"\x02" + _string(label)
        if score_is_none:
            constant(label_bytes + b"\x00")
            score_index = None
        else:
            constant(label_bytes + b"\x02")
            fmt.append("d")
            template.append(0.0)
            score_index = len(template) - 1
        prob_slice = number_map(prob_names)
        fmt.append("d")
        template.append(0.0)  # latency_ms
        return struct.Struct("<" + "".join(fmt)).pack, template, feature_slice, prob_slice, score_index
