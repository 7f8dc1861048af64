"""Running one client's sequence on a connection and recording every reply (see differential.py).

What is read when: after a write, the replies that the server must send now — everything owed for
the messages before the last Sync, Flush or Query — are read (with a deadline) and no more; replies
that come early for unflushed messages are read later with the rest. Every message is recorded with
the step during which it was read, and the recordings are compared as one stream per client, so
that where a reply falls between two reads does not matter, only what and in which order.

Normalized before comparing, because they legitimately differ between a direct connection and one
through pgsluice: BackendKeyData (dropped), ParameterStatus (dropped from the stream; instead, at
each ReadyForQuery, the settings whose last reported value changed since the previous one are
recorded), error and notice fields P/p (position), F, L, R (source file, line, routine), and the
authentication exchange. A NotificationResponse's process id is recorded as "self" when it is the
pid of the client's own BackendKeyData and "other" otherwise. Nothing else.

In the pooled modes (Client(async_notifications=True)) notifications come from pgsluice's listener
connection, as they would from another backend: after the ReadyForQuery of the transaction that sent
them, not before it, and naming the notifying server backend. There they are recorded apart, in order
(channel and payload, not the pid), and compared as one entry at the end of the client's stream,
after a short wait for late ones.
"""
from __future__ import annotations

import collections
import contextlib
import struct
import time
from dataclasses import dataclass, field

from pgwire import RawConnection, message, parse_error_fields

from sequences import Step, epilogue

IGNORED_ERROR_FIELDS = set("PpFLR")


@dataclass
class Entry:
    """One recorded reply: the step during which it was read and its normalized form."""

    step: int
    kind: str      # a backend message type, or "params", "startup", "TIMEOUT", "CLOSED", "DESYNC", "ERROR"
    data: object   # hashable: bytes, or a tuple

    def key(self) -> tuple:
        return (self.kind, self.data)

    def show(self) -> str:
        return f"[step {self.step}] {describe_entry(self.kind, self.data)}"


@dataclass
class Recording:
    entries: list[Entry] = field(default_factory=list)
    sent: int = 0          # frontend messages sent (startup excluded)
    aborted: str = ""      # why the run stopped early, if it did
    seconds: float = 0.0


class _Pending:
    """What the server owes, in order: one item per frontend message that gets a reply. An item is
    due once a Sync, Flush or Query came after it."""

    def __init__(self):
        self.items: collections.deque = collections.deque()  # [kind, due, stage]
        self.skipping = False  # after an error the server ignores every message up to the next Sync

    def sent(self, type_byte: bytes, payload: bytes) -> None:
        t = type_byte
        if self.skipping and t != b"S":
            return
        if t == b"P":
            self.items.append(["parse", False, 0])
        elif t == b"B":
            self.items.append(["bind", False, 0])
        elif t == b"D":
            self.items.append(["describeS" if payload[:1] == b"S" else "describeP", False, 0])
        elif t == b"E":
            self.items.append(["execute", False, 0])
        elif t == b"C":
            self.items.append(["close", False, 0])
        elif t == b"S":
            self.items.append(["sync", False, 0])
            self.skipping = False
            self.mark_due()
        elif t in (b"Q", b"F"):
            self.items.append(["query", False, 0])
            self.mark_due()
        elif t == b"H":
            self.mark_due()

    def mark_due(self) -> None:
        for item in reversed(self.items):
            if item[1]:
                break
            item[1] = True

    def waiting(self) -> bool:
        return bool(self.items) and self.items[0][1]

    def received(self, t: bytes) -> str:
        """Advances over one backend message; returns "" or a description of a protocol surprise."""
        if t in (b"N", b"S", b"A", b"K"):
            return ""
        if not self.items:
            return f"unexpected {t!r} with nothing outstanding"
        front = self.items[0]
        kind = front[0]
        if kind == "query":
            if t == b"Z":
                self.items.popleft()
            return ""
        if t == b"E" and kind != "sync":
            # The server skips everything up to the next Sync (queries included).
            while self.items and self.items[0][0] != "sync":
                self.items.popleft()
            self.skipping = not self.items  # the Sync is not sent yet: what comes before it is ignored too
            return ""
        if t == b"E":
            return ""  # an error at Sync (a deferred commit failure): the ReadyForQuery follows
        expected = {"parse": b"1", "bind": b"2", "close": b"3", "sync": b"Z"}.get(kind)
        if expected is not None:
            if t == expected:
                self.items.popleft()
                return ""
            return self._desync(t)
        if kind == "describeS":
            if front[2] == 0 and t == b"t":
                front[2] = 1
                return ""
            if front[2] == 1 and t in (b"T", b"n"):
                self.items.popleft()
                return ""
            return self._desync(t)
        if kind == "describeP":
            if t in (b"T", b"n"):
                self.items.popleft()
                return ""
            return self._desync(t)
        if kind == "execute":
            if t in (b"D", b"H", b"d", b"c", b"G", b"W"):
                return ""
            if t in (b"C", b"I", b"s"):
                self.items.popleft()
                return ""
            return self._desync(t)
        return self._desync(t)

    def _desync(self, t: bytes) -> str:
        kind = self.items[0][0]
        # Resynchronise as well as possible: drop what this message cannot belong to.
        if t == b"Z":
            while self.items and self.items[0][0] not in ("sync", "query"):
                self.items.popleft()
            if self.items:
                self.items.popleft()
        else:
            self.items.popleft()
        return f"{t.decode(errors='replace')} while {kind} was owed"


def normalize(msg_type: bytes, payload: bytes, own_pid: int | None):
    """The comparable form of a backend message (None: not compared at all)."""
    if msg_type == b"K":
        return None
    if msg_type in (b"E", b"N"):
        fields = parse_error_fields(payload)
        return tuple(sorted((k, v) for k, v in fields.items() if k not in IGNORED_ERROR_FIELDS))
    if msg_type == b"A":
        pid = struct.unpack("!I", payload[:4])[0]
        return ("self" if pid == own_pid else "other", payload[4:])
    return payload


def describe_entry(kind: str, data) -> str:
    """A readable line for a recorded reply."""
    try:
        if kind in ("E", "N"):
            fields = dict(data)
            name = "ErrorResponse" if kind == "E" else "NoticeResponse"
            extra = "".join(f" {k}={v!r}" for k, v in fields.items() if k not in "SVCM")
            return f"{name} {fields.get('S', '?')} {fields.get('C', '?')}: {fields.get('M', '')}{extra}"
        if kind in ("params", "startup"):
            return f"{kind} " + ", ".join(f"{k}={v!r}" for k, v in data)
        if kind in ("TIMEOUT", "CLOSED", "DESYNC", "ERROR"):
            return f"<{kind}> {data}"
        if kind == "A":
            return f"Notification pid={data[0]} {data[1]!r}"
        payload: bytes = data
        if kind == "D":
            (count,) = struct.unpack("!H", payload[:2])
            pos, values = 2, []
            for _ in range(count):
                (length,) = struct.unpack("!i", payload[pos:pos + 4])
                pos += 4
                if length < 0:
                    values.append("NULL")
                else:
                    raw = payload[pos:pos + length]
                    pos += length
                    try:
                        text = raw.decode()
                        values.append(repr(text) if text.isprintable() else f"0x{raw.hex()}")
                    except UnicodeDecodeError:
                        values.append(f"0x{raw.hex()}")
            return "DataRow [" + ", ".join(values) + "]"
        if kind == "T":
            (count,) = struct.unpack("!H", payload[:2])
            pos, cols = 2, []
            for _ in range(count):
                end = payload.index(b"\0", pos)
                name = payload[pos:end].decode()
                table, attnum, type_oid, size, typmod, fmt = struct.unpack("!IhIhih", payload[end + 1:end + 19])
                pos = end + 19
                cols.append(f"{name}:{type_oid}{'/bin' if fmt else ''}{f'@{table}.{attnum}' if table else ''}")
            return "RowDescription [" + ", ".join(cols) + "]"
        if kind == "t":
            (count,) = struct.unpack("!H", payload[:2])
            return "ParameterDescription " + str(list(struct.unpack(f"!{count}I", payload[2:2 + 4 * count])))
        if kind == "C":
            tag = payload.rstrip(b"\0").decode()
            return f"CommandComplete {tag!r}"
        if kind == "Z":
            return f"ReadyForQuery {payload.decode()}"
        names = {"1": "ParseComplete", "2": "BindComplete", "3": "CloseComplete", "n": "NoData",
                 "s": "PortalSuspended", "I": "EmptyQueryResponse", "c": "CopyDone", "G": "CopyInResponse",
                 "H": "CopyOutResponse"}
        if kind in names:
            return names[kind] + (f" {payload.hex()}" if payload else "")
        if kind == "d":
            return f"CopyData {payload!r}"
        return f"{kind} {payload!r}"
    except Exception:  # noqa: BLE001 - a display helper must never hide the difference it displays
        return f"{kind} {data!r}"


class Client:
    """One client connection that runs a sequence and records the replies."""

    def __init__(self, host: str, port: int, user: str, password: str, database: str, params: dict,
                 reply_timeout: float, first_reply_timeout: float, async_notifications: bool = False):
        self.async_notifications = async_notifications
        self.addr = (host, port)
        self.login = (user, password, database, params)
        self.reply_timeout = reply_timeout
        self.first_reply_timeout = first_reply_timeout

    def run(self, steps: list[Step], sleeps: bool) -> Recording:
        session = Session(self)
        if session.open():
            for index, step in enumerate(steps + epilogue()):
                if not session.step(index, step, sleeps):
                    break
        return session.close()


class Session:
    """A Client's connection driven one step at a time (Client.run, or a scripted interleaving)."""

    def __init__(self, client: Client):
        self.client = client
        self.rec = Recording()
        self.conn: RawConnection | None = None
        self.pending = _Pending()
        self.own_pid: int | None = None
        self.reported: dict[str, str] = {}
        self.last_reported: dict[str, str] = {}
        self.first = True
        self.started = time.monotonic()
        self.notifications: list[bytes] = []  # async_notifications: channel and payload, in order
        self.listened = False
        self.last_step = -1

    def _fail(self, index: int, exc: Exception) -> None:
        # Recorded: a connection error is a reply like any other.
        self.rec.entries.append(Entry(index, "ERROR", f"{type(exc).__name__}: {exc}"))
        self.rec.aborted = self.rec.aborted or f"{type(exc).__name__}: {exc}"

    def open(self) -> bool:
        user, password, database, params = self.client.login
        try:
            self.conn = RawConnection(*self.client.addr, timeout=max(self.client.first_reply_timeout, 10.0))
            self.conn.startup(user, database, password, **params)
        except Exception as exc:  # noqa: BLE001
            self._fail(-1, exc)
            return False
        self.own_pid = self.conn.backend_key[0] if self.conn.backend_key else None
        self.reported = dict(self.conn.parameters)
        self.last_reported = dict(self.reported)
        self.rec.entries.append(Entry(-1, "startup", tuple(sorted(self.reported.items()))))
        return True

    def step(self, index: int, step: Step, sleeps: bool) -> bool:
        """Sends one step and reads what is due; False once the session cannot go on."""
        if self.rec.aborted or self.conn is None:
            return False
        try:
            return self._step(index, step, sleeps)
        except Exception as exc:  # noqa: BLE001
            self._fail(index, exc)
            return False

    def _step(self, index: int, step: Step, sleeps: bool) -> bool:
        rec, conn, pending = self.rec, self.conn, self.pending
        if not step.msgs:
            if sleeps and step.sleep:
                time.sleep(step.sleep)
            return True
        conn.send(b"".join(m.frame() for m in step.msgs))
        self.last_step = index
        for m in step.msgs:
            pending.sent(m.type, m.payload)
            if m.type in (b"Q", b"P") and b"LISTEN" in m.payload.upper():
                self.listened = True
        rec.sent += len(step.msgs)
        timeout = self.client.first_reply_timeout if self.first else self.client.reply_timeout
        self.first = False
        deadline = time.monotonic() + timeout
        while pending.waiting():
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                msg = conn.read_message(remaining)
            except TimeoutError:
                owed = [item[0] for item in pending.items if item[1]]
                rec.entries.append(Entry(index, "TIMEOUT", f"no reply within {timeout:.0f} s; owed {owed}"))
                rec.aborted = f"timeout at step {index}"
                return False
            if msg is None:
                rec.entries.append(Entry(index, "CLOSED", "the server closed the connection"))
                rec.aborted = f"closed at step {index}"
                return False
            msg_type, payload = msg
            surprise = pending.received(msg_type)
            if msg_type == b"A" and self.client.async_notifications:
                self.notifications.append(payload[4:])
                continue
            if msg_type == b"S":
                name, value = payload.split(b"\0")[:2]
                self.reported[name.decode()] = value.decode()
                continue
            data = normalize(msg_type, payload, self.own_pid)
            if data is not None:
                rec.entries.append(Entry(index, msg_type.decode(), data))
            if surprise:
                rec.entries.append(Entry(index, "DESYNC", surprise))
            if msg_type == b"Z" and self.reported != self.last_reported:
                changed = tuple(sorted((k, v) for k, v in self.reported.items() if self.last_reported.get(k) != v))
                rec.entries.append(Entry(index, "params", changed))
                self.last_reported = dict(self.reported)
            if msg_type == b"E" and parse_error_fields(payload).get("S") in ("FATAL", "PANIC"):
                rec.aborted = f"FATAL at step {index}"
                return False
        return True

    def _late_notifications(self) -> None:
        """async_notifications: those still on their way after the last step, then the entry."""
        if self.conn is not None and not self.rec.aborted and self.listened:
            deadline = time.monotonic() + 0.3
            with contextlib.suppress(Exception):
                while (remaining := deadline - time.monotonic()) > 0:
                    msg = self.conn.read_message(remaining)
                    if msg is None:
                        break
                    if msg[0] == b"A":
                        self.notifications.append(msg[1][4:])
        self.rec.entries.append(Entry(self.last_step, "notifications", tuple(self.notifications)))

    def close(self) -> Recording:
        if self.client.async_notifications:
            self._late_notifications()
        if self.conn is not None:
            if not self.rec.aborted:
                with contextlib.suppress(OSError):
                    self.conn.send(message(b"X"))
            self.conn.close()
        self.rec.seconds = time.monotonic() - self.started
        return self.rec


def first_difference(direct: Recording, proxied: Recording) -> int | None:
    """The index of the first entry that differs (or where one stream ends early), None if equal."""
    a, b = direct.entries, proxied.entries
    for i in range(min(len(a), len(b))):
        if a[i].key() != b[i].key():
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None


def signature(direct: Recording, proxied: Recording) -> tuple | None:
    """What kind of difference the first one is (message types and SQLSTATEs on both sides, not the
    step or the values), so that shrinking keeps the same difference rather than any difference."""
    index = first_difference(direct, proxied)
    if index is None:
        return None

    def kind(rec: Recording):
        if index >= len(rec.entries):
            return ("END",)
        e = rec.entries[index]
        if e.kind in ("E", "N"):
            return (e.kind, dict(e.data).get("C"))
        if e.kind in ("params", "startup"):
            return (e.kind, tuple(k for k, _ in e.data))
        return (e.kind,)

    return kind(direct), kind(proxied)


def show_difference(direct: Recording, proxied: Recording, index: int, steps: list[Step], context: int = 4) -> str:
    """The first differing reply with the replies around it on both sides, and the steps they answer."""
    lines = []
    lo = max(0, index - context)
    for title, rec in (("direct to Postgres (expected)", direct), ("through pgsluice (actual)", proxied)):
        lines.append(f"  {title}:")
        for i in range(lo, min(len(rec.entries), index + context + 1)):
            marker = ">>" if i == index else "  "
            lines.append(f"   {marker} #{i} {rec.entries[i].show()}")
        if index >= len(rec.entries):
            lines.append(f"   >> #{index} <no more replies>")
    all_steps = steps + epilogue()
    numbers = {rec.entries[index].step for rec in (direct, proxied) if index < len(rec.entries)}
    shown = sorted({s for n in numbers for s in range(n - 2, n + 1) if 0 <= s < len(all_steps)})
    lines += [f"  step {s}: {all_steps[s].describe()}" for s in shown]
    return "\n".join(lines)
