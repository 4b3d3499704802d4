"""Random values for an Avro schema (test helper).

``generate(schema, rng, style)`` walks a parsed-JSON Avro schema and returns a value for it:
style "minimal" takes the null branch of every nullable union and leaves maps/arrays empty,
"maximal" takes the other branch and fills every map/array, "random" decides at each node.
Numbers include the encoding edge cases (zigzag/varint boundaries, extreme longs, -0.0, huge and tiny
doubles); strings include non-ASCII and empty ones. Times are ints (epoch millis), uuids strings,
as ctloop handles them in Python.
"""
from __future__ import annotations

import random
import struct
import uuid

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
LONG_EDGES = (0, 1, -1, 63, 64, -64, -65, 127, 128, 8191, 8192, 2**31 - 1, -2**31, 2**53, 2**63 - 1, -2**63)
INT_EDGES = (0, 1, -1, 63, 64, -65, 2**31 - 1, -2**31)
DOUBLE_EDGES = (0.0, -0.0, 1.0, -1.5, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 0.1)
ALPHABET = "abcxyz_019 éß中🙂\n\"\\"


def _string(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.choice((0, 1, 5, 20))))


class Generator:
    def __init__(self, rng: random.Random, style: str = "random"):
        assert style in ("minimal", "maximal", "random")
        self.rng = rng
        self.style = style
        self.named: dict[str, dict] = {}

    def _fill(self) -> bool:
        if self.style == "random":
            return self.rng.random() < 0.6
        return self.style == "maximal"

    def value(self, schema, namespace: str | None = None):
        rng = self.rng
        if isinstance(schema, str) and schema not in PRIMITIVES:
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            schema = self.named.get(full) or self.named[schema]
        if isinstance(schema, list):
            non_null = [b for b in schema if b != "null"]
            if "null" in schema and (not non_null or not self._fill()):
                return None
            return self.value(rng.choice(non_null), namespace)
        if isinstance(schema, dict):
            t = schema["type"]
            logical = schema.get("logicalType")
            if logical == "uuid":
                return str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if logical in ("timestamp-millis", "timestamp-micros", "time-micros"):
                return rng.randrange(0, 2**45)
            if t in ("record", "enum", "fixed"):
                ns = schema.get("namespace", namespace)
                full = schema["name"] if "." in schema["name"] else (f"{ns}.{schema['name']}" if ns else schema["name"])
                self.named[full] = schema
                self.named[schema["name"]] = schema
                if t == "record":
                    return {f["name"]: self.value(f["type"], ns) for f in schema["fields"]}
                if t == "enum":
                    return rng.choice(schema["symbols"])
                return bytes(rng.getrandbits(8) for _ in range(schema["size"]))
            if t == "array":
                n = rng.randint(1, 3) if self._fill() else 0
                return [self.value(schema["items"], namespace) for _ in range(n)]
            if t == "map":
                n = rng.randint(1, 4) if self._fill() else 0
                return {f"k{i}_{_string(rng)}": self.value(schema["values"], namespace) for i in range(n)}
            return self.value(t, namespace)
        if schema == "null":
            return None
        if schema == "boolean":
            return rng.random() < 0.5
        if schema == "int":
            return rng.choice(INT_EDGES) if rng.random() < 0.5 else rng.randint(-2**31, 2**31 - 1)
        if schema == "long":
            return rng.choice(LONG_EDGES) if rng.random() < 0.5 else rng.randint(-2**63, 2**63 - 1)
        if schema == "double":
            return rng.choice(DOUBLE_EDGES) if rng.random() < 0.4 else rng.uniform(-1e6, 1e6)
        if schema == "float":  # a float32-representable value, so it round-trips exactly
            return struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0]
        if schema == "bytes":
            return bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 16, 300))))
        if schema == "string":
            return _string(rng)
        raise ValueError(f"unsupported schema {schema!r}")


def generate(schema: dict, rng: random.Random, style: str = "random"):
    return Generator(rng, style).value(schema)


def samples(schema: dict, seed: int = 0, n_random: int = 25) -> list:
    """A minimal, a maximal and ``n_random`` random values of ``schema``."""
    rng = random.Random(seed)
    return [generate(schema, rng, "minimal"), generate(schema, rng, "maximal")] + [
        generate(schema, rng, "random") for _ in range(n_random)]
