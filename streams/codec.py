"""A compiled Avro binary encoder.

fastavro's generic ``schemaless_writer`` walks the schema for every record; on the SDK hot path that
walk costs more than producing the record. ``compile_encoder`` turns a schema into one generated
Python function once, so encoding a record is a straight run of appends. Its output is byte-for-byte
Avro binary encoding (tests compare it with fastavro on every schema). Supported: every primitive,
records, enums, arrays, maps and unions of null with one other type, which covers ctloop's schemas;
anything else falls back to fastavro.
"""
from __future__ import annotations

import io
import struct

import fastavro

_PACK_D = struct.Struct("<d").pack
_PACK_F = struct.Struct("<f").pack
_SMALL = [bytes([((i << 1) ^ (i >> 63)) & 0x7F]) if ((i << 1) ^ (i >> 63)) < 0x80 else None for i in range(64)]


def _long(n: int) -> bytes:
    """Zigzag varint of a long."""
    if n.__class__ is bool or not isinstance(n, int):
        raise TypeError(f"expected an integer, got {type(n).__name__}")
    if 0 <= n < 64:
        return _SMALL[n]
    z = (n << 1) ^ (n >> 63)
    if z < 0 or z >= 1 << 64:
        raise ValueError(f"{n} does not fit in a long")
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class _KeyCache(dict):
    """Encoded map keys (feature names repeat on every event); bounded."""

    limit = 4096

    def __missing__(self, key):
        if key.__class__ is not str:
            raise TypeError(f"map key must be a string, got {type(key).__name__}")
        raw = key.encode()
        value = _long(len(raw)) + raw
        if len(self) < self.limit:
            self[key] = value
        return value


class _Unsupported(Exception):
    pass


class _Gen:
    def __init__(self):
        self.lines: list[str] = []
        self.env: dict = {"_long": _long, "_D": _PACK_D, "_F": _PACK_F}
        self.named: dict[str, dict] = {}
        self.counter = 0

    def var(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def resolve(self, schema, namespace: str | None):
        if isinstance(schema, str):
            if schema in self.named:
                return self.named[schema]
            full = f"{namespace}.{schema}" if namespace and "." not in schema else schema
            if full in self.named:
                return self.named[full]
            return schema
        if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
            ns = schema.get("namespace", namespace)
            name = schema["name"]
            full = name if "." in name else (f"{ns}.{name}" if ns else name)
            self.named[name] = schema
            self.named[full] = schema
        return schema

    def write(self, schema, v: str, indent: int, namespace: str | None, where: str) -> None:
        schema = self.resolve(schema, namespace)
        if isinstance(schema, dict) and isinstance(schema.get("type"), (str, list, dict)) and schema.get("type") not in (
            "record", "enum", "array", "map", "fixed"
        ):
            schema = schema["type"]  # {"type": "long", "logicalType": ...}
            return self.write(schema, v, indent, namespace, where)
        if isinstance(schema, list):
            branches = [self.resolve(b, namespace) for b in schema]
            if len(branches) == 2 and "null" in branches:
                other_index = 1 - branches.index("null")
                self.emit(indent, f"if {v} is None:")
                self.emit(indent + 1, f"a({_long(branches.index('null'))!r})")
                self.emit(indent, "else:")
                self.emit(indent + 1, f"a({_long(other_index)!r})")
                self.write(branches[other_index], v, indent + 1, namespace, where)
                return
            if len(branches) == 1:
                self.emit(indent, "a(b'\\x00')")
                self.write(branches[0], v, indent, namespace, where)
                return
            raise _Unsupported(f"union {schema}")
        t = schema if isinstance(schema, str) else schema["type"]
        if t == "null":
            self.emit(indent, f"if {v} is not None: raise TypeError('{where}: expected null')")
        elif t == "boolean":
            self.emit(indent, f"if {v} is True: a(b'\\x01')")
            self.emit(indent, f"elif {v} is False: a(b'\\x00')")
            self.emit(indent, f"else: raise TypeError('{where}: expected a boolean')")
        elif t in ("int", "long"):
            self.emit(indent, f"a(_long({v}))")
        elif t == "double":
            self.emit(indent, f"a(_D({v}))")
        elif t == "float":
            self.emit(indent, f"a(_F({v}))")
        elif t == "string":
            b = self.var("b")
            self.emit(indent, f"{b} = {v}.encode()")
            self.emit(indent, f"a(_long(len({b}))); a({b})")
        elif t == "bytes":
            self.emit(indent, f"if not isinstance({v}, (bytes, bytearray)): raise TypeError('{where}: expected bytes')")
            self.emit(indent, f"a(_long(len({v}))); a(bytes({v}))")
        elif t == "enum":
            table = self.var("E")
            self.env[table] = {sym: _long(i) for i, sym in enumerate(schema["symbols"])}
            self.emit(indent, f"a({table}[{v}])")
        elif t == "array":
            item = self.var("i")
            self.emit(indent, f"if {v}:")
            self.emit(indent + 1, f"a(_long(len({v})))")
            self.emit(indent + 1, f"for {item} in {v}:")
            self.write(schema["items"], item, indent + 2, namespace, where + "[]")
            self.emit(indent, "a(b'\\x00')")
        elif t == "map":
            keys = self.var("K")
            self.env[keys] = _KeyCache()
            k, val = self.var("k"), self.var("x")
            self.emit(indent, f"if {v}:")
            self.emit(indent + 1, f"a(_long(len({v})))")
            self.emit(indent + 1, f"for {k}, {val} in {v}.items():")
            self.emit(indent + 2, f"a({keys}[{k}])")
            self.write(schema["values"], val, indent + 2, namespace, where + "{}")
            self.emit(indent, "a(b'\\x00')")
        elif t == "record":
            ns = schema.get("namespace", namespace)
            for field in schema["fields"]:
                fv = self.var("f")
                self.emit(indent, f"{fv} = {v}[{field['name']!r}]")
                self.write(field["type"], fv, indent, ns, f"{where}.{field['name']}" if where else field["name"])
        else:
            raise _Unsupported(t)


def compile_encoder(schema: dict):
    """Return ``encode(record) -> bytes`` for an Avro schema (a parsed-JSON dict)."""
    gen = _Gen()
    try:
        gen.write(schema, "r", 1, schema.get("namespace"), "")
    except _Unsupported:
        parsed = fastavro.parse_schema(schema)

        def fallback(record):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, record)
            return buf.getvalue()

        return fallback
    source = "def encode(r):\n    parts = []\n    a = parts.append\n" + "\n".join(gen.lines) + "\n    return b''.join(parts)\n"
    namespace = dict(gen.env)
    exec(compile(source, f"<avro encoder {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - generated from our schema
    encode = namespace["encode"]
    encode.source = source
    return encode
