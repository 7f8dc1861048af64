"""Bad input from clients (DESIGN §8): each case gets 08P01 (or is closed) and no other client
notices. Raw sockets produce what no driver would send; a psycopg2 session opened before the
module starts ("the bystander") must keep working after every case, and so must new clients."""
from __future__ import annotations

import random
import socket
import struct
import time
from contextlib import closing

import psycopg2
import pytest

import pgharness
from conftest import TARGET, make_config, small_quarantine_env, start_pgsluice, stop_pgsluice

MAX_MESSAGE_SIZE = 1024 * 1024  # small, so that "over the limit" is cheap to claim


def pgsluice_config(config, pg):
    config["max_message_size"] = "1MB"
    # Longer than any rejection below may take, so a rejection is never the login timeout firing.
    config["client_login_timeout"] = "5s"


def connect(target, name="app"):
    conn = psycopg2.connect(target.dsn(name, connect_timeout=10))
    conn.autocommit = True
    return conn


def scalar(conn, query):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


@pytest.fixture(scope="module")
def bystander(target):
    conn = connect(target)
    pid = scalar(conn, "select pg_backend_pid()")
    yield conn, pid
    conn.close()


@pytest.fixture(autouse=True)
def nobody_else_notices(target, bystander):
    """After each case: pgsluice runs, the bystander's session works on, a new client gets in."""
    yield
    conn, pid = bystander
    assert scalar(conn, "select 'bystander ok'") == "bystander ok"
    if target.mode == "session":
        assert scalar(conn, "select pg_backend_pid()") == pid
    if target.proxy is not None:
        assert target.proxy.alive(), "pgsluice died; log tail:\n" + target.log_text()[-3000:]
    with closing(connect(target)) as fresh:
        assert scalar(fresh, "select 1") == 1


def assert_rejected(raw: pgharness.RawConnection, within: float = 3.0) -> None:
    """The server answers 08P01 and closes, or just closes, and does so within `within` seconds."""
    started = time.monotonic()
    fields = raw.expect_rejected(within + 2)
    elapsed = time.monotonic() - started
    assert fields is None or fields.get("C") == "08P01", fields
    assert elapsed < within, f"closed only after {elapsed:.2f} s"


def logged_in(target) -> pgharness.RawConnection:
    login = target.login("trust")
    raw = target.raw()
    raw.startup(login.user, login.database, login.password)
    return raw


# -- during startup ------------------------------------------------------------------------------

def test_startup_packet_over_10000_bytes_is_rejected(target):
    login = target.login("trust")
    packet = pgharness.startup_packet({"user": login.user, "database": login.database,
                                       "application_name": "a" * 10100})
    assert len(packet) > 10000
    with closing(target.raw()) as raw:
        raw.send(packet)
        assert_rejected(raw)


def test_startup_length_claiming_more_than_10000_bytes_is_rejected_before_reading_it(target):
    with closing(target.raw()) as raw:
        # Postgres's limit is 10000 bytes after the length word; 10100 is over it either way.
        raw.send(struct.pack("!I", 10_100) + struct.pack("!I", pgharness.PROTOCOL_3_0))
        assert_rejected(raw)
    with closing(target.raw()) as raw:
        raw.send(struct.pack("!I", 0x7FFFFFFF) + struct.pack("!I", pgharness.PROTOCOL_3_0))
        assert_rejected(raw)


@pytest.mark.parametrize("length", [0, 3, 7])
def test_startup_length_below_minimum_is_rejected(target, length):
    with closing(target.raw()) as raw:
        raw.send(struct.pack("!I", length) + b"\0" * 8)
        assert_rejected(raw)


def test_cancel_request_of_wrong_length_is_dropped(target):
    with closing(target.raw()) as raw:
        raw.send(struct.pack("!III", 12, pgharness.CANCEL_REQUEST_CODE, 1234))
        assert_rejected(raw)


def test_startup_parameters_without_terminator_are_rejected(target):
    body = struct.pack("!I", pgharness.PROTOCOL_3_0) + b"user\0trusty\0database\0app"  # no final NULs
    with closing(target.raw()) as raw:
        raw.send(struct.pack("!I", len(body) + 4) + body)
        assert_rejected(raw)


def test_unsupported_protocol_version_is_rejected(target):
    login = target.login("trust")
    with closing(target.raw()) as raw:
        raw.send(pgharness.startup_packet({"user": login.user, "database": login.database}, protocol=4 << 16))
        fields = raw.expect_rejected(5)
        assert fields is None or fields.get("C") in ("0A000", "08P01"), fields


def test_garbage_instead_of_startup_is_rejected(target):
    noise = random.Random(42).randbytes(65536)
    with closing(target.raw()) as raw:
        try:
            raw.send(noise)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed while we were still sending: rejected
        assert_rejected(raw)


def test_ssl_request_is_answered_n_and_startup_continues(target):
    login = target.login("trust")
    with closing(target.raw()) as raw:
        raw.send(struct.pack("!II", 8, pgharness.SSL_REQUEST_CODE))
        assert raw.read_byte() == b"N"
        raw.startup(login.user, login.database, login.password)
        assert pgharness.rows_of(raw.query("select 'after ssl request'")) == [["after ssl request"]]


@pytest.mark.proxy_only
def test_gssenc_request_is_answered_n_and_startup_continues(target):
    login = target.login("trust")
    with closing(target.raw()) as raw:
        raw.send(struct.pack("!II", 8, pgharness.GSSENC_REQUEST_CODE))
        assert raw.read_byte() == b"N"
        raw.startup(login.user, login.database, login.password)
        assert pgharness.rows_of(raw.query("select 'after gssenc request'")) == [["after gssenc request"]]


# -- after login --------------------------------------------------------------------------------

@pytest.mark.parametrize("type_byte", [b"z", b"\x00", b"\xff"])
def test_unknown_message_type_after_login_is_rejected(target, type_byte):
    with closing(logged_in(target)) as raw:
        raw.send(pgharness.message(type_byte, b"abc"))
        assert_rejected(raw)


@pytest.mark.parametrize("length", [0, 3])
def test_message_length_below_4_after_login_is_rejected(target, length):
    with closing(logged_in(target)) as raw:
        raw.send(b"Q" + struct.pack("!I", length) + b"select 1\0")
        assert_rejected(raw)


@pytest.mark.proxy_only
def test_message_over_max_message_size_is_rejected_without_reading_it(target):
    with closing(logged_in(target)) as raw:
        # Claims 2 MiB against a 1 MiB limit, and sends only a little of it.
        raw.send(b"Q" + struct.pack("!I", 2 * MAX_MESSAGE_SIZE + 4) + b"select '" + b"x" * 1000)
        assert_rejected(raw)


@pytest.mark.proxy_only
def test_message_just_under_max_message_size_is_fine(target):
    literal = "x" * (MAX_MESSAGE_SIZE - 100)
    with closing(logged_in(target)) as raw:
        messages = raw.query(f"select length('{literal}')")
        assert pgharness.errors_of(messages) == []
        assert pgharness.rows_of(messages) == [[str(len(literal))]]


def test_client_vanishing_mid_message_leaves_others_alone(target):
    for _ in range(20):
        raw = logged_in(target)
        raw.send(b"Q" + struct.pack("!I", 1000) + b"select 1")  # promises 1000 bytes, sends 8
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        raw.close()


def test_clients_resetting_during_startup_leave_others_alone(target):
    for i in range(50):
        sock = socket.create_connection((target.host, target.port), timeout=5)
        if i % 2:
            sock.sendall(struct.pack("!I", 40))  # half a startup packet
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def test_empty_query_gets_empty_query_response(target):
    with closing(logged_in(target)) as raw:
        messages = raw.query("")
        assert [t for t, _ in messages] == [b"I", b"Z"]


# -- login timeout ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_login_timeout(pg):
    """A pgsluice of its own with client_login_timeout 1s."""
    if TARGET == "direct":
        pytest.skip("pgsluice's client_login_timeout")
    config = make_config(pg)
    config["client_login_timeout"] = "1s"
    target = start_pgsluice(pg, config)
    try:
        yield target
    finally:
        stop_pgsluice(target)


def closed_after(raw: pgharness.RawConnection, started: float) -> float:
    fields = raw.expect_rejected(10)
    assert fields is None or fields.get("C") in ("08P01", "57P05", "08006"), fields
    return time.monotonic() - started


def test_silent_client_is_closed_after_login_timeout(short_login_timeout):
    started = time.monotonic()
    with closing(short_login_timeout.raw()) as raw:
        elapsed = closed_after(raw, started)
    assert 1.0 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s"


def test_client_stalling_inside_the_startup_packet_is_closed_after_login_timeout(short_login_timeout):
    started = time.monotonic()
    with closing(short_login_timeout.raw()) as raw:
        raw.send(struct.pack("!I", 40) + struct.pack("!I", pgharness.PROTOCOL_3_0))
        elapsed = closed_after(raw, started)
    assert 1.0 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s"


def test_client_stalling_in_authentication_is_closed_after_login_timeout(short_login_timeout):
    login = short_login_timeout.login("app")
    started = time.monotonic()
    with closing(short_login_timeout.raw()) as raw:
        raw.send(pgharness.startup_packet({"user": login.user, "database": login.database}))
        msg_type, payload = raw.read_message()
        assert msg_type == b"R" and struct.unpack("!I", payload[:4])[0] == 10  # SASL; we never answer
        elapsed = closed_after(raw, started)
    assert 1.0 <= elapsed <= 3.0, f"closed after {elapsed:.2f} s"


def test_logged_in_idle_client_is_not_closed_by_login_timeout(short_login_timeout):
    with closing(connect(short_login_timeout)) as conn:
        time.sleep(2.0)
        assert scalar(conn, "select 'still connected'") == "still connected"


# -- a client that does not read ------------------------------------------------------------------

rss_kib = pgharness.rss_kib


@pytest.fixture(scope="module")
def unquarantined(pg):
    """A pgsluice of its own in transaction mode whose RSS tells what it holds: ASan's quarantine
    (freed memory kept for a while, 256 MB by default) is made small."""
    if TARGET == "direct":
        pytest.skip("pgsluice's own buffering")
    config = make_config(pg)
    for service in config["services"].values():
        service["mode"] = "transaction"
    target = start_pgsluice(pg, config, env=small_quarantine_env())
    try:
        yield target
    finally:
        stop_pgsluice(target)


@pytest.mark.proxy_only
@pytest.mark.parametrize("statement", ["SET search_path = public", "SELECT 1"])
def test_a_client_that_pipelines_and_never_reads_is_not_read_either(unquarantined, statement):
    """A client that sends statement after statement and reads none of the replies: pgsluice stops
    reading it once what it owes that client is not being read, or once 4096 of its statements are
    in flight (as a backend blocked on its output reads no input), so its memory stays bounded.
    The SET is one pgsluice answers itself once the server confirmed it (no server connection whose
    back-pressure would stop the client); SELECT 1 goes to the server. Before the bound, the SET
    flood grew pgsluice by about 200 MB in 8 seconds (release build)."""
    target = unquarantined
    pid = target.proxy.proc.pid
    login = target.login("app")
    with closing(target.raw()) as raw:
        raw.startup(login.user, login.database, login.password)
        raw.query(statement)  # the server confirms it: from now on pgsluice may answer it alone
        before = rss_kib(pid)
        query = pgharness.message(b"Q", statement.encode() + b"\0")
        chunk = query * (65536 // len(query))
        raw.sock.setblocking(False)
        sent = 0
        pending = memoryview(chunk)
        started = last_progress = time.monotonic()
        while time.monotonic() - started < 8 and time.monotonic() - last_progress < 1.5:
            try:
                n = raw.sock.send(pending)  # a partial send leaves the rest of the chunk for the next
                if n:
                    sent += n
                    pending = pending[n:] if n < len(pending) else memoryview(chunk)
                    last_progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
            except ConnectionResetError:
                raise AssertionError("pgsluice closed the client; log tail:\n" + target.log_text()[-3000:])
        grown = rss_kib(pid) - before
        assert grown < 64 * 1024, f"pgsluice's RSS grew by {grown} KiB for a client that reads nothing ({sent} bytes taken)"
    # Another client is served meanwhile and after.
    with closing(connect(target)) as other:
        assert scalar(other, "select 'served'") == "served"


# -- cancel keys, the client limit, malformed SCRAM over the wire -----------------------------------

def test_a_cancel_request_with_a_wrong_key_gets_no_answer_at_all(target):
    """Nothing comes back for a wrong key (no error, no byte): the connection is just closed."""
    with closing(target.raw()) as raw:
        raw.send(pgharness.cancel_packet(random.getrandbits(31), random.getrandbits(32)))
        assert raw.read_until_closed(5) == []
        assert raw.buffer == b""


@pytest.fixture(scope="module")
def two_clients_max(pg):
    if TARGET == "direct":
        pytest.skip("pgsluice's max_client_connections")
    config = make_config(pg)
    config["max_client_connections"] = 2
    target = start_pgsluice(pg, config)
    try:
        yield target
    finally:
        stop_pgsluice(target)


def test_past_max_client_connections_the_next_client_gets_53300_and_the_others_go_on(two_clients_max):
    target = two_clients_max
    first, second = connect(target), connect(target)
    try:
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(target.dsn("app", connect_timeout=10))
        assert "too many client connections (max_client_connections 2)" in str(refused.value)
        assert scalar(first, "select 'first'") == "first" and scalar(second, "select 'second'") == "second"
    finally:
        second.close()
    # A place is free again once pgsluice has read the Terminate that close() sent, which it does
    # on its own event loop after close() has returned: the next client may race it, so retry.
    deadline = time.monotonic() + 5
    while True:
        try:
            third = connect(target)
            break
        except psycopg2.OperationalError as e:
            assert "max_client_connections" in str(e) and time.monotonic() < deadline, str(e)
            time.sleep(0.05)
    with closing(third):
        assert scalar(third, "select 'third'") == "third"
    first.close()


@pytest.mark.proxy_only
@pytest.mark.parametrize("client_first", [
    b"",                                   # nothing at all
    b"x,,n=,r=abc",                        # an unknown GS2 flag (y is valid: no -PLUS offered)
    b"n,,n=,r=",                           # an empty nonce
    b"n,,r=abc",                           # no user name attribute
    b"p=tls-server-end-point,,n=,r=abc",  # channel binding never offered
    b"n,,n=," + b"r=" + b"\xff" * 64,     # not UTF-8 / not printable
    b"n,,n=,r=" + b"a" * 70000,           # longer than any SASL message Postgres accepts
])
def test_malformed_scram_client_first_gets_an_error_and_nothing_else_is_harmed(target, client_first):
    login = target.login("app")
    with closing(target.raw()) as raw:
        raw.send(pgharness.startup_packet({"user": login.user, "database": login.database}))
        msg_type, payload = raw.read_message()
        assert msg_type == b"R" and struct.unpack("!I", payload[:4])[0] == 10
        raw.send(pgharness.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(client_first)) + client_first))
        fields = raw.expect_rejected()
        assert fields is not None and fields.get("C") in ("08P01", "28P01", "28000"), fields


@pytest.mark.proxy_only
@pytest.mark.parametrize("client_final", [b"", b"c=biws", b"c=biws,r=wrong-nonce,p=AAAA", b"garbage\x00\xff"])
def test_malformed_scram_client_final_gets_an_error(target, client_final):
    login = target.login("app")
    with closing(target.raw()) as raw:
        raw.send(pgharness.startup_packet({"user": login.user, "database": login.database}))
        assert raw.read_message()[0] == b"R"
        first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL"
        raw.send(pgharness.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        msg_type, payload = raw.read_message()
        assert msg_type == b"R" and struct.unpack("!I", payload[:4])[0] == 11  # SASLContinue
        raw.send(pgharness.message(b"p", client_final))
        fields = raw.expect_rejected()
        assert fields is not None and fields.get("C") in ("08P01", "28P01"), fields


@pytest.mark.proxy_only  # Postgres answers these with an 08P01 ERROR and keeps the connection
@pytest.mark.parametrize("bind_payload", [
    b"\0\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", 400) + b"abc" + struct.pack("!h", 0),  # length past the end
    b"\0\0" + struct.pack("!hhhh", 2, 0, 0, 1) + struct.pack("!i", 1) + b"1" + struct.pack("!h", 0),  # 2 formats, 1 value
    b"\0\0" + struct.pack("!hh", 0, 0) + struct.pack("!h", 0) + b"trailing",  # bytes after the result codes
    b"\0\0" + struct.pack("!h", -1),  # a negative count
])
def test_a_bind_whose_counts_disagree_with_its_bytes_gets_08p01_and_is_closed(target, bind_payload):
    login = target.login("app")
    with closing(target.raw()) as raw:
        raw.startup(login.user, login.database, login.password)
        raw.send(pgharness.message(b"P", b"\0SELECT $1::text\0\0\0") + pgharness.message(b"B", bind_payload) +
                 pgharness.message(b"E", b"\0\0\0\0\0") + pgharness.message(b"S"))
        messages = raw.read_until_closed(10)
        errors = [pgharness.parse_error_fields(p) for t, p in messages if t == b"E"]
        assert errors and errors[-1].get("C") == "08P01", messages
