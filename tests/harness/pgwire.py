"""A minimal Postgres v3 frontend over a raw socket, for what no driver can produce (bad input)
or show exactly (which authentication requests came, the raw ErrorResponse fields).

    with RawConnection("127.0.0.1", port) as conn:
        conn.startup("app", "app", "secret-app")       # SCRAM-SHA-256, MD5, cleartext or trust
        rows_of(conn.query("select 1"))                # [['1']]
        conn.send(message(b"z", b"junk"))
        conn.expect_rejected()                         # the ErrorResponse fields, or None if just closed

Python 3 standard library only.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import socket
import struct
import time


PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class PgError(Exception):
    """An ErrorResponse: fields by their one-letter code (C = SQLSTATE, M = message, S = severity)."""

    def __init__(self, fields: dict):
        self.fields = fields
        super().__init__(f"{fields.get('S', '?')} {fields.get('C', '?')}: {fields.get('M', '')}")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")


def parse_error_fields(payload: bytes) -> dict:
    """The fields of an ErrorResponse/NoticeResponse body: {code letter: value}."""
    fields = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        code = chr(payload[pos])
        end = payload.index(b"\0", pos + 1)
        fields[code] = payload[pos + 1:end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def message(type_byte: bytes, payload: bytes = b"") -> bytes:
    return type_byte + struct.pack("!I", len(payload) + 4) + payload


def startup_packet(params: dict, protocol: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", protocol)
    for key, value in params.items():
        body += key.encode() + b"\0" + str(value).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def cancel_packet(pid: int, key: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, pid, key)


def send_cancel(host: str, port: int, pid: int, key: int) -> None:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(cancel_packet(pid, key))
        s.settimeout(5)
        with contextlib.suppress(OSError):
            s.recv(1)  # the server closes without answering


class RawConnection:
    """A socket speaking the v3 protocol one message at a time."""

    def __init__(self, host: str, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""
        self.parameters: dict[str, str] = {}
        self.backend_key: tuple[int, int] | None = None
        self.auth_requests: list[int] = []  # the Authentication* codes the server sent, in order
        self.sasl_mechanisms: list[str] = []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False on EOF (or a reset, which is also the peer closing)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time") from None
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_byte(self, timeout: float | None = None) -> bytes | None:
        """One byte (the answer to SSLRequest/GSSENCRequest), None on EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.buffer:
            if not self._fill(deadline):
                return None
        byte, self.buffer = self.buffer[:1], self.buffer[1:]
        return byte

    def read_message(self, timeout: float | None = None) -> tuple[bytes, bytes] | None:
        """(type byte, payload) or None when the server closed the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buffer) >= 5:
                (length,) = struct.unpack("!I", self.buffer[1:5])
                if length < 4:
                    raise ValueError(f"server sent a message length {length}")
                if len(self.buffer) >= 1 + length:
                    msg_type, payload = self.buffer[:1], self.buffer[5:1 + length]
                    self.buffer = self.buffer[1 + length:]
                    return msg_type, payload
            if not self._fill(deadline):
                if self.buffer:
                    raise ValueError(f"connection closed inside a message: {self.buffer[:32]!r}")
                return None

    def read_until_closed(self, timeout: float | None = None) -> list[tuple[bytes, bytes]]:
        """Every message up to the server closing the connection (TimeoutError if it does not)."""
        messages = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()) or 0.001)
            if msg is None:
                return messages
            messages.append(msg)

    def read_until_ready(self, timeout: float | None = None) -> list[tuple[bytes, bytes]]:
        """Messages up to and including ReadyForQuery (ErrorResponses among them are returned too)."""
        messages = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.read_message(max(0.001, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError(f"server closed the connection after {messages!r}")
            messages.append(msg)
            if msg[0] == b"Z":
                return messages

    def startup(self, user: str, database: str, password: str | None = None, *,
                sasl: tuple[str, str, bytes] = ("SCRAM-SHA-256", "n,,", b""), **params) -> None:
        """StartupMessage and authentication up to ReadyForQuery. Raises PgError on an ErrorResponse,
        ConnectionError if the server closes the connection without one. `sasl`: the mechanism a
        SCRAM login selects, its gs2 header and channel binding data."""
        self.send(startup_packet({"user": user, "database": database, **params}))
        self.authenticate(user, password, sasl)

    def authenticate(self, user: str, password: str | None,
                     sasl: tuple[str, str, bytes] = ("SCRAM-SHA-256", "n,,", b"")) -> None:
        scram = None
        while True:
            msg = self.read_message()
            if msg is None:
                raise ConnectionError("server closed the connection during startup")
            msg_type, payload = msg
            if msg_type == b"E":
                raise PgError(parse_error_fields(payload))
            if msg_type == b"R":
                (code,) = struct.unpack("!I", payload[:4])
                self.auth_requests.append(code)
                if code == 0:  # AuthenticationOk
                    continue
                if password is None:
                    raise ValueError(f"server asked for a password (request {code}) and we have none")
                if code == 3:  # cleartext
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == 5:  # MD5, salt follows
                    self.send(message(b"p", md5_password(user, password, payload[4:8]).encode() + b"\0"))
                elif code == 10:  # SASL: mechanism names follow
                    self.sasl_mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
                    mechanism, gs2_header, cbind_data = sasl
                    if mechanism not in self.sasl_mechanisms:
                        raise ValueError(f"no {mechanism} among {self.sasl_mechanisms}")
                    scram = ScramClient(password, gs2_header, cbind_data)
                    first = scram.client_first().encode()
                    self.send(message(b"p", mechanism.encode() + b"\0" + struct.pack("!i", len(first)) + first))
                elif code == 11:  # SASLContinue
                    self.send(message(b"p", scram.client_final(payload[4:].decode()).encode()))
                elif code == 12:  # SASLFinal
                    scram.verify_server_final(payload[4:].decode())
                else:
                    raise ValueError(f"unsupported authentication request {code}")
            elif msg_type == b"S":
                key, value = payload.split(b"\0")[:2]
                self.parameters[key.decode()] = value.decode()
            elif msg_type == b"K":
                self.backend_key = struct.unpack("!II", payload[:8])
            elif msg_type == b"Z":
                return
            # NoticeResponse (N) and NegotiateProtocolVersion (v) are fine to skip here.

    def query(self, sql: str, timeout: float | None = None) -> list[tuple[bytes, bytes]]:
        """A simple Query; its messages up to ReadyForQuery."""
        self.send(message(b"Q", sql.encode() + b"\0"))
        return self.read_until_ready(timeout)

    def expect_rejected(self, timeout: float = 10.0) -> dict | None:
        """After bad input: the ErrorResponse fields the server sent before closing the connection
        (None if it closed without one). Raises AssertionError if it keeps the connection open or
        answers with something else than an ErrorResponse."""
        try:
            messages = self.read_until_closed(timeout)
        except TimeoutError:
            raise AssertionError(f"server did not close the connection within {timeout} s") from None
        errors = [parse_error_fields(p) for t, p in messages if t == b"E"]
        others = [t for t, _ in messages if t not in (b"E", b"N")]
        assert not others, f"unexpected messages before close: {messages!r}"
        return errors[-1] if errors else None


def rows_of(messages: list[tuple[bytes, bytes]]) -> list[list[str | None]]:
    """The DataRow values (text format) among messages."""
    rows = []
    for msg_type, payload in messages:
        if msg_type != b"D":
            continue
        (count,) = struct.unpack("!H", payload[:2])
        pos, row = 2, []
        for _ in range(count):
            (length,) = struct.unpack("!i", payload[pos:pos + 4])
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(payload[pos:pos + length].decode())
                pos += length
        rows.append(row)
    return rows


def errors_of(messages: list[tuple[bytes, bytes]]) -> list[dict]:
    return [parse_error_fields(p) for t, p in messages if t == b"E"]


def md5_password(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


class ScramClient:
    """SCRAM-SHA-256 client side (RFC 5802/7677) as libpq does it, empty n=: without channel binding
    ("n,,"), or with the gs2 header and channel binding data given (SCRAM-SHA-256-PLUS:
    "p=tls-server-end-point,," and the hash of the server's certificate)."""

    def __init__(self, password: str, gs2_header: str = "n,,", cbind_data: bytes = b""):
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.gs2_header, self.cbind_data = gs2_header, cbind_data
        self.auth_message = b""
        self.salted = b""

    def client_first(self) -> str:
        return self.gs2_header + self.first_bare

    def salted_password(self, salt: str, iterations: int) -> bytes:
        """PBKDF2 of the password (a subclass may remember it: bench/storm.py)."""
        return hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(salt), iterations)

    def client_final(self, server_first: str) -> str:
        attrs = dict(item.split("=", 1) for item in server_first.split(","))
        if not attrs["r"].startswith(self.nonce):
            raise ValueError("server nonce does not extend ours")
        self.salted = self.salted_password(attrs["s"], int(attrs["i"]))
        client_key = hmac.new(self.salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        binding = base64.b64encode(self.gs2_header.encode() + self.cbind_data).decode()
        without_proof = f"c={binding},r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, self.auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final: str) -> None:
        server_key = hmac.new(self.salted, b"Server Key", hashlib.sha256).digest()
        expected = hmac.new(server_key, self.auth_message, hashlib.sha256).digest()
        if server_final != "v=" + base64.b64encode(expected).decode():
            raise ValueError(f"bad server signature: {server_final}")
