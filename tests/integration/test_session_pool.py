"""Session pooling: a server connection goes back to its pool when the client leaves, is reset with
DISCARD ALL, and the next client finds nothing of the previous session. A service of one
connection makes the reuse certain."""
from __future__ import annotations

import socket
import struct
import time
from contextlib import closing

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE

pytestmark = [
    pytest.mark.proxy_only,
    pytest.mark.skipif(POOL_MODE != "session", reason="session-mode behaviour"),
]


def pgsluice_config(config, pg):
    config["users"]["solo"] = {"auth": "trust"}  # so raw sockets can log in too
    config["services"]["solo"] = {
        "backend": "primary", "match": {"user": "solo", "database": "app"}, "server_user": "app",
        "server_password": pgharness.password_for("app"), "server_database": "app", "mode": "session",
        "max_connections": 1, "min_connections": 0,
    }


@pytest.fixture(scope="module")
def solo_table(pg):
    pg.sql("CREATE TABLE IF NOT EXISTS solo_rows(id int)", user="app", db="app")
    pg.sql("TRUNCATE solo_rows", user="app", db="app")


def connect(target):
    conn = psycopg2.connect(target.dsn("solo", password=None, connect_timeout=10))
    conn.autocommit = True
    return conn


def vanish(raw: pgharness.RawConnection) -> None:
    """Closes with a TCP reset and no Terminate message, as a crashed client would."""
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def raw_client(target) -> pgharness.RawConnection:
    raw = target.raw()
    raw.startup("solo", "app", None)
    return raw


def rows(conn, query):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall() if cur.description else None


def next_client(target, deadline_s: float = 5.0):
    """Connects as the next client of the one-connection service, retrying while the previous
    client's connection is still being returned."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return connect(target)
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_next_client_reuses_the_server_connection_and_finds_it_reset(target, solo_table):
    with closing(connect(target)) as first:
        pid = rows(first, "select pg_backend_pid()")[0][0]
        rows(first, "SET work_mem = '7MB'")
        rows(first, "CREATE TEMP TABLE leftover(id int)")
        rows(first, "PREPARE leftover_stmt AS select 1")
        rows(first, "LISTEN leftover_channel")
        rows(first, "select pg_advisory_lock(4242)")
        assert rows(first, "show work_mem") == [("7MB",)]
    second = next_client(target)
    with closing(second):
        assert rows(second, "select pg_backend_pid()") == [(pid,)], "the server connection was not reused"
        assert rows(second, "show work_mem") == [("4MB",)]
        assert rows(second, "select count(*) from pg_class where relname = 'leftover' "
                            "and relpersistence = 't'") == [(0,)]
        assert rows(second, "select count(*) from pg_prepared_statements") == [(0,)]
        assert rows(second, "select count(*) from pg_listening_channels()") == [(0,)]
        assert rows(second, "select count(*) from pg_locks where locktype = 'advisory' "
                            "and pid = pg_backend_pid()") == [(0,)]


def test_client_leaving_inside_a_transaction_leaves_nothing_behind(target, pg, solo_table):
    first = raw_client(target)
    messages = first.query("begin; insert into solo_rows values (1)")
    assert messages[-1] == (b"Z", b"T")  # ReadyForQuery: in a transaction block
    vanish(first)
    with closing(next_client(target)) as second:
        assert rows(second, "select txid_current_if_assigned()") == [(None,)]
        assert rows(second, "select count(*) from solo_rows") == [(0,)]
        rows(second, "insert into solo_rows values (2)")
    assert pg.sql("select array_agg(id) from solo_rows", user="app", db="app") == [([2],)]


def test_client_leaving_mid_query_does_not_hand_a_busy_connection_on(target, solo_table):
    first = raw_client(target)
    first_pid = int(pgharness.rows_of(first.query("select pg_backend_pid()"))[0][0])
    # Fire a long query and vanish without waiting for it.
    first.send(pgharness.message(b"Q", b"select pg_sleep(5)\0"))
    time.sleep(0.2)
    vanish(first)
    started = time.monotonic()
    with closing(next_client(target)) as second:
        assert rows(second, "select 'next client'") == [("next client",)]
        elapsed = time.monotonic() - started
        # Either the busy connection was dropped and a new one opened, or the query was cancelled
        # and the connection reset: never waiting out the 5 s query.
        assert elapsed < 4.0, f"next client served after {elapsed:.1f} s"
        if rows(second, "select pg_backend_pid()")[0][0] == first_pid:
            assert rows(second, "select count(*) from pg_stat_activity where pid = pg_backend_pid() "
                                "and query like '%pg_sleep(5)%'") == [(0,)]
