"""The one-struct PredictionLogged packer writes exactly what the generic encoder writes."""
from __future__ import annotations

import random

from streams import catalog as ev
from streams.ids import UuidSource
from streams.record_packer import PredictionPacker
from streams.serde import Serde


def test_packer_bytes_equal_the_generic_encoder_on_random_shapes():
    serde, new_id = Serde(), UuidSource()
    encode = serde._encoder(ev.PREDICTION_LOGGED)[1]
    header = serde.single_object_header(ev.PREDICTION_LOGGED)
    packer = PredictionPacker(header)
    rnd = random.Random(7)
    packed = 0
    for _ in range(600):
        features = {f"f{i}": rnd.uniform(-1e6, 1e6) for i in range(rnd.randint(1, 30))}
        probabilities = {} if rnd.random() < 0.3 else {k: rnd.random() for k in rnd.sample(["a", "b", "ç", "dd"], 2)}
        label = None if rnd.random() < 0.2 else rnd.choice(["a", "b", "ünï"])
        score = None if label is not None and rnd.random() < 0.5 else rnd.uniform(-5, 5)
        record = dict(event_id=new_id(), event_time=rnd.choice([0, 1, 1_795_000_000_000, 2**40]),
                      prediction_id=new_id(), deployment=rnd.choice(["d", "dép"]), model_name=rnd.choice(["", "m"]),
                      model_version=rnd.choice(["1", "v2-abc"]), role=rnd.choice(["primary", "shadow", "canary"]),
                      features=features, label=label, score=score, probabilities=probabilities,
                      latency_ms=rnd.random())
        out = packer.pack(**record)
        assert out == header + encode(record)
        packed += 1
    assert packed == 600
    assert serde.decode(out).value == record


def test_packer_declines_what_it_cannot_pack():
    packer = PredictionPacker(Serde().single_object_header(ev.PREDICTION_LOGGED))
    new_id = UuidSource()
    base = dict(event_id=new_id(), event_time=1, prediction_id=new_id(), deployment="d", model_name="m",
                model_version="1", role="primary", features={"x": 1.0}, label="a", score=None, probabilities={},
                latency_ms=0.0)
    assert packer.pack(**base) is not None
    assert packer.pack(**{**base, "prediction_id": "not-a-uuid"}) is None            # not 36 characters
    assert packer.pack(**{**base, "prediction_id": "é" * 36}) is None                # 36 characters, 72 bytes
    assert packer.pack(**{**base, "features": {"x": "1.0"}}) is None                  # not a number
    assert packer.pack(**{**base, "features": {1: 1.0}}) is None                      # not a string name
    assert packer.pack(**{**base, "event_time": 1.5}) is None                         # not an int
