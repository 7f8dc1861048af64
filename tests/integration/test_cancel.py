"""Query cancellation through pgsluice: libpq's PQcancel sends a CancelRequest with the key the
client got at startup; pgsluice forwards it to the server connection the client holds."""
from __future__ import annotations

import random
import threading
import time
from contextlib import closing

import psycopg2
import psycopg2.errors
import pytest

import pgharness


def connect(target):
    conn = psycopg2.connect(target.dsn("app", connect_timeout=10))
    conn.autocommit = True
    return conn


def cancel_after(conn, delay):
    timer = threading.Timer(delay, conn.cancel)
    timer.start()
    return timer


def test_libpq_cancel_interrupts_pg_sleep_with_57014(target):
    with closing(connect(target)) as conn:
        timer = cancel_after(conn, 0.5)
        started = time.monotonic()
        try:
            with conn.cursor() as cur:
                try:
                    cur.execute("select pg_sleep(10)")
                    raise AssertionError("pg_sleep(10) was not cancelled")
                except psycopg2.errors.QueryCanceled as err:
                    assert err.pgcode == "57014"
                    assert err.diag.message_primary == "canceling statement due to user request"
        finally:
            timer.join()
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 2.0, f"cancel took {elapsed:.2f} s"
        # The session goes on.
        with conn.cursor() as cur:
            cur.execute("select 'after cancel'")
            assert cur.fetchone() == ("after cancel",)


def test_cancel_hits_only_its_own_session(target):
    with closing(connect(target)) as victim, closing(connect(target)) as bystander:
        results = {}

        def run_bystander():
            with bystander.cursor() as cur:
                started = time.monotonic()
                cur.execute("select pg_sleep(1.5), 'bystander'")
                results["bystander"] = (cur.fetchone()[1], time.monotonic() - started)

        thread = threading.Thread(target=run_bystander)
        thread.start()
        timer = cancel_after(victim, 0.5)
        try:
            with victim.cursor() as cur:
                try:
                    cur.execute("select pg_sleep(10)")
                    raise AssertionError("pg_sleep(10) was not cancelled")
                except psycopg2.errors.QueryCanceled as err:
                    assert err.pgcode == "57014"
        finally:
            timer.join()
            thread.join(15)
        name, elapsed = results["bystander"]
        assert name == "bystander" and elapsed >= 1.5


def test_cancel_request_with_a_wrong_key_is_ignored(target):
    with closing(connect(target)) as conn:
        # The pid libpq holds with a random key, and a random pid and key, must cancel nothing.
        pid = conn.get_backend_pid()
        threading.Timer(0.3, lambda: pgharness.send_cancel(target.host, target.port, pid,
                                                           random.getrandbits(32))).start()
        threading.Timer(0.4, lambda: pgharness.send_cancel(target.host, target.port,
                                                           random.getrandbits(31), random.getrandbits(32))).start()
        started = time.monotonic()
        with conn.cursor() as cur:
            cur.execute("select pg_sleep(1.2), 'not cancelled'")
            assert cur.fetchone()[1] == "not cancelled"
        assert time.monotonic() - started >= 1.2


def test_cancel_when_idle_does_nothing_to_the_next_query(target):
    with closing(connect(target)) as conn:
        conn.cancel()
        time.sleep(0.3)
        with conn.cursor() as cur:
            cur.execute("select pg_sleep(0.5), 'fine'")
            assert cur.fetchone()[1] == "fine"


@pytest.mark.proxy_only
def test_client_gets_pgsluices_own_backend_key_not_the_servers(target):
    with closing(connect(target)) as conn:
        with conn.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            server_pid = cur.fetchone()[0]
        assert conn.get_backend_pid() != server_pid
