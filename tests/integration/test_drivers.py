"""libpq drivers through pgsluice: psycopg2 (simple protocol) and psycopg 3 (extended protocol,
prepared statements, pipelines): errors with every field, notices, LISTEN/NOTIFY, large results,
COPY errors, large objects (the FunctionCall message).

With PGSLUICE_TEST_TLS=1 (conftest.py) every connection to pgsluice here is over TLS, and a plain one
is refused: test_the_tls_pass_connects_over_tls_and_refuses_plain_text proves both."""
from __future__ import annotations

import decimal
import hashlib
import io
import select
import time
from contextlib import closing

import psycopg
import psycopg2
import psycopg2.errors
import pytest

from conftest import POOL_MODE, TLS


def connect(target, name="app", **kwargs):
    """An autocommit psycopg2 connection. Use `with closing(connect(...))`: psycopg2's own `with`
    opens a transaction even in autocommit and does not close the connection."""
    conn = psycopg2.connect(target.dsn(name, connect_timeout=10), **kwargs)
    conn.autocommit = True
    return conn


def one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone() if cur.description else None


def test_error_relayed_with_sqlstate_and_connection_stays_usable(target):
    with closing(connect(target)) as conn:
        with pytest.raises(psycopg2.errors.DivisionByZero) as err:
            one(conn, "select 1/0")
        assert err.value.pgcode == "22012"
        assert err.value.diag.message_primary == "division by zero"
        assert err.value.diag.severity == "ERROR"
        assert one(conn, "select 'still here'") == ("still here",)


def test_error_fields_detail_hint_and_custom_code_are_relayed(target):
    with closing(connect(target)) as conn:
        with pytest.raises(psycopg2.Error) as err:
            one(conn, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'P0042', MESSAGE = 'custom failure', "
                      "DETAIL = 'the detail', HINT = 'the hint'; END $$")
        diag = err.value.diag
        assert (err.value.pgcode, diag.message_primary, diag.message_detail, diag.message_hint) == \
            ("P0042", "custom failure", "the detail", "the hint")


def test_failed_transaction_reports_25p02_until_rollback(target):
    conn = connect(target)
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.UndefinedTable):
                cur.execute("select * from no_such_table_drivers")
            with pytest.raises(psycopg2.errors.InFailedSqlTransaction) as err:
                cur.execute("select 1")
            assert err.value.pgcode == "25P02"
        conn.rollback()
        assert one(conn, "select 2") == (2,)
        conn.commit()
    finally:
        conn.close()


def test_raise_notice_reaches_the_client(target):
    with closing(connect(target)) as conn:
        one(conn, "DO $$ BEGIN RAISE NOTICE 'notice number %', 7; RAISE WARNING 'a warning'; END $$; select 1")
        assert conn.notices == ["NOTICE:  notice number 7\n", "WARNING:  a warning\n"]


def test_listen_notify_between_two_sessions(target):
    # In the pooled modes the LISTEN is served by pgsluice's listener connection (DESIGN §2); the
    # notifier's statements may run on different server connections, so its pid is checked only
    # where it has one of its own.
    listener, notifier = connect(target), connect(target)
    try:
        one(listener, "LISTEN pgsluice_channel")
        notifier_pid = one(notifier, "select pg_backend_pid()")[0]
        one(notifier, "select pg_notify('pgsluice_channel', 'payload-1')")
        one(notifier, "NOTIFY pgsluice_channel, 'payload-2'")
        received = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            if select.select([listener], [], [], 0.5)[0]:
                listener.poll()
                while listener.notifies:
                    received.append(listener.notifies.pop(0))
        assert [(n.channel, n.payload) for n in received] == [
            ("pgsluice_channel", "payload-1"),
            ("pgsluice_channel", "payload-2"),
        ]
        if POOL_MODE == "session":
            assert [n.pid for n in received] == [notifier_pid, notifier_pid]
        if POOL_MODE == "statement":
            return  # no transaction blocks there
        # A notification sent inside a transaction arrives only after COMMIT.
        notifier.autocommit = False
        with notifier.cursor() as cur:
            cur.execute("NOTIFY pgsluice_channel, 'in-tx'")
            assert not select.select([listener], [], [], 0.5)[0]
        notifier.commit()
        assert select.select([listener], [], [], 5)[0]
        listener.poll()
        assert [n.payload for n in listener.notifies] == ["in-tx"]
    finally:
        listener.close()
        notifier.close()


def rows_digest(conn, query):
    digest, count = hashlib.sha256(), 0
    with conn.cursor(name=None) as cur:
        cur.execute(query)
        for row in cur:
            digest.update(repr(row).encode())
            count += 1
    return count, digest.hexdigest()


def test_large_result_is_identical_to_direct(target, pg):
    query = "select g, md5(g::text), repeat('x', g % 100) from generate_series(1, 300000) g"
    with closing(connect(target)) as conn:
        through = rows_digest(conn, query)
    direct_conn = psycopg2.connect(pg.dsn("app", "secret-app", "app"))
    try:
        direct = rows_digest(direct_conn, query)
    finally:
        direct_conn.close()
    assert through[0] == 300000
    assert through == direct


def test_wide_row_of_8mb_round_trips(target):
    with closing(connect(target)) as conn:
        value = one(conn, "select repeat('abcdefgh', 1024 * 1024)")[0]
        assert len(value) == 8 * 1024 * 1024 and value[:16] == "abcdefghabcdefgh"
        payload = "z" * (4 * 1024 * 1024)
        assert one(conn, "select length(%s), md5(%s)", (payload, payload)) == \
            (len(payload), hashlib.md5(payload.encode()).hexdigest())


def test_copy_from_stdin_with_bad_row_fails_with_22p02_and_connection_stays_usable(target, pg):
    pg.sql("CREATE TABLE IF NOT EXISTS copy_drivers(id int, v text)", user="app", db="app")
    with closing(connect(target)) as conn:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.errors.InvalidTextRepresentation) as err:
                cur.copy_expert("COPY copy_drivers FROM STDIN", io.StringIO("1\ta\nbad\tb\n"))
            assert err.value.pgcode == "22P02"
            cur.copy_expert("COPY copy_drivers FROM STDIN", io.StringIO("1\ta\n2\tb\n"))
            out = io.StringIO()
            cur.copy_expert("COPY (select * from copy_drivers order by id) TO STDOUT", out)
            assert out.getvalue() == "1\ta\n2\tb\n"


def test_large_object_round_trip_uses_function_call(target):
    # libpq's lo_* functions use the FunctionCall ('F') message.
    data = bytes(range(256)) * 4096
    conn = connect(target)
    conn.autocommit = False
    try:
        lob = conn.lobject(0, "wb")
        oid = lob.oid
        assert lob.write(data) == len(data)
        lob.close()
        conn.commit()
        lob = conn.lobject(oid, "rb")
        assert lob.read() == data
        lob.close()
        lob.unlink()
        conn.commit()
    finally:
        conn.close()


# -- psycopg 3: the extended query protocol -------------------------------------------------------

def connect3(target, **kwargs):
    return psycopg.connect(target.dsn("app", connect_timeout=10), autocommit=True, **kwargs)


def test_extended_protocol_parameters_text_and_binary(target):
    with connect3(target) as conn:
        assert conn.execute("select %s::int + 1, %s::text, %s::numeric * 2", [41, "é€", "1.25"]).fetchone() == \
            (42, "é€", decimal.Decimal("2.50"))
        cur = conn.cursor(binary=True)
        assert cur.execute("select %s::bigint, %s::bytea, %s::float8", [2**40, b"\x00\x01\xff", 0.5]).fetchone() == \
            (2**40, b"\x00\x01\xff", 0.5)
        assert conn.execute("select %s::int[]", [[1, None, 3]]).fetchone() == ([1, None, 3],)


def test_extended_protocol_error_keeps_connection_usable(target):
    with connect3(target) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero) as err:
            conn.execute("select 1 / %s::int", [0])
        assert err.value.sqlstate == "22012"
        assert conn.execute("select %s::int", [5]).fetchone() == (5,)


def test_prepared_statements_reused_many_times(target):
    with connect3(target, prepare_threshold=0) as conn:
        for i in range(50):
            row = conn.execute("select %s::int * 2, %s::text", [i, f"v{i}"], prepare=True).fetchone()
            assert row == (i * 2, f"v{i}")
        if POOL_MODE == "session":
            # Session mode relays psycopg's statement names as they are: the server holds one.
            names = conn.execute("select count(*) from pg_prepared_statements where name like '_pg3_%'").fetchone()
            assert names[0] >= 1


def test_pipelined_extended_queries(target, pg):
    pg.sql("CREATE TABLE IF NOT EXISTS pipeline_rows(id int primary key, v text)", user="app", db="app")
    pg.sql("TRUNCATE pipeline_rows", user="app", db="app")
    with connect3(target) as conn:
        with conn.pipeline():
            for i in range(200):
                conn.execute("insert into pipeline_rows values (%s, %s)", [i, f"v{i}"])
            cur = conn.execute("select count(*), sum(id) from pipeline_rows")
        assert cur.fetchone() == (200, sum(range(200)))
        # An error inside a pipeline fails that statement and the rest of its batch, nothing more.
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                conn.execute("insert into pipeline_rows values (%s, %s)", [1, "dup"])
                conn.execute("select 1")
        assert conn.execute("select count(*) from pipeline_rows").fetchone() == (200,)


def test_copy_binary_in_and_out_with_psycopg3(target, pg):
    pg.sql("CREATE TABLE IF NOT EXISTS copy3_rows(id int, v text)", user="app", db="app")
    pg.sql("TRUNCATE copy3_rows", user="app", db="app")
    rows = [(i, f"value-{i}") for i in range(20000)]
    with connect3(target) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY copy3_rows (id, v) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                for row in rows:
                    copy.write_row(row)
            with cur.copy("COPY (select id, v from copy3_rows order by id) TO STDOUT (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text"])
                assert list(copy.rows()) == rows


def test_startup_parameters_are_passed_on_to_the_server(target):
    dsn = target.dsn("app", connect_timeout=10, application_name="pgsluice-param-test",
                     options="'-c statement_timeout=4321 -c search_path=pg_catalog,public'")
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        assert one(conn, "select current_setting('application_name'), current_setting('statement_timeout'), "
                         "current_setting('search_path')") == \
            ("pgsluice-param-test", "4321ms", "pg_catalog,public")
        # What the client was told at startup matches the server's settings.
        assert conn.get_parameter_status("application_name") == "pgsluice-param-test"
        assert conn.get_parameter_status("server_version").startswith("15.")
        assert conn.get_parameter_status("client_encoding") == "UTF8"


# -- the TLS pass ---------------------------------------------------------------------------------

@pytest.mark.proxy_only
@pytest.mark.skipif(not TLS, reason="the TLS pass only (PGSLUICE_TEST_TLS=1)")
def test_the_tls_pass_connects_over_tls_and_refuses_plain_text(target):
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(target.dsn("app", sslmode="disable", connect_timeout=10)).close()
    assert "TLS is required (tls.mode require)" in str(refused.value), str(refused.value)
    with closing(connect(target)) as conn:
        assert (conn.info.ssl_in_use, conn.info.ssl_attribute("protocol")[:6]) == (True, "TLSv1."), \
            conn.info.ssl_attribute("protocol")
        assert one(conn, "select 6 * 7") == (42,)
    with connect3(target) as conn:
        assert conn.pgconn.ssl_in_use is True
        assert conn.execute("select %s::int * 7", [6]).fetchone() == (42,)
