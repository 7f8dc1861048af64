"""Transaction pooling (issue 4, DESIGN §2-3): many clients on a few server connections, fast 53300
when the pool is exhausted, prepared statements and session parameters that follow the client from
connection to connection, warm minimums, health checks, and no dirty connection ever reused.

Each test runs its own pgsluice in transaction mode (in the PGSLUICE_TEST_MODE=transaction pass); the server
side logs in as role `scram_user`, so pg_stat_activity tells exactly what pgsluice holds."""
from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from contextlib import closing, contextmanager

import psycopg
import psycopg2
import psycopg2.errors
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)
if POOL_MODE != "transaction":
    pytest.skip("runs in the transaction-mode pass (PGSLUICE_TEST_MODE=transaction)", allow_module_level=True)

SERVER_ROLE = "scram_user"


@pytest.fixture(scope="module", autouse=True)
def shared_table(pg):
    pg.sql("drop table if exists tx_items")
    pg.sql("create table tx_items (id int, note text)")
    pg.sql(f"grant all on tx_items to {SERVER_ROLE}")
    yield


def config_for(pg, **service):
    config = pgharness.base_config(pg, pgharness.free_port())
    config["users"]["pooled"] = {"auth": "trust"}
    config["services"] = {
        "pooled": {
            "backend": "primary",
            "match": {"user": "pooled", "database": "postgres"},
            "server_user": SERVER_ROLE,
            "server_password": pgharness.password_for(SERVER_ROLE),
            "server_database": "postgres",
            "mode": "transaction",
            "max_connections": 10,
            "min_connections": 0,
            **service,
        }
    }
    return config


@contextmanager
def pgsluice(pg, **service):
    target = start_pgsluice(pg, config_for(pg, **service))
    try:
        yield target
    finally:
        stop_pgsluice(target)


def dsn(target, **params):
    extra = " ".join(f"{k}={v}" for k, v in params.items())
    return f"host=127.0.0.1 port={target.port} user=pooled dbname=postgres connect_timeout=10 {extra}"


def server_connections(pg, state=None):
    query = f"select count(*) from pg_stat_activity where usename = '{SERVER_ROLE}'"
    if state:
        query += f" and state = '{state}'"
    return pg.sql(query)[0][0]


def wait_until(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_500_clients_share_10_server_connections(pg):
    with pgsluice(pg, max_connections=10, acquire_timeout="5s") as target:
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], server_connections(pg))
                time.sleep(0.02)

        errors = []

        def client(i):
            try:
                conn = psycopg2.connect(dsn(target))
                conn.autocommit = True
                with conn.cursor() as cur:
                    for j in range(10):
                        cur.execute("select %s::int, %s::text", (i * 100 + j, f"client-{i}"))
                        assert cur.fetchone() == (i * 100 + j, f"client-{i}")
                conn.close()
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                errors.append(f"client {i}: {e!r}")

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(500)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
        assert errors == []
        assert 1 <= peak[0] <= 10, peak[0]
        assert server_connections(pg) <= 10


def test_exhausted_pool_fails_with_53300_after_acquire_timeout_and_recovers(pg):
    with pgsluice(pg, max_connections=2, acquire_timeout="1s") as target:
        holders = []
        for _ in range(2):
            conn = psycopg2.connect(dsn(target))
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("begin")
            cur.execute("select 1")  # the transaction now holds a server connection
            holders.append((conn, cur))
        waiter = psycopg2.connect(dsn(target))
        waiter.autocommit = True
        with waiter.cursor() as cur:
            started = time.monotonic()
            with pytest.raises(psycopg2.OperationalError) as failure:
                cur.execute("select 42")
            elapsed = time.monotonic() - started
        assert failure.value.pgcode == "53300", failure.value
        assert 'service "pooled"' in str(failure.value)
        assert "2/2 busy" in str(failure.value)
        assert 1.0 <= elapsed <= 1.25, elapsed
        # A connection frees: the same client's next statement succeeds.
        holders[0][1].execute("commit")
        with waiter.cursor() as cur:
            cur.execute("select 42")
            assert cur.fetchone() == (42,)
        for conn, cur in holders:
            conn.close()
        waiter.close()


def test_past_max_waiting_clients_fails_at_once(pg):
    with pgsluice(pg, max_connections=1, acquire_timeout="3s", max_waiting_clients=1) as target:
        holder = psycopg2.connect(dsn(target))
        holder.autocommit = True
        holder.cursor().execute("begin")
        holder.cursor().execute("select 1")
        queued = psycopg2.connect(dsn(target))
        queued.autocommit = True
        background = threading.Thread(target=lambda: queued.cursor().execute("select 1"))
        background.start()
        time.sleep(0.3)
        refused = psycopg2.connect(dsn(target))
        refused.autocommit = True
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError) as failure:
            refused.cursor().execute("select 1")
        assert time.monotonic() - started < 0.5
        assert failure.value.pgcode == "53300"
        assert "max_waiting_clients" in str(failure.value)
        holder.cursor().execute("commit")
        background.join()
        for conn in (holder, queued, refused):
            conn.close()


def test_pgbench_prepared_over_few_server_connections(pg):
    pg.sql("select 1")
    with pgsluice(pg, max_connections=5, acquire_timeout="5s") as target:
        result = subprocess.run(
            ["pgbench", "-h", "127.0.0.1", "-p", str(target.port), "-U", "pooled", "-n", "-c", "20", "-j", "2",
             "-T", "3", "-M", "prepared", "-f", "-", "postgres"],
            input="\\set x random(1, 1000)\nselect :x::int + 1;\n", capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "does not exist" not in output
        assert "aborted" not in output.replace("number of failed transactions: 0", "")
        assert "number of failed transactions: 0" in output, output


def test_libpq_prepared_statements_50_clients_on_5_connections(pg):
    with pgsluice(pg, max_connections=5, acquire_timeout="5s") as target:
        errors = []

        def client(i):
            try:
                with psycopg.connect(dsn(target), autocommit=True, prepare_threshold=0) as conn:
                    # A small cache: psycopg evicts with "DEALLOCATE _pg3_n", which pgsluice answers.
                    conn.prepared_max = 3
                    for j in range(20):
                        row = conn.execute("select %s::int * 3, %s::text", (i + j, f"c{i}"), prepare=True).fetchone()
                        assert row == ((i + j) * 3, f"c{i}")
                        shape = f"select %s::int + {j % 6}"
                        assert conn.execute(shape, (i,), prepare=True).fetchone() == (i + j % 6,)
            except Exception as e:  # noqa: BLE001
                errors.append(f"client {i}: {e!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert server_connections(pg) <= 5
        # The same statement text is parsed once per server connection, under pgsluice's names.
        names = pg.sql(f"select count(*) from pg_stat_activity where usename = '{SERVER_ROLE}'")[0][0]
        assert names <= 5


def test_session_parameters_follow_each_client_on_one_server_connection(pg):
    with pgsluice(pg, max_connections=1) as target:
        a = psycopg2.connect(dsn(target, application_name="alpha", options="'-c TimeZone=Asia/Tokyo'"))
        b = psycopg2.connect(dsn(target, application_name="beta"))
        a.autocommit = b.autocommit = True
        query = "select current_setting('application_name'), current_setting('TimeZone'), pg_backend_pid()"
        pids = set()
        for _ in range(5):
            with a.cursor() as cur:
                cur.execute(query)
                name, zone, pid = cur.fetchone()
                assert (name, zone) == ("alpha", "Asia/Tokyo")
                pids.add(pid)
            with b.cursor() as cur:
                cur.execute(query)
                name, zone, pid = cur.fetchone()
                assert name == "beta"
                assert zone != "Asia/Tokyo"
                pids.add(pid)
        assert len(pids) == 1  # truly one server connection, shared
        with b.cursor() as cur:
            cur.execute("set TimeZone = 'Europe/Berlin'")
        with a.cursor() as cur:
            cur.execute("select current_setting('TimeZone')")
            assert cur.fetchone() == ("Asia/Tokyo",)
        with b.cursor() as cur:
            cur.execute("select current_setting('TimeZone')")
            assert cur.fetchone() == ("Europe/Berlin",)
        assert b.get_parameter_status("TimeZone") == "Europe/Berlin"
        assert a.get_parameter_status("application_name") == "alpha"
        a.close()
        b.close()


def test_a_burst_of_logins_at_cold_start_opens_one_server_connection(pg):
    # The first login learns the server's ParameterStatus values on a leased connection; the 100
    # arriving with it wait for that answer instead of opening a connection each (max is 60 here).
    with pgsluice(pg, max_connections=60) as target:
        barrier = threading.Barrier(100, timeout=60)
        errors = []
        peak = [0]

        def login():
            try:
                with closing(psycopg2.connect(dsn(target))) as conn:
                    barrier.wait()
                    if threading.current_thread().name == "login-0":
                        peak[0] = server_connections(pg)
                    barrier.wait()
                    with conn.cursor() as cur:
                        cur.execute("select 1")
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(f"{type(exc).__name__}: {exc}")
                barrier.abort()

        threads = [threading.Thread(target=login, name=f"login-{i}") for i in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert errors == []
        assert peak[0] == 1, f"{peak[0]} server connections after 100 simultaneous logins"


def test_min_connections_are_open_before_any_client(pg):
    with pgsluice(pg, max_connections=6, min_connections=3):
        assert wait_until(lambda: server_connections(pg) == 3, timeout=5), server_connections(pg)


def test_terminated_idle_server_connections_are_replaced_transparently(pg):
    with pgsluice(pg, max_connections=4, min_connections=4) as target:
        assert wait_until(lambda: server_connections(pg) == 4, timeout=5)
        conn = psycopg2.connect(dsn(target))
        conn.autocommit = True
        for _ in range(3):
            killed = pg.sql(f"select count(pg_terminate_backend(pid)) from pg_stat_activity "
                            f"where usename = '{SERVER_ROLE}'")[0][0]
            assert killed >= 1
            wait_until(lambda: server_connections(pg) == 0, timeout=5)
            for i in range(8):
                with conn.cursor() as cur:
                    cur.execute("select %s::int", (i,))
                    assert cur.fetchone() == (i,)
        conn.close()


def test_server_connection_lost_mid_transaction_tells_the_client_and_is_not_reused(pg):
    # The server dies while a client holds it inside a transaction: the client is told (Postgres's
    # own FATAL, then pgsluice's 08006) and disconnected, the dead connection is not given to anyone,
    # and the next client is served by a new one.
    with pgsluice(pg, max_connections=1) as target:
        conn = psycopg2.connect(dsn(target))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("begin")
            cur.execute("select pg_backend_pid()")
            server_pid = cur.fetchone()[0]
            assert pg.sql(f"select pg_terminate_backend({server_pid})") == [(True,)]
            assert wait_until(lambda: "server connection for service pooled lost" in target.proxy.log_text(),
                              timeout=5), target.proxy.log_text()[-2000:]
            with pytest.raises(psycopg2.OperationalError):
                cur.execute("select 1")
        conn.close()
        with closing(psycopg2.connect(dsn(target))) as other:
            other.autocommit = True
            with other.cursor() as cur:
                cur.execute("select pg_backend_pid(), 7")
                pid, seven = cur.fetchone()
                assert (seven, pid != server_pid) == (7, True)
        assert wait_until(lambda: server_connections(pg) == 1, timeout=5), server_connections(pg)


def raw_login(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = b"user\0pooled\0database\0postgres\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
    buffer = b""
    while b"Z\0\0\0\x05I" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "pgsluice closed the connection during login"
        buffer += chunk
    return sock


def query_message(sql):
    data = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", 4 + len(data)) + data


def test_client_vanishing_mid_transaction_leaves_no_dirty_connection(pg):
    with pgsluice(pg, max_connections=1) as target:
        sock = raw_login(target.port)
        sock.sendall(query_message("begin; insert into tx_items values (1, 'uncommitted');"))
        time.sleep(0.3)
        assert server_connections(pg, "idle in transaction") == 1
        sock.close()
        # The connection is discarded (Postgres rolls back), never handed to the next client.
        assert wait_until(lambda: server_connections(pg, "idle in transaction") == 0, timeout=5)
        with closing(psycopg2.connect(dsn(target))) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("select count(*) from tx_items where note = 'uncommitted'")
                assert cur.fetchone() == (0,)
                cur.execute("select now() = statement_timestamp()")  # not inside an old transaction
                assert cur.fetchone() == (True,)
        assert server_connections(pg) <= 1


def test_client_vanishing_mid_copy_leaves_no_dirty_connection(pg):
    with pgsluice(pg, max_connections=1) as target:
        sock = raw_login(target.port)
        sock.sendall(query_message("copy tx_items from stdin"))
        time.sleep(0.2)
        row = b"2\tcopied\n"
        sock.sendall(b"d" + struct.pack("!i", 4 + len(row)) + row)
        time.sleep(0.2)
        sock.close()
        assert wait_until(lambda: server_connections(pg, "active") == 0, timeout=5)
        with closing(psycopg2.connect(dsn(target))) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("select count(*) from tx_items where note = 'copied'")
                assert cur.fetchone() == (0,)
        assert server_connections(pg) <= 1


def test_cancel_reaches_only_the_connection_the_client_holds(pg):
    with pgsluice(pg, max_connections=2) as target:
        a = psycopg2.connect(dsn(target))
        b = psycopg2.connect(dsn(target))
        a.autocommit = b.autocommit = True
        outcome = {}

        def run(name, conn, seconds):
            started = time.monotonic()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"select pg_sleep({seconds})")
                outcome[name] = ("ok", time.monotonic() - started)
            except psycopg2.Error as e:
                outcome[name] = (e.pgcode, time.monotonic() - started)

        ta = threading.Thread(target=run, args=("a", a, 10))
        tb = threading.Thread(target=run, args=("b", b, 1.5))
        ta.start()
        tb.start()
        time.sleep(0.5)
        a.cancel()
        ta.join()
        tb.join()
        assert outcome["a"][0] == "57014" and outcome["a"][1] < 2.0, outcome
        assert outcome["b"][0] == "ok" and outcome["b"][1] >= 1.5, outcome
        # A cancel while the client holds no server connection touches nobody.
        tb = threading.Thread(target=run, args=("b", b, 1))
        tb.start()
        time.sleep(0.2)
        a.cancel()
        tb.join()
        assert outcome["b"][0] == "ok", outcome
        with a.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
        a.close()
        b.close()


def test_statement_mode_runs_statements_and_refuses_transaction_blocks(pg):
    with pgsluice(pg, mode="statement", max_connections=1) as target:
        conn = psycopg2.connect(dsn(target))
        conn.autocommit = True
        with conn.cursor() as cur:
            for i in range(5):
                cur.execute("select %s::int", (i,))
                assert cur.fetchone() == (i,)
        with pytest.raises(psycopg2.Error) as refused:
            with conn.cursor() as cur:
                cur.execute("begin")
                cur.execute("select 1")
        # libpq reports the FATAL that arrives unasked only as a closed connection (as with Postgres's
        # own FATALs); the reason is in the log.
        assert refused.value.pgcode in ("0A000", None), refused.value
        assert conn.closed
        assert "0A000 pgsluice: transaction blocks are not allowed in statement pool mode" in target.log_text()
        # The one server connection was rolled back and kept: the next client gets it at once.
        assert wait_until(lambda: server_connections(pg, "idle in transaction") == 0, timeout=5)
        with closing(psycopg2.connect(dsn(target))) as other:
            other.autocommit = True
            with other.cursor() as cur:
                cur.execute("select now() = statement_timestamp()")
                assert cur.fetchone() == (True,)
