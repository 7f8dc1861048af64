"""Isolation between clients that share server connections (issue 14, DESIGN §2, §8): no client
receives another client's statement, result or setting, whatever it sends and in whatever order,
and no client can make pgsluice hold memory for bytes it never sent.

Each reproduction from the issue has a test here that failed before its fix. They run raw protocol
clients (tests/harness/pgwire.py) over a pool smaller than the client count, in the transaction-mode
pass; the memory tests run in both passes."""
from __future__ import annotations

import struct
import threading
import time
from contextlib import contextmanager

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice
from pgwire import RawConnection, errors_of as errors, message, rows_of as data_rows, startup_packet

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)

SERVER_ROLE = "scram_user"
transaction_only = pytest.mark.skipif(POOL_MODE != "transaction",
                                      reason="runs in the transaction-mode pass (PGSLUICE_TEST_MODE=transaction)")


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
            "mode": POOL_MODE,
            "max_connections": 5,
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


# Extended-protocol messages (docs §55.7), text parameters only.
def parse(name: str, query: str) -> bytes:
    return message(b"P", name.encode() + b"\0" + query.encode() + b"\0" + struct.pack("!h", 0))


def bind(statement: str, *params: str | None, portal: str = "") -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value.encode())) + value.encode()
    return message(b"B", body + struct.pack("!h", 0))


def describe_statement(name: str) -> bytes:
    return message(b"D", b"S" + name.encode() + b"\0")


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


SYNC = message(b"S")


def login(port: int, **params) -> RawConnection:
    conn = RawConnection("127.0.0.1", port, timeout=20)
    conn.startup("pooled", "postgres", None, **params)
    return conn


def run_clients(count: int, body) -> list[str]:
    """Runs body(index) in `count` threads at once; returns the failures (exceptions as text)."""
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(count)

    def runner(index: int) -> None:
        try:
            start.wait(timeout=30)
            body(index)
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its client
            with lock:
                failures.append(f"client {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return failures


@transaction_only
def test_the_unnamed_statement_of_another_client_is_never_bound(pg):
    # asyncpg, Bun and diesel: Parse/Describe/Sync of the unnamed statement, then (a moment later)
    # Bind/Execute/Sync. A client coming back to a connection where another client has parsed its
    # own unnamed statement meanwhile must get its own statement's result.
    with pgsluice(pg, max_connections=5) as target:
        def client(index: int) -> None:
            factor = index + 2
            with login(target.port) as conn:
                for i in range(30):
                    conn.send(parse("", f"SELECT $1::int * {factor}") + describe_statement("") + SYNC)
                    replies = conn.read_until_ready()
                    assert not errors(replies), errors(replies)
                    time.sleep(0.001)
                    conn.send(bind("", str(i)) + execute() + SYNC)
                    replies = conn.read_until_ready()
                    assert not errors(replies), errors(replies)
                    assert data_rows(replies) == [[str(i * factor)]], \
                        f"SELECT {i} * {factor} answered {data_rows(replies)}"

        assert run_clients(40, client) == []


@transaction_only
def test_a_client_without_an_unnamed_statement_gets_26000_not_another_clients(pg):
    with pgsluice(pg, max_connections=1) as target:
        with login(target.port) as other, login(target.port) as mine:
            other.send(parse("", "SELECT 'other client'") + SYNC)
            other.read_until_ready()
            mine.send(bind("") + execute() + SYNC)
            replies = mine.read_until_ready()
            assert data_rows(replies) == []
            assert [e["C"] for e in errors(replies)] == ["26000"]


@transaction_only
def test_deallocate_all_in_a_pipeline_keeps_the_statement_parsed_after_it(pg):
    with pgsluice(pg, max_connections=5) as target:
        def client(index: int) -> None:
            with login(target.port) as conn:
                for i in range(10):
                    name = f"after_deallocate_{index}"
                    conn.send(parse("", "DEALLOCATE ALL") + bind("") + execute()
                              + parse(name, f"SELECT {index} + $1::int") + bind(name, str(i)) + execute() + SYNC)
                    replies = conn.read_until_ready()
                    assert not errors(replies), errors(replies)
                    assert data_rows(replies) == [[str(index + i)]]
                    conn.send(bind(name, str(i + 1)) + execute() + SYNC)
                    replies = conn.read_until_ready()
                    assert not errors(replies), f"round {i}: {errors(replies)}"
                    assert data_rows(replies) == [[str(index + i + 1)]]

        assert run_clients(20, client) == []


@transaction_only
def test_startup_options_never_reach_another_client(pg):
    pg.sql("drop schema if exists evil cascade")
    pg.sql("create schema evil")
    pg.sql(f"grant usage on schema evil to {SERVER_ROLE}")
    pg.sql("drop table if exists public.iso_whose; create table public.iso_whose (v text)")
    pg.sql("insert into public.iso_whose values ('public')")
    pg.sql("create table evil.iso_whose (v text); insert into evil.iso_whose values ('evil')")
    pg.sql(f"grant select on public.iso_whose, evil.iso_whose to {SERVER_ROLE}")
    with pgsluice(pg, max_connections=1) as target:
        base = f"host=127.0.0.1 port={target.port} user=pooled dbname=postgres connect_timeout=10"
        tenant = psycopg2.connect(base + " options='-c search_path=evil,public -c app.tenant=A'")
        tenant.autocommit = True
        others = [psycopg2.connect(base) for _ in range(3)]
        for other in others:
            other.autocommit = True
        try:
            for _ in range(20):
                with tenant.cursor() as cur:
                    cur.execute("select v, current_setting('app.tenant', true) from iso_whose")
                    assert cur.fetchall() == [("evil", "A")]
                for other in others:
                    with other.cursor() as cur:
                        cur.execute("select v, current_setting('app.tenant', true) from iso_whose")
                        rows = cur.fetchall()
                        # Never A's table or A's tenant ('' is what a reset placeholder reads as).
                        assert len(rows) == 1 and rows[0][0] == "public" and rows[0][1] in (None, ""), rows
        finally:
            tenant.close()
            for other in others:
                other.close()


rss_kib = pgharness.rss_kib


def test_declared_message_lengths_cost_no_memory_before_or_after_login(pg):
    # 16 connections declaring 64 MiB messages (and sending a few bytes of them) must not make
    # pgsluice hold 16 x 64 MiB: buffers grow with the bytes that arrive. Before login the declared
    # length alone is refused (a password message cannot exceed 65 535 bytes).
    with pgsluice(pg, max_connections=20) as target:  # session mode holds one per client
        pid = target.proxy.proc.pid
        # Warm up what ordinary clients cost (and, in session mode, the server connections they
        # hold), so that the measure below is about the big headers alone.
        warm = [login(target.port) for _ in range(8)]
        for conn in warm:
            conn.query("select 1")
        for conn in warm:
            conn.close()
        time.sleep(0.3)
        before = rss_kib(pid)
        held = []
        try:
            for _ in range(8):  # before login: SCRAM user, a password message of 64 MiB declared
                conn = RawConnection("127.0.0.1", target.port, timeout=10)
                conn.send(startup_packet({"user": "app", "database": "app"}))
                msg_type, _ = conn.read_message()
                assert msg_type == b"R"
                conn.send(b"p" + struct.pack("!I", 64 * 1024 * 1024) + b"x" * 100)
                fields = conn.expect_rejected()
                assert fields is not None and fields["C"] == "08P01", fields
                conn.close()
            for _ in range(8):  # after login: a Query of 60 MiB declared, 1 KiB sent
                conn = login(target.port)
                conn.send(b"Q" + struct.pack("!I", 60 * 1024 * 1024) + b"x" * 1024)
                held.append(conn)
            time.sleep(0.5)
            grown = rss_kib(pid) - before
            assert grown < 16 * 1024, f"pgsluice's RSS grew by {grown} KiB for 16 declared 64 MiB messages"
            # Nothing else was harmed: a new client is served.
            with login(target.port) as other:
                assert data_rows(other.query("select 42")) == [["42"]]
        finally:
            for conn in held:
                conn.close()


def psycopg2_clients(target, count):
    base = f"host=127.0.0.1 port={target.port} user=pooled dbname=postgres connect_timeout=10"
    clients = [psycopg2.connect(base) for _ in range(count)]
    for client in clients:
        client.autocommit = True
    return clients


def scalar(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchone()[0]


@transaction_only
def test_each_client_keeps_its_own_settings_in_autocommit(pg):
    defaults = {name: pg.sql(f"select current_setting('{name}')")[0][0]
                for name in ("work_mem", "search_path", "statement_timeout")}
    with pgsluice(pg, max_connections=5) as target:
        def client(index: int) -> None:
            (conn,) = psycopg2_clients(target, 1)
            try:
                own = {"work_mem": f"{64 + index}kB", "search_path": f"s{index}, public",
                       "statement_timeout": f"{1001 + index}ms"}
                with conn.cursor() as cur:
                    cur.execute(f"SET work_mem = '{own['work_mem']}'")
                    cur.execute(f"SET search_path = s{index}, public")
                    cur.execute(f"SET statement_timeout = {1001 + index}")
                for i in range(40):
                    seen = {name: scalar(conn, "select current_setting(%s)", name) for name in own}
                    assert seen == own, f"query {i}: {seen} != {own}"
                    assert scalar(conn, "show work_mem") == own["work_mem"]
                with conn.cursor() as cur:
                    cur.execute("RESET ALL")
                for _ in range(5):
                    seen = {name: scalar(conn, "select current_setting(%s)", name) for name in own}
                    assert seen == defaults, f"after RESET ALL: {seen} != {defaults}"
            finally:
                conn.close()

        assert run_clients(30, client) == []


@transaction_only
def test_a_setting_follows_the_transaction_that_made_it(pg):
    with pgsluice(pg, max_connections=2) as target:
        mine, other = psycopg2_clients(target, 2)
        try:
            default = scalar(other, "show work_mem")
            with mine.cursor() as cur:
                cur.execute("BEGIN; SET work_mem = '71kB'; ROLLBACK")
                assert scalar(mine, "show work_mem") == default
                cur.execute("BEGIN")
                cur.execute("SET work_mem = '72kB'")
                cur.execute("SET LOCAL statement_timeout = 1234")
                cur.execute("COMMIT")
            for _ in range(10):
                assert scalar(mine, "show work_mem") == "72kB"
                assert scalar(mine, "show statement_timeout") != "1234ms"
                assert scalar(other, "show work_mem") == default
        finally:
            mine.close()
            other.close()


@transaction_only
def test_an_advisory_lock_holder_keeps_its_connection_until_it_unlocks(pg):
    with pgsluice(pg, max_connections=1, acquire_timeout="500ms") as target:
        holder, other = psycopg2_clients(target, 2)
        try:
            assert scalar(holder, "select pg_advisory_lock(77)") == ""
            pid = scalar(holder, "select pg_backend_pid()")
            # The only server connection stays with the holder: the other client cannot lease it.
            with pytest.raises(psycopg2.OperationalError) as failure:
                scalar(other, "select 1")
            assert failure.value.pgcode == "53300"
            assert scalar(holder, "select pg_backend_pid()") == pid
            assert scalar(holder, "select pg_advisory_unlock(77)") is True
            # Released: pooled again.
            assert scalar(other, "select 1") == 1
            assert scalar(other, "select pg_try_advisory_lock(77)") is True
            scalar(other, "select pg_advisory_unlock_all()")
        finally:
            holder.close()
            other.close()


@transaction_only
def test_notifications_reach_the_listener_and_nobody_else(pg):
    import select

    with pgsluice(pg, max_connections=4) as target:
        listener, notifier = psycopg2_clients(target, 2)
        busy = psycopg2_clients(target, 20)
        stop = threading.Event()
        try:
            with listener.cursor() as cur:
                cur.execute("LISTEN iso_channel")

            def keep_busy(conn):
                while not stop.is_set():
                    scalar(conn, "select 1")

            threads = [threading.Thread(target=keep_busy, args=(conn,)) for conn in busy]
            for thread in threads:
                thread.start()
            for i in range(100):
                with notifier.cursor() as cur:
                    cur.execute("select pg_notify('iso_channel', %s)", (str(i),))
            received = []
            deadline = time.monotonic() + 10
            while len(received) < 100 and time.monotonic() < deadline:
                select.select([listener], [], [], 0.2)
                listener.poll()
                while listener.notifies:
                    received.append(listener.notifies.pop(0).payload)
            stop.set()
            for thread in threads:
                thread.join()
            assert received == [str(i) for i in range(100)]
            for conn in busy + [notifier]:
                conn.poll()
                assert conn.notifies == [], "a notification reached a client that never listened"
            # An idle listener gets its notification promptly.
            started = time.monotonic()
            with notifier.cursor() as cur:
                cur.execute("notify iso_channel, 'idle'")
            select.select([listener], [], [], 5)
            listener.poll()
            assert [n.payload for n in listener.notifies] == ["idle"]
            assert time.monotonic() - started < 1.0
            listener.notifies.clear()
            # UNLISTEN stops delivery, and the connection is pooled again.
            with listener.cursor() as cur:
                cur.execute("UNLISTEN *")
            with notifier.cursor() as cur:
                cur.execute("notify iso_channel, 'after'")
            time.sleep(0.3)
            listener.poll()
            assert listener.notifies == []
        finally:
            stop.set()
            for conn in [listener, notifier, *busy]:
                conn.close()


def wait_for_notifications(conn, count: int, timeout: float = 10.0) -> list:
    import select

    received = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        select.select([conn], [], [], 0.1)
        conn.poll()
        while conn.notifies:
            received.append(conn.notifies.pop(0))
    return received


@transaction_only
def test_listeners_share_one_listener_connection_and_hold_no_pool_connection(pg):
    # 30 clients LISTEN on 3 channels over a pool of 2 server connections: the LISTENs are served by
    # pgsluice's listener connection (DESIGN §2), so 10 busy clients still get the pool, and each
    # notification reaches exactly the clients listening on its channel.
    with pgsluice(pg, max_connections=2, acquire_timeout="5s") as target:
        listeners = psycopg2_clients(target, 30)
        notifier, = psycopg2_clients(target, 1)
        busy = psycopg2_clients(target, 10)
        try:
            for i, conn in enumerate(listeners):
                with conn.cursor() as cur:
                    cur.execute(f'LISTEN "Hub Channel {i % 3}"')
            assert run_clients(10, lambda i: [scalar(busy[i], "select %s::int", n) for n in range(20)] and None) == []
            # One server connection listens for all of them, and it is not one of the pool's.
            hub = pg.sql("select count(*) from pg_stat_activity where query like 'LISTEN %'")[0][0]
            assert hub == 1
            for channel in range(3):
                with notifier.cursor() as cur:
                    cur.execute("select pg_notify(%s, %s)", (f"Hub Channel {channel}", f"to {channel}"))
            for i, conn in enumerate(listeners):
                got = wait_for_notifications(conn, 1)
                assert [(n.channel, n.payload) for n in got] == [(f"Hub Channel {i % 3}", f"to {i % 3}")], i
            time.sleep(0.2)
            for conn in listeners + busy + [notifier]:
                conn.poll()
                assert conn.notifies == [], "a notification reached a client twice or one that never listened"
            # UNLISTEN stops one client's delivery and nobody else's.
            with listeners[0].cursor() as cur:
                cur.execute('UNLISTEN "Hub Channel 0"')
            with notifier.cursor() as cur:
                cur.execute("""NOTIFY "Hub Channel 0", 'again'""")
            for conn in listeners[3::3]:
                assert [n.payload for n in wait_for_notifications(conn, 1)] == ["again"]
            time.sleep(0.2)
            listeners[0].poll()
            assert listeners[0].notifies == []
            # Every listener gone: the listener connection stops listening (UNLISTEN), in a while.
            for conn in listeners:
                conn.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                active = pg.sql("select query from pg_stat_activity where query like '%LISTEN %' "
                                "and backend_type = 'client backend' and pid <> pg_backend_pid()")
                if active and all(q[0].startswith("UNLISTEN") for q in active):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"the listener connection still listens: {active}")
        finally:
            for conn in listeners + busy + [notifier]:
                conn.close()


@transaction_only
def test_extended_protocol_listen_is_served_by_the_listener_connection(pg):
    # pgjdbc sends LISTEN as Parse/Bind/Describe/Execute/Sync of the unnamed statement: served by
    # the listener connection like a Query, so 3 such listeners over a pool of 1 leave the pool to
    # a busy client, and each gets the notification while idle.
    with pgsluice(pg, max_connections=1, acquire_timeout="300ms") as target:
        listeners = [login(target.port) for _ in range(3)]
        busy, notifier = psycopg2_clients(target, 2)
        try:
            for conn in listeners:
                conn.send(parse("", "LISTEN ext_channel") + bind("") + message(b"D", b"P\0") + execute() + SYNC)
                replies = conn.read_until_ready()
                assert [kind for kind, _ in replies] == [b"1", b"2", b"n", b"C", b"Z"], replies
                assert replies[3][1] == b"LISTEN\0"
            for n in range(5):
                assert scalar(busy, "select %s::int", n) == n
            with notifier.cursor() as cur:
                cur.execute("NOTIFY ext_channel, 'hello'")
            for conn in listeners:
                kind, payload = conn.read_message(timeout=5)
                assert kind == b"A" and payload[4:] == b"ext_channel\0hello\0", (kind, payload)
            # The unnamed statement is the LISTEN for the client, as on its own connection.
            listeners[0].send(bind("") + execute() + SYNC)
            assert [kind for kind, _ in listeners[0].read_until_ready()] == [b"2", b"C", b"Z"]
        finally:
            for conn in listeners:
                conn.close()
            busy.close()
            notifier.close()


@transaction_only
def test_listen_and_unlisten_churn_on_shared_channels_leaves_every_listener_served(pg):
    # Clients LISTEN and UNLISTEN the same channels at once: the listener connection's LISTENs and
    # UNLISTENs interleave. Whoever listens at the end gets the notification, once.
    with pgsluice(pg, max_connections=2) as target:
        clients = psycopg2_clients(target, 12)
        notifier, = psycopg2_clients(target, 1)
        try:
            def churn(i: int) -> None:
                with clients[i].cursor() as cur:
                    for n in range(25):
                        cur.execute(f"LISTEN churn_{n % 3}")
                        if n % 2:
                            cur.execute(f"UNLISTEN churn_{(n + i) % 3}")
                        else:
                            cur.execute("UNLISTEN *")
                    cur.execute("LISTEN churn_final")

            assert run_clients(12, churn) == []
            for conn in clients:
                conn.poll()
                conn.notifies.clear()
            with notifier.cursor() as cur:
                cur.execute("NOTIFY churn_final, 'last'")
            for i, conn in enumerate(clients):
                assert [n.payload for n in wait_for_notifications(conn, 1)] == ["last"], i
            time.sleep(0.2)
            for conn in clients:
                conn.poll()
                assert [n.channel for n in conn.notifies if n.channel == "churn_final"] == []
        finally:
            for conn in clients + [notifier]:
                conn.close()


@transaction_only
def test_a_notification_waits_for_the_end_of_the_listeners_transaction(pg):
    with pgsluice(pg, max_connections=3) as target:
        listener, notifier = psycopg2_clients(target, 2)
        try:
            with listener.cursor() as cur:
                cur.execute("LISTEN tx_channel")
            listener.autocommit = False
            assert scalar(listener, "select 1") == 1  # a transaction is open now
            with notifier.cursor() as cur:
                cur.execute("NOTIFY tx_channel, 'later'")
            time.sleep(0.3)
            listener.poll()
            assert listener.notifies == [], "delivered in the middle of the client's transaction"
            listener.commit()
            assert [n.payload for n in wait_for_notifications(listener, 1)] == ["later"]
            listener.autocommit = True
            # A LISTEN inside a transaction block takes effect at COMMIT, and not at all after ROLLBACK
            # (it runs on the client's server connection, which it then keeps).
            listener.autocommit = False
            with listener.cursor() as cur:
                cur.execute("LISTEN rolled_back")
            listener.rollback()
            with listener.cursor() as cur:
                cur.execute("LISTEN in_block")
            listener.commit()
            listener.autocommit = True
            with notifier.cursor() as cur:
                cur.execute("NOTIFY rolled_back, 'no'; NOTIFY in_block, 'yes'")
            got = wait_for_notifications(listener, 1)
            time.sleep(0.2)
            listener.poll()
            assert [(n.channel, n.payload) for n in got + list(listener.notifies)] == [("in_block", "yes")]
        finally:
            listener.close()
            notifier.close()


@transaction_only
def test_a_lost_listener_connection_closes_its_listeners_who_can_listen_again(pg):
    with pgsluice(pg, max_connections=2) as target:
        listener, notifier = psycopg2_clients(target, 2)
        try:
            with listener.cursor() as cur:
                cur.execute("LISTEN lost_channel")
            killed = pg.sql("select pg_terminate_backend(pid) from pg_stat_activity where query like 'LISTEN %'")
            assert killed == [(True,)]
            # The client must know it may have missed notifications: its connection ends with an error.
            with pytest.raises(psycopg2.Error) as failure:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    wait_for_notifications(listener, 1, timeout=0.2)
                    scalar(listener, "select 1")
            # The FATAL that says why (libpq reports the closed connection; the log has the reason).
            assert failure.value.pgcode in (None, "08006"), failure.value
            assert "the listener connection of service" in target.proxy.log_text()
            again, = psycopg2_clients(target, 1)
            try:
                with again.cursor() as cur:
                    cur.execute("LISTEN lost_channel")
                with notifier.cursor() as cur:
                    cur.execute("NOTIFY lost_channel, 'back'")
                assert [n.payload for n in wait_for_notifications(again, 1)] == ["back"]
            finally:
                again.close()
        finally:
            listener.close()
            notifier.close()


@transaction_only
def test_sql_prepared_statements_are_each_clients_own(pg):
    with pgsluice(pg, max_connections=5) as target:
        def client(index: int) -> None:
            (conn,) = psycopg2_clients(target, 1)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"PREPARE acc_x (int) AS SELECT $1 * {index + 2}")
                for i in range(40):
                    assert scalar(conn, f"EXECUTE acc_x({i})") == i * (index + 2)
                with conn.cursor() as cur:
                    with pytest.raises(psycopg2.errors.DuplicatePreparedStatement) as duplicate:
                        cur.execute("PREPARE acc_x AS SELECT 0")
                    assert 'prepared statement "acc_x" already exists' in str(duplicate.value)
                    cur.execute("DEALLOCATE acc_x")
                    with pytest.raises(psycopg2.errors.InvalidSqlStatementName) as missing:
                        cur.execute("EXECUTE acc_x(1)")
                    assert 'prepared statement "acc_x" does not exist' in str(missing.value)
                    # Several statements in one query, the name reused after DEALLOCATE.
                    cur.execute(f"PREPARE acc_x AS SELECT {index}; EXECUTE acc_x")
                    assert cur.fetchone()[0] == index
            finally:
                conn.close()

        assert run_clients(30, client) == []


@transaction_only
def test_a_client_cannot_deallocate_the_statements_pgsluice_shares(pg):
    with pgsluice(pg, max_connections=1) as target:
        with login(target.port) as sharer, login(target.port) as vandal:
            sharer.send(parse("shared_stmt", "SELECT 7") + bind("shared_stmt") + execute() + SYNC)
            assert data_rows(sharer.read_until_ready()) == [["7"]]
            names = [row[0] for row in data_rows(vandal.query("select name from pg_prepared_statements"))]
            server_names = [name for name in names if name.startswith("pgsluice_")]
            assert server_names, names
            for name in server_names:
                replies = vandal.query(f'DEALLOCATE "{name}"')
                assert [e["C"] for e in errors(replies)] == ["26000"]
                assert errors(replies)[0]["M"] == f'prepared statement "{name}" does not exist'
            for _ in range(20):
                sharer.send(bind("shared_stmt") + execute() + SYNC)
                replies = sharer.read_until_ready()
                assert not errors(replies), errors(replies)
                assert data_rows(replies) == [["7"]]


@transaction_only
def test_prepared_statements_a_client_keeps_are_bounded(pg):
    config = config_for(pg, max_connections=2)
    config["max_prepared_statements_per_client"] = 5
    config["max_prepared_statement_bytes_per_client"] = "64KB"
    target = start_pgsluice(pg, config)
    try:
        with login(target.port) as conn:
            for i in range(5):
                conn.send(parse(f"s{i}", f"SELECT {i}") + SYNC)
                assert not errors(conn.read_until_ready())
            conn.send(parse("s5", "SELECT 5") + bind("s5") + execute() + SYNC)
            replies = conn.read_until_ready()
            assert [e["C"] for e in errors(replies)] == ["53400"]
            assert "max_prepared_statements_per_client" in errors(replies)[0]["M"]
            # SQL PREPARE counts against the same limit; the client goes on.
            assert [e["C"] for e in errors(conn.query("PREPARE p AS SELECT 1"))] == ["53400"]
            assert data_rows(conn.query("select 42")) == [["42"]]
            conn.send(message(b"C", b"Ss0\0") + SYNC)
            conn.read_until_ready()
            conn.send(parse("s5", "SELECT 5") + bind("s5") + execute() + SYNC)
            assert data_rows(conn.read_until_ready()) == [["5"]]
        with login(target.port) as big:
            # 30 KiB statements: the byte budget (64 KB) holds two, the third is refused.
            filler = "x" * (30 * 1024)
            big.send(parse("b0", f"SELECT '{filler}'") + SYNC)
            assert not errors(big.read_until_ready())
            big.send(parse("b1", f"SELECT '{filler}', 1") + SYNC)
            assert not errors(big.read_until_ready())
            big.send(parse("b2", f"SELECT '{filler}', 2") + SYNC)
            assert [e["C"] for e in errors(big.read_until_ready())] == ["53400"]
    finally:
        stop_pgsluice(target)


@transaction_only
def test_a_known_literal_set_is_kept_without_a_probe_and_undone_by_a_rollback(pg):
    # The first run of a literal SET is read back by a probe; later runs (any client) are not,
    # and must still follow what the transaction around them did.
    with pgsluice(pg, max_connections=2) as target:
        teacher, mine, other = psycopg2_clients(target, 3)
        try:
            default = scalar(other, "show work_mem")
            with teacher.cursor() as cur:
                cur.execute("SET work_mem = '73kB'")
            assert scalar(teacher, "show work_mem") == "73kB"
            with mine.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SET work_mem = '73kB'")
                assert scalar(mine, "show work_mem") == "73kB"
                cur.execute("ROLLBACK")
            for _ in range(5):
                assert scalar(mine, "show work_mem") == default
                assert scalar(other, "show work_mem") == default
            with mine.cursor() as cur:
                cur.execute("SET work_mem = '73kB'")
            for _ in range(10):
                assert scalar(mine, "show work_mem") == "73kB"
                assert scalar(other, "show work_mem") == default
                assert scalar(teacher, "show work_mem") == "73kB"
        finally:
            for conn in (teacher, mine, other):
                conn.close()


@transaction_only
def test_a_literal_set_the_client_ran_before_needs_no_server_connection(pg):
    # A transaction that begins with a SET the client has run before costs no lease for the SET: the
    # value is known and valid for this client, so pgsluice answers it and carries the value to the
    # client's next server connection. Shown with the only server connection held by another client.
    with pgsluice(pg, max_connections=1, acquire_timeout="300ms") as target:
        holder, mine, other = psycopg2_clients(target, 3)
        raw = login(target.port)
        set_extended = parse("", "SET work_mem = '82kB'") + bind("") + message(b"D", b"P\0") + execute() + SYNC
        try:
            default = scalar(other, "show work_mem")
            for _ in range(2):  # learned by a probe, then confirmed without one
                with mine.cursor() as cur:
                    cur.execute("SET work_mem = '81kB'")
                with other.cursor() as cur:
                    cur.execute("SET work_mem = '82kB'")
                raw.send(set_extended)
                assert not errors(raw.read_until_ready())
            with other.cursor() as cur:
                cur.execute("RESET work_mem")

            with holder.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT 1")
            # Answered here, at once, in the simple and the extended protocol.
            with mine.cursor() as cur:
                cur.execute("SET work_mem = '81kB'")
                assert cur.statusmessage == "SET"
            raw.send(set_extended)
            replies = raw.read_until_ready()
            assert [kind for kind, _ in replies] == [b"1", b"2", b"n", b"C", b"Z"], replies
            assert replies[3][1] == b"SET\0" and replies[4][1] == b"I"
            # Another text, or the same text from a client that never ran it: the server says.
            for conn, sql in ((mine, "SET work_mem = '83kB'"), (other, "SET work_mem = '81kB'")):
                with pytest.raises(psycopg2.OperationalError) as failure:
                    with conn.cursor() as cur:
                        cur.execute(sql)
                assert failure.value.pgcode == "53300", failure.value
            with holder.cursor() as cur:
                cur.execute("COMMIT")

            assert scalar(mine, "show work_mem") == "81kB"
            assert scalar(other, "show work_mem") == default
            # The raw client's unnamed statement is its SET, though no server parsed it there.
            raw.send(bind("") + execute() + SYNC)
            replies = raw.read_until_ready()
            assert [kind for kind, _ in replies] == [b"2", b"C", b"Z"], replies
            assert data_rows(raw.query("SHOW work_mem")) == [["82kB"]]
            # A value changed meanwhile by another text: the known SET sets it back.
            with mine.cursor() as cur:
                cur.execute("SET work_mem = '84kB'")
                cur.execute("SET work_mem = '81kB'")
            assert scalar(mine, "show work_mem") == "81kB"
            # RESET ALL (as any change read back by a probe) makes the server confirm SETs again.
            with mine.cursor() as cur:
                cur.execute("RESET ALL")
            with holder.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT 1")
            with pytest.raises(psycopg2.OperationalError) as failure:
                with mine.cursor() as cur:
                    cur.execute("SET work_mem = '81kB'")
            assert failure.value.pgcode == "53300", failure.value
            with holder.cursor() as cur:
                cur.execute("COMMIT")
            assert scalar(mine, "show work_mem") == default
        finally:
            raw.close()
            for conn in (holder, mine, other):
                conn.close()


@transaction_only
def test_sql_prepare_through_psycopg3_extended_protocol(pg):
    import psycopg

    with pgsluice(pg, max_connections=2) as target:
        base = f"host=127.0.0.1 port={target.port} user=pooled dbname=postgres connect_timeout=10"

        def client(index: int) -> None:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f"PREPARE q3 (int) AS SELECT $1 * {index + 3}")
                for i in range(20):
                    # (Postgres takes no $n parameters in EXECUTE: the value is spelled in the text.)
                    assert conn.execute(f"EXECUTE q3({i})").fetchone()[0] == i * (index + 3)
                conn.execute("DEALLOCATE q3")
                with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                    conn.execute("EXECUTE q3(1)")

        assert run_clients(8, client) == []
