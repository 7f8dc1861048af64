"""The circuit breaker (issue 5, DESIGN §3): with the database killed under load, the breaker opens
within failure_threshold failures and from then on every statement fails with 57P03 in
microseconds, not after a timeout; once the database is back, statements succeed again within
open_for + 1 s, with no restart of pgsluice. Uses a Postgres of its own: it gets killed."""
from __future__ import annotations

import threading
import time

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)
if POOL_MODE != "transaction":
    # In session mode a client whose server dies is disconnected (08006) and its next login is what
    # fails fast; the statement-level measurement below needs clients that stay connected.
    pytest.skip("runs in the transaction-mode pass", allow_module_level=True)


@pytest.fixture(scope="module")
def own_pg():
    with pgharness.LocalPostgres(max_connections=100) as pg:
        yield pg


def test_database_killed_under_load_fails_fast_then_recovers(own_pg):
    pg = own_pg
    config = pgharness.base_config(pg, pgharness.free_port(), mode=POOL_MODE, max_connections=10)
    config["backends"]["primary"]["connect_timeout"] = "1s"
    config["backends"]["primary"]["breaker"] = {"failure_threshold": 3, "open_for": "1s", "max_open_for": "4s"}
    config["users"]["trusty"] = {"auth": "trust"}
    config["services"]["trusty"]["mode"] = POOL_MODE
    target = start_pgsluice(pg, config)
    dsn = f"host=127.0.0.1 port={target.port} user=trusty dbname=app connect_timeout=5"
    try:
        # Load: 20 clients with their own sessions, opened while the database is up.
        stop = threading.Event()
        clients = []
        for _ in range(20):
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            clients.append(conn)

        def load(conn):
            while not stop.is_set():
                try:
                    with conn.cursor() as cur:
                        cur.execute("select 1")
                except psycopg2.Error:
                    time.sleep(0.01)

        threads = [threading.Thread(target=load, args=(c,)) for c in clients[:19]]
        for t in threads:
            t.start()
        time.sleep(0.5)

        pg.stop("immediate")
        probe = clients[19]

        # Within the threshold the breaker opens; from then on 57P03 at once.
        codes = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                probe.cursor().execute("select 1")
                codes.append("ok")
            except psycopg2.Error as e:
                codes.append(e.pgcode)
                if e.pgcode == "57P03" and "circuit open" in str(e):
                    break
        assert codes and codes[-1] == "57P03", codes

        durations = []
        messages = set()
        for _ in range(200):
            started = time.perf_counter()
            try:
                if probe.closed:
                    probe = psycopg2.connect(dsn)
                    probe.autocommit = True
                probe.cursor().execute("select 1")
                durations.append(None)
            except psycopg2.Error as e:
                durations.append(time.perf_counter() - started)
                messages.add(e.pgcode)
            if len(durations) % 50 == 0:
                time.sleep(0.01)
        failures = sorted(d for d in durations if d is not None)
        assert len(failures) >= 190, durations.count(None)
        assert messages == {"57P03"}, messages
        p50 = failures[len(failures) // 2]
        p99 = failures[int(len(failures) * 0.99) - 1]
        print(f"fast-fail p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms over {len(failures)} statements")
        assert p99 < 0.050, (p50, p99)

        # The database comes back: statements succeed again within open_for + 1 s.
        pg.start_again()
        back = time.monotonic()
        recovered = None
        while time.monotonic() - back < 10:
            try:
                if probe.closed:
                    probe = psycopg2.connect(dsn)
                    probe.autocommit = True
                with probe.cursor() as cur:
                    cur.execute("select 42")
                    if cur.fetchone() == (42,):
                        recovered = time.monotonic() - back
                        break
            except psycopg2.Error:
                time.sleep(0.05)
        print(f"recovered {recovered:.2f} s after the restart" if recovered is not None else "not recovered")
        # open_for may have doubled once while the database was down: 4 s is max_open_for.
        assert recovered is not None and recovered <= 4 + 1, recovered
        stop.set()
        for t in threads:
            t.join()
        for conn in clients:
            conn.close()
        if not probe.closed:
            probe.close()
    finally:
        stop_pgsluice(target)
