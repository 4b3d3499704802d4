"""The C encoder of log_prediction (streams/_speedups.c) against the pure-Python encoders: the same bytes
for every valid record, and a refusal (None, so the Python path names the field) for everything else."""
from __future__ import annotations

import math
from collections import OrderedDict
import random
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from streams import catalog as ev
from streams.ids import UuidSource
from streams.serde import Serde
from streams.validation import FLOAT32_MAX, InvalidEvent

FIELDS = ("event_id", "event_time", "prediction_id", "deployment", "model_name", "model_version", "role", "features",
          "label", "score", "probabilities", "latency_ms")


def _compiler_available() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return bool(shutil.which(cc)) and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


def test_extension_is_built_where_a_compiler_is():
    """setup.py makes the extension optional; on a machine that can compile it, it must be there, or the
    SDK silently runs at half speed."""
    if not _compiler_available():
        pytest.skip("no C compiler or Python headers: the SDK uses its pure-Python encoders")
    import streams._speedups  # noqa: F401  (an ImportError here fails the test)


speedups = pytest.importorskip("streams._speedups")
serde = Serde()
HEADER = serde.single_object_header(ev.PREDICTION_LOGGED)
generic = serde._encoder(ev.PREDICTION_LOGGED)[1]


def c_encode(record: dict):
    return speedups.encode_prediction(HEADER, *(record[f] for f in FIELDS))


def reference(record: dict) -> bytes:
    return HEADER + generic({**record, "probabilities": record["probabilities"] or {},
                             "score": None if record["score"] is None else float(record["score"]),
                             "latency_ms": float(record["latency_ms"])})


def base_record(**change) -> dict:
    new_id = UuidSource()
    record = dict(event_id=new_id(), event_time=1_795_000_000_000, prediction_id=new_id(), deployment="d",
                  model_name="m", model_version="1", role="primary", features={"x": 1.0}, label="a", score=None,
                  probabilities={}, latency_ms=0.0)
    record.update(change)
    return record


def test_bytes_equal_the_generic_encoder_on_random_records():
    rnd, new_id = random.Random(11), UuidSource()
    text = ["", "a", "dép", "ünïcode-ß", "x" * 70, "y" * 9000, "🙂" * 5]  # 70 and 9000 bytes: 2- and 3-byte lengths
    for _ in range(2000):
        n_features = rnd.choice([1, 2, 20, 63, 64, 65, 300])  # 300 features: more than the stack buffer
        features = {f"{rnd.choice(text[:4])}f{i}": rnd.choice([rnd.uniform(-3.4e38, 3.4e38), rnd.randint(-2**62, 2**62),
                                                                0.0, -0.0, 5e-324, 1, np.float64(0.3),
                                                                FLOAT32_MAX, -FLOAT32_MAX])
                    for i in range(n_features)}
        probabilities = rnd.choice([None, {}, {k: rnd.choice([0, 1, 0.0, 1.0, rnd.random()])
                                               for k in rnd.sample(text, 3)}])
        label = None if rnd.random() < 0.3 else rnd.choice(text)
        score = rnd.choice([None, rnd.uniform(-5, 5), 3]) if label is not None else rnd.uniform(-5, 5)
        record = dict(event_id=new_id(), event_time=rnd.choice([0, 1, -1, 63, 64, -65, 1_795_000_000_000, 2**62, -2**63]),
                      prediction_id=rnd.choice([new_id(), "p", "p" * 200]), deployment=rnd.choice(text[1:]),
                      model_name=rnd.choice(text), model_version=rnd.choice(text[1:]),
                      role=rnd.choice(["primary", "shadow", "canary"]), features=features, label=label, score=score,
                      probabilities=probabilities, latency_ms=rnd.choice([0, 0.8, 1e9]))
        out = c_encode(record)
        assert out == reference(record), record
    assert serde.decode(out).value["features"] == {k: float(v) for k, v in features.items()}


class Name(str):
    """A str subclass: valid, but not the plain case the C path takes."""


REFUSED = [
    dict(deployment=""), dict(deployment=None), dict(deployment=Name("d")), dict(model_version=""),
    dict(model_version=3), dict(model_name=None), dict(prediction_id=""), dict(prediction_id=7),
    dict(event_id=""), dict(role="boss"), dict(role=None), dict(role=Name("primary")),
    dict(event_time=1.5), dict(event_time=True), dict(event_time=2**63), dict(event_time=-2**63 - 1),
    dict(features={}), dict(features=[1.0]), dict(features={"x": math.nan}), dict(features={"x": math.inf}),
    dict(features={"x": -math.inf}), dict(features={"x": True}), dict(features={"x": "1"}), dict(features={"x": None}),
    dict(features={3: 1.0}), dict(features=OrderedDict(x=1.0)), dict(features={"x": np.int64(1)}), dict(features={"x": 10**400}), dict(features={"\ud800": 1.0}),
    dict(label=None, score=None), dict(label=7), dict(label=None, score=math.nan), dict(label=None, score="0.5"),
    dict(label=None, score=False), dict(probabilities={"a": 1.5}), dict(probabilities={"a": -0.1}),
    dict(probabilities={"a": math.nan}), dict(probabilities={1: 0.5}), dict(probabilities=[0.5]),
    dict(latency_ms="fast"), dict(latency_ms=math.inf), dict(latency_ms=None),
    # beyond float32 (finite in the float64 wire type, infinite in a model): issue 11
    dict(features={"x": 1e39}), dict(features={"x": -1e39}), dict(features={"x": 10**39}),
    dict(features={"x": float(np.nextafter(np.float64(FLOAT32_MAX), np.inf))}), dict(label=None, score=1e39),
    dict(latency_ms=1e39),
    # strings that are not UTF-8 encodable (lone surrogates, as surrogateescape decoding makes)
    dict(deployment="d\udcff"), dict(model_name="\udcff"), dict(model_version="1\ud800"), dict(label="\udcff"),
    dict(prediction_id="p\udcff"), dict(probabilities={"\udcff": 0.5}),
]


@pytest.mark.parametrize("change", REFUSED, ids=[repr(c)[:40] for c in REFUSED])
def test_anything_but_the_plain_case_is_refused_for_the_python_path(change):
    assert c_encode(base_record()) is not None
    assert c_encode(base_record(**change)) is None


def test_bad_call_raises():
    with pytest.raises(TypeError, match="13 arguments"):
        speedups.encode_prediction(HEADER)
    with pytest.raises(TypeError, match="header"):
        speedups.encode_prediction("not bytes", *(base_record()[f] for f in FIELDS))


def test_client_takes_the_c_path_and_falls_back_with_the_same_bytes(settings):
    """Through CtloopClient: the C path and the Python path give equal bytes for equal events; what the C
    path refuses, the Python path refuses naming the field, or encodes."""
    from streams.sdk import CtloopClient

    captured: list[bytes] = []
    settings = settings.replace(event_time_max_past_s=0)  # the calls below use fixed event times of 1970
    fast = CtloopClient(settings)
    slow = CtloopClient(settings.replace(sdk_speedups=False))
    assert fast._encode_fast is speedups.encode_prediction and slow._encode_fast is None
    for client in (fast, slow):
        client.producer.produce_raw = lambda topic, value, key=None, headers=None: captured.append(value)
        client._uuid = iter(f"{i:036d}" for i in range(10**6)).__next__  # the same ids on both
    calls = [
        dict(deployment="d", features={"x": 1, "y": 2.5}, label="a", probabilities={"a": 1.0, "b": 0},
             model_version="1", event_time=5, latency_ms=2),
        dict(deployment="d", features={"x": 1.0}, score=0.25, model_version="2", role="shadow", prediction_id="p-2",
             event_time=6),
        dict(deployment="d", features=OrderedDict(x=1.0), label="a", model_version="1", event_time=7,
             prediction_id="p-3"),  # the Python path
    ]
    for call in calls:
        for client in (fast, slow):
            client.log_prediction(call["deployment"], call["features"],
                                  **{k: v for k, v in call.items() if k not in ("deployment", "features")})
    fast_out, slow_out = captured[0::2], captured[1::2]
    assert fast_out[0] == slow_out[0]
    # the Python path may draw an extra event id (its packer declines "p-2"; the C path declined the third
    # call, a dict subclass, after drawing one): past the first event only the event ids differ
    for a, b in zip(fast_out, slow_out):
        a, b = serde.decode(a).value, serde.decode(b).value
        a.pop("event_id"), b.pop("event_id")
        assert a == b
    with pytest.raises(InvalidEvent) as err:
        fast.log_prediction("d", {"x": math.nan}, label="a", model_version="1")
    assert err.value.field == "features['x']"
    for client in (fast, slow):
        client.close(1)
