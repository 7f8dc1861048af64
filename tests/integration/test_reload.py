"""Live reload on SIGHUP (issue 5, DESIGN §5): a valid file is applied without dropping clients —
pools resized in place, services added and removed, new server credentials picked up — and an
invalid one is logged and the running configuration stays. The pool's server side logs in as its
own role, so pg_stat_activity shows exactly what pgsluice holds."""
from __future__ import annotations

import signal
import threading
import time

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)

ROLE = "plain_user"        # the server role of service "reload"
OTHER_ROLE = "trust_user"  # the server role of services added or switched to by a reload


def service(user: str, role: str = ROLE, **settings) -> dict:
    return {
        "backend": "primary",
        "match": {"user": user, "database": "postgres"},
        "server_user": role,
        "server_password": pgharness.password_for(role),
        "server_database": "postgres",
        "mode": POOL_MODE,
        **settings,
    }


def config_for(pg, **settings) -> dict:
    config = pgharness.base_config(pg, pgharness.free_port())
    config["users"] = {"reloader": {"auth": "trust"}, "newbie": {"auth": "trust"}}
    config["services"] = {"reload": service("reloader", **settings)}
    return config


def connect(target, user="reloader"):
    conn = psycopg2.connect(f"host=127.0.0.1 port={target.port} user={user} dbname=postgres connect_timeout=10")
    conn.autocommit = True
    return conn


def held(pg, role=ROLE) -> int:
    return pg.sql(f"select count(*) from pg_stat_activity where usename = '{role}'")[0][0]


def reload(target, config) -> None:
    before = target.log_text().count("reload: applied")
    target.proxy.write_config(config)
    target.proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while target.log_text().count("reload: applied") == before:
        assert time.monotonic() < deadline, "no 'reload: applied' in the log:\n" + target.log_text()[-3000:]
        time.sleep(0.02)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.skipif(POOL_MODE == "session", reason="transaction pooling: clients share the resized pool")
def test_sighup_resizes_the_pool_under_load_without_a_client_error(pg):
    config = config_for(pg, max_connections=3, acquire_timeout="10s")
    target = start_pgsluice(pg, config)
    stop = threading.Event()
    errors: list[str] = []
    done = [0]

    def load(index):
        try:
            conn = connect(target)
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("select %s::int, pg_sleep(0.03)", (index,))
                    if cur.fetchone()[0] != index:
                        errors.append(f"client {index}: wrong result")
                    done[0] += 1
            conn.close()
        except Exception as e:  # any error is a failure: a reload must not drop or fail a client
            errors.append(f"client {index}: {e!r}")

    peak = {"phase": 0}
    peaks = {1: 0, 2: 0, 3: 0}

    def sample():
        while not stop.is_set():
            count = held(pg)
            phase = peak["phase"]
            if phase in peaks:
                peaks[phase] = max(peaks[phase], count)
            time.sleep(0.01)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(12)]
    sampler = threading.Thread(target=sample)
    try:
        peak["phase"] = 1
        for t in threads:
            t.start()
        sampler.start()
        wait_for(lambda: held(pg) == 3, 5, "the pool never reached its max of 3")
        time.sleep(1.0)

        peak["phase"] = 0  # the switch itself: not attributed to either limit
        config["services"]["reload"]["max_connections"] = 8
        reload(target, config)
        peak["phase"] = 2
        wait_for(lambda: held(pg) == 8, 5, "the raised max of 8 never showed in pg_stat_activity")
        time.sleep(1.0)

        peak["phase"] = 0
        config["services"]["reload"]["max_connections"] = 2
        reload(target, config)
        # Connections above the new max are closed as their transactions end.
        wait_for(lambda: held(pg) <= 2, 5, "connections above the lowered max of 2 were not closed")
        peak["phase"] = 3
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
        sampler.join(timeout=5)
    try:
        assert not errors, errors
        assert done[0] > 100
        assert peaks[1] == 3, peaks
        assert peaks[2] == 8, peaks
        assert peaks[3] <= 2, peaks
        assert "services added: none; removed: none; changed: reload" in target.log_text()
    finally:
        stop_pgsluice(target)


@pytest.mark.skipif(POOL_MODE != "session", reason="session pooling: each client holds its connection")
def test_sighup_resizes_session_pools_without_dropping_a_client(pg):
    config = config_for(pg, max_connections=3, acquire_timeout="10s")
    target = start_pgsluice(pg, config)
    try:
        clients = [connect(target) for _ in range(3)]
        assert held(pg) == 3
        # A fourth login waits for a connection; raising max serves it at once, not at acquire_timeout.
        fourth: dict = {}

        def login():
            start = time.monotonic()
            fourth["conn"] = connect(target)
            fourth["elapsed"] = time.monotonic() - start

        waiter = threading.Thread(target=login)
        waiter.start()
        time.sleep(0.5)
        assert "conn" not in fourth
        config["services"]["reload"]["max_connections"] = 8
        reload(target, config)
        waiter.join(timeout=10)
        assert fourth["elapsed"] < 3.0, fourth
        clients.append(fourth["conn"])
        clients += [connect(target) for _ in range(4)]
        assert held(pg) == 8

        # Lowering max drops nobody: every session keeps its connection and works.
        config["services"]["reload"]["max_connections"] = 2
        reload(target, config)
        for index, conn in enumerate(clients):
            with conn.cursor() as cur:
                cur.execute("select %s::int", (index,))
                assert cur.fetchone() == (index,)
        assert held(pg) == 8
        # As clients leave, their connections above the new max are closed, not kept idle.
        for conn in clients[2:]:
            conn.close()
        wait_for(lambda: held(pg) == 2, 5, "connections above the lowered max were kept")
        for conn in clients[:2]:
            conn.close()
    finally:
        stop_pgsluice(target)


def test_sighup_adds_and_removes_services(pg):
    config = config_for(pg, max_connections=3)
    target = start_pgsluice(pg, config)
    try:
        old = connect(target)
        with old.cursor() as cur:
            cur.execute("select 1")
        with pytest.raises(psycopg2.OperationalError) as refused:
            connect(target, user="newbie")
        assert "3D000" in str(refused.value) or "no service" in str(refused.value), refused.value

        # Add "added" (warm: min_connections open with no client) and remove "reload".
        config["services"] = {"added": service("newbie", OTHER_ROLE, max_connections=4, min_connections=2)}
        reload(target, config)
        assert "services added: added; removed: reload" in target.log_text()
        wait_for(lambda: held(pg, OTHER_ROLE) == 2, 5, "the added service's min_connections were not opened")
        newbie = connect(target, user="newbie")
        with newbie.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == (OTHER_ROLE,)
        newbie.close()

        # The removed service takes no new clients ...
        with pytest.raises(psycopg2.OperationalError) as gone:
            connect(target)
        assert "no service" in str(gone.value), gone.value
        if POOL_MODE == "session":
            # ... its session keeps the connection it holds until it leaves ...
            with old.cursor() as cur:
                cur.execute("select 2")
                assert cur.fetchone() == (2,)
            old.close()
        else:
            # ... and a transaction-mode client of it is told why (FATAL 57P01) at its next
            # statement and closed. psql prints that FATAL; psycopg2 shows only the closed socket,
            # so the code and text are checked in the log.
            with pytest.raises(psycopg2.OperationalError):
                with old.cursor() as cur:
                    cur.execute("select 2")
            assert 'closing the client: 57P01 pgsluice: service "reload" was removed by a configuration reload' \
                in target.log_text()
        # ... and its connections are closed, idle ones at once, leased ones when returned.
        wait_for(lambda: held(pg) == 0, 5, "the removed service's connections were kept")
        assert held(pg, OTHER_ROLE) == 2
    finally:
        stop_pgsluice(target)


def test_sighup_with_new_server_credentials_retires_old_connections(pg):
    config = config_for(pg, max_connections=3, min_connections=1)
    target = start_pgsluice(pg, config)
    try:
        client = connect(target)
        with client.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == (ROLE,)
        config["services"]["reload"]["server_user"] = OTHER_ROLE
        config["services"]["reload"]["server_password"] = pgharness.password_for(OTHER_ROLE)
        reload(target, config)
        fresh = connect(target)
        with fresh.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == (OTHER_ROLE,)
        if POOL_MODE == "session":
            with client.cursor() as cur:  # a session keeps the connection it was given
                cur.execute("select current_user")
                assert cur.fetchone() == (ROLE,)
        else:
            with client.cursor() as cur:  # its next transaction runs on a new-credential connection
                cur.execute("select current_user")
                assert cur.fetchone() == (OTHER_ROLE,)
        client.close()
        fresh.close()
        wait_for(lambda: held(pg) == 0, 5, "connections made with the old credentials were kept")
    finally:
        stop_pgsluice(target)


def test_sighup_with_an_invalid_config_keeps_the_running_one(pg):
    config = config_for(pg, max_connections=2, acquire_timeout="300ms")
    target = start_pgsluice(pg, config)
    try:
        client = connect(target)
        bad = {**config, "services": {"reload": {**config["services"]["reload"], "max_connections": 100000}}}
        target.proxy.write_config(bad)
        target.proxy.signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running configuration" in target.log_text(), 5, "no reload error logged")
        assert "reload: applied" not in target.log_text()
        # The old limit of 2 still holds: a third concurrent transaction waits and times out.
        if POOL_MODE == "transaction":
            holders = [connect(target) for _ in range(2)]
            for h in holders:
                h.autocommit = False
                h.cursor().execute("select 1")
            with pytest.raises(psycopg2.Error) as waited:
                client.cursor().execute("select 1")
            assert waited.value.pgcode == "53300", waited.value
            for h in holders:
                h.rollback()
                h.close()
        with client.cursor() as cur:
            cur.execute("select 7")
            assert cur.fetchone() == (7,)
        client.close()
    finally:
        stop_pgsluice(target)


def test_sighup_changing_restart_only_settings_warns_and_keeps_them(pg):
    config = config_for(pg, max_connections=2)
    target = start_pgsluice(pg, config)
    try:
        changed = {**config, "listen": f"127.0.0.1:{pgharness.free_port()}", "workers": 1}
        changed["services"] = {"reload": {**config["services"]["reload"], "max_connections": 3}}
        for attempt in (1, 2):  # warned at every reload, not only at the first
            reload(target, changed)
            log = target.log_text()
            assert log.count("listen, workers changed but only take effect after a restart") == attempt, log
        client = connect(target)  # still on the port it started with
        with client.cursor() as cur:
            cur.execute("select 1")
        client.close()
    finally:
        stop_pgsluice(target)
