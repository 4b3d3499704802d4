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


_LENS = tuple(_long(i) for i in range(128))
"""Encoded lengths 0..127 (the common case of strings and map/array counts)."""


class _StrCache(dict):
    """Encoded strings (length + UTF-8) of a field whose values repeat (deployment, model version,
    labels...); bounded, misses are encoded and cached until the bound."""

    limit = 1024

    def __init__(self, prefix: bytes = b"", none: bytes | None = None):
        super().__init__()
        self.prefix = prefix  # e.g. the union branch index of ["null", "string"]
        if none is not None:
            self[None] = none

    def __missing__(self, value):
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        raw = value.encode()
        n = len(raw)
        encoded = self.prefix + (_LENS[n] if n < 128 else _long(n)) + raw
        if len(self) < self.limit and value.__class__ is str:
            self[value] = encoded
        return encoded


class _NumberMap:
    """Encoder of a non-empty map of doubles (or floats): one ``struct.pack`` per map.

    Feature maps have the same keys event after event: for each key tuple a Struct is built whose
    format holds the block count, every encoded key (as fixed ``Ns`` fields) and the values; encoding
    fills the values into a copy of a template list and packs it in one C call. Bytes are exactly
    Avro's (one block and the 0 terminator; the caller writes a lone 0 for an empty map). More than ``limit`` distinct key
    sets: the rest are encoded entry by entry."""

    limit = 256

    def __init__(self, code: str):
        self.code = code  # "d" or "f"
        self.pack_one = _PACK_D if code == "d" else _PACK_F
        self.keys = _KeyCache()
        self.layouts: dict[tuple, tuple] = {}

    def __call__(self, m) -> bytes:
        names = tuple(m)
        layout = self.layouts.get(names)
        if layout is None:
            layout = self._layout(names)
            if layout is None:
                return self._slow(m)
        pack, template = layout
        args = template.copy()
        args[2:-1:2] = m.values()
        return pack(*args)

    def _layout(self, names: tuple):
        if len(self.layouts) >= self.limit:
            return None
        keys = [self.keys[k] for k in names]  # TypeError for a non-string key
        count = _long(len(names))
        fmt = "<" + f"{len(count)}s" + "".join(f"{len(k)}s{self.code}" for k in keys) + "1s"
        template = [count]
        for k in keys:
            template += [k, 0.0]
        template.append(b"\x00")  # the end-of-map block
        layout = self.layouts[names] = (struct.Struct(fmt).pack, template)
        return layout

    def _slow(self, m) -> bytes:
        parts = [_long(len(m))]
        keys, pack = self.keys, self.pack_one
        for k, v in m.items():
            parts.append(keys[k])
            parts.append(pack(v))
        parts.append(b"\x00")
        return b"".join(parts)


class _Unsupported(Exception):
    pass


class _Gen:
    def __init__(self):
        self.lines: list[str] = []
        self.env: dict = {"_long": _long, "_D": _PACK_D, "_F": _PACK_F, "_LENS": _LENS}
        self.named: dict[str, dict] = {}
        self.counter = 0
        self.top_fields: list[str] = []
        self.top_lines: set[int] = set()

    def var(self, prefix: str) -> str:
        """A fresh variable name for the generated code: ``prefix`` + a counter."""
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, indent: int, line: str) -> None:
        """Append one line of generated code at ``indent`` levels (4 spaces each)."""
        self.lines.append("    " * indent + line)

    def resolve(self, schema, namespace: str | None):
        """A named type reference resolved to its schema dict (registering named record/enum/fixed
        definitions under their short and full names); other schemas as given."""
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

    def write(self, schema, v: str, indent: int, namespace: str | None, where: str, logical: str | None = None) -> None:
        """Emit the code that encodes the value expression ``v`` of ``schema``; the generated code raises
        TypeError/ValueError naming ``where`` for a value that does not fit; raises _Unsupported for a schema the
        generator does not compile."""
        schema = self.resolve(schema, namespace)
        if isinstance(schema, dict) and isinstance(schema.get("type"), (str, list, dict)) and schema.get("type") not in (
            "record", "enum", "array", "map", "fixed"
        ):
            logical = schema.get("logicalType")
            schema = schema["type"]  # {"type": "long", "logicalType": ...}
            return self.write(schema, v, indent, namespace, where, logical)
        if isinstance(schema, list):
            branches = [self.resolve(b, namespace) for b in schema]
            if len(branches) == 2 and "null" in branches and branches[1 - branches.index("null")] == "string":
                cache = self.var("N")
                self.env[cache] = _StrCache(prefix=_long(1 - branches.index("null")), none=_long(branches.index("null")))
                self.emit(indent, f"a({cache}[{v}])")
                return
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
        elif t == "long" and logical in ("timestamp-millis", "timestamp-micros"):
            # event times repeat within a millisecond: remember the last one (one tuple, swapped
            # atomically, so threads sharing the encoder never see a mismatched pair)
            last, t_ = self.var("T"), self.var("t")
            self.env[last] = [(None, b"")]
            self.emit(indent, f"{t_} = {last}[0]")
            self.emit(indent, f"if {v} == {t_}[0] and {v}.__class__ is int: a({t_}[1])")
            self.emit(indent, f"else: {t_} = ({v}, _long({v})); {last}[0] = {t_}; a({t_}[1])")
        elif t in ("int", "long"):
            self.emit(indent, f"a(_long({v}))")
        elif t == "double":
            self.emit(indent, f"a(_D({v}))")
        elif t == "float":
            self.emit(indent, f"a(_F({v}))")
        elif t == "string" and logical == "uuid":  # unique values: no cache
            b = self.var("b")
            self.emit(indent, f"{b} = {v}.encode()")
            self.emit(indent, f"a(_LENS[len({b})] if len({b}) < 128 else _long(len({b}))); a({b})")
        elif t == "string":
            cache = self.var("S")
            self.env[cache] = _StrCache()
            self.emit(indent, f"a({cache}[{v}])")
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
        elif t == "map" and self.resolve(schema["values"], namespace) in ("double", "float"):
            packer, layouts, lay, args = self.var("M"), self.var("L"), self.var("l"), self.var("g")
            self.env[packer] = _NumberMap("d" if self.resolve(schema["values"], namespace) == "double" else "f")
            self.env[layouts] = self.env[packer].layouts
            # _NumberMap.__call__ inlined for a known key set (the hot path)
            self.emit(indent, f"if {v}:")
            self.emit(indent + 1, f"{lay} = {layouts}.get(tuple({v}))")
            self.emit(indent + 1, f"if {lay} is None: a({packer}({v}))")
            self.emit(indent + 1, f"else: {args} = {lay}[1].copy(); {args}[2:-1:2] = {v}.values(); a({lay}[0](*{args}))")
            self.emit(indent, "else: a(b'\\x00')")
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
            top = v == "r" and not self.top_fields
            for field in schema["fields"]:
                fv = self.var("f")
                if top:  # the record's own fields: parameters of the positional variant
                    self.top_fields.append(fv)
                    self.top_lines.add(len(self.lines))
                if not top and "default" in field:
                    # a nested record's field with a default may be left out (a producer built against the
                    # schema before the field was added, e.g. DatasetLineage.training_window): write the default
                    self.emit(indent, f"{fv} = {v}.get({field['name']!r}, {field['default']!r})")
                else:
                    self.emit(indent, f"{fv} = {v}[{field['name']!r}]")
                self.write(field["type"], fv, indent, ns, f"{where}.{field['name']}" if where else field["name"])
        else:
            raise _Unsupported(t)


def compile_encoder(schema: dict):
    """Return ``encode(record) -> bytes`` for an Avro schema (a parsed-JSON dict); compiled encoders
    also have ``encode.fields(*values)`` taking the record's field values in schema order."""
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
    prologue = "    parts = []\n    a = parts.append\n"
    epilogue = "\n    return b''.join(parts)\n"
    source = "def encode(r):\n" + prologue + "\n".join(gen.lines) + epilogue
    body = [line for i, line in enumerate(gen.lines) if i not in gen.top_lines]
    source += f"\n\ndef encode_fields({', '.join(gen.top_fields)}):\n" + prologue + "\n".join(body) + epilogue
    namespace = dict(gen.env)
    exec(compile(source, f"<avro encoder {schema.get('name')}>", "exec"), namespace)  # noqa: S102 - generated from our schema
    encode = namespace["encode"]
    encode.source = source
    encode.fields = namespace["encode_fields"]
    """``encode.fields(*values)``: the same bytes from the record's field values in schema order,
    without building a dict (the SDK's hot path)."""
    return encode
