"""Frontend messages of the v3 protocol as the differential test sends them: each with a line a person
can read (for reports and shrunk reproductions), grouped into Steps (one write each).

Python 3 standard library only.
"""
from __future__ import annotations

import datetime
import decimal
import struct
import uuid
from dataclasses import dataclass, field


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


@dataclass(frozen=True)
class Msg:
    """One frontend message: its type byte, payload, and a line a person can read."""

    type: bytes
    payload: bytes
    text: str

    def frame(self) -> bytes:
        return self.type + struct.pack("!I", len(self.payload) + 4) + self.payload

    def to_json(self) -> dict:
        return {"type": self.type.decode(), "payload": self.payload.hex(), "text": self.text}

    @staticmethod
    def from_json(data: dict) -> "Msg":
        return Msg(data["type"].encode(), bytes.fromhex(data["payload"]), data["text"])


@dataclass
class Step:
    """Messages sent with one write (then their due replies are read), or a sleep (no messages)."""

    msgs: list[Msg] = field(default_factory=list)
    sleep: float = 0.0

    def describe(self) -> str:
        if not self.msgs:
            return f"sleep {self.sleep * 1000:.0f} ms"
        return "; ".join(m.text for m in self.msgs)

    def to_json(self) -> dict:
        return {"msgs": [m.to_json() for m in self.msgs], "sleep": self.sleep}

    @staticmethod
    def from_json(data: dict) -> "Step":
        return Step([Msg.from_json(m) for m in data["msgs"]], data.get("sleep", 0.0))


def parse(name: str, query: str, types: tuple[int, ...] = ()) -> Msg:
    payload = _cstr(name) + _cstr(query) + struct.pack("!H", len(types)) + b"".join(struct.pack("!I", t) for t in types)
    shown = f" types={list(types)}" if types else ""
    return Msg(b"P", payload, f"Parse({name!r}, {query!r}{shown})")


def bind(portal: str, statement: str, params: list[tuple[int, bytes | None]], param_format_codes: list[int],
         result_formats: list[int]) -> Msg:
    """params: (format, value bytes or None for NULL); param_format_codes as sent (0, 1 or n codes)."""
    payload = _cstr(portal) + _cstr(statement)
    payload += struct.pack("!H", len(param_format_codes)) + b"".join(struct.pack("!H", c) for c in param_format_codes)
    payload += struct.pack("!H", len(params))
    shown = []
    for fmt, value in params:
        if value is None:
            payload += struct.pack("!i", -1)
            shown.append("NULL")
        else:
            payload += struct.pack("!i", len(value)) + value
            shown.append(f"{value.decode()!r}" if fmt == 0 else f"bin:{value.hex()}")
    payload += struct.pack("!H", len(result_formats)) + b"".join(struct.pack("!H", c) for c in result_formats)
    return Msg(b"B", payload, f"Bind(portal={portal!r}, stmt={statement!r}, params=[{', '.join(shown)}], "
                              f"param_formats={param_format_codes}, result_formats={result_formats})")


def describe(kind: str, name: str) -> Msg:
    return Msg(b"D", kind.encode() + _cstr(name), f"Describe({kind}, {name!r})")


def execute(portal: str, max_rows: int = 0) -> Msg:
    return Msg(b"E", _cstr(portal) + struct.pack("!I", max_rows), f"Execute({portal!r}, max_rows={max_rows})")


def close(kind: str, name: str) -> Msg:
    return Msg(b"C", kind.encode() + _cstr(name), f"Close({kind}, {name!r})")


def sync() -> Msg:
    return Msg(b"S", b"", "Sync")


def flush() -> Msg:
    return Msg(b"H", b"", "Flush")


def query(sql: str) -> Msg:
    return Msg(b"Q", _cstr(sql), f"Query({sql!r})")


def copy_data(data: bytes) -> Msg:
    return Msg(b"d", data, f"CopyData({data!r})")


def copy_done() -> Msg:
    return Msg(b"c", b"", "CopyDone")


def copy_fail(reason: str) -> Msg:
    return Msg(b"f", _cstr(reason), f"CopyFail({reason!r})")


OID = {"int4": 23, "int8": 20, "text": 25, "bool": 16, "float8": 701, "numeric": 1700, "uuid": 2950,
       "date": 1082}


def encode(kind: str, value, fmt: int) -> bytes | None:
    """A parameter value in text (0) or binary (1) format."""
    if value is None:
        return None
    if fmt == 0:
        if kind == "bool":
            return b"t" if value else b"f"
        return str(value).encode()
    if kind == "int4":
        return struct.pack("!i", value)
    if kind == "int8":
        return struct.pack("!q", value)
    if kind == "float8":
        return struct.pack("!d", value)
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind == "text":
        return str(value).encode()
    if kind == "uuid":
        return uuid.UUID(str(value)).bytes  # any spelling Python and Postgres both accept
    if kind == "numeric":
        return numeric_binary(str(value))
    if kind == "date":
        return struct.pack("!i", (datetime.date.fromisoformat(str(value)) - _PG_EPOCH).days)
    raise ValueError(f"no binary encoding for {kind}")


_PG_EPOCH = datetime.date(2000, 1, 1)


def numeric_binary(text: str) -> bytes:
    """numeric_send's format: ndigits, weight, sign, dscale (Int16 each), then base-10000 digits.
    The display scale is the text's own (7.5000 keeps 4), as Postgres keeps it for a parameter."""
    value = decimal.Decimal(text)
    if value.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    sign = 0x4000 if value.is_signed() and value != 0 else 0
    dscale = max(0, -value.as_tuple().exponent)
    whole, _, fraction = format(abs(value), "f").partition(".")
    whole = whole.lstrip("0")
    whole = "0" * (-len(whole) % 4) + whole
    fraction = fraction + "0" * (-len(fraction) % 4)
    groups = [int(whole[i:i + 4]) for i in range(0, len(whole), 4)] + \
             [int(fraction[i:i + 4]) for i in range(0, len(fraction), 4)]
    weight = len(whole) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight, sign = 0, 0
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, sign, dscale, *groups)


BINARY_KINDS = {"int4", "int8", "float8", "bool", "text"}
