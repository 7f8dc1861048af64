"""The admin console (issue 16, DESIGN §6): `psql -U admin pgsluice` shows each SHOW as a table;
only admin.users (SCRAM) get in; PAUSE / RESUME / RELOAD / SHUTDOWN do what they name."""
from __future__ import annotations

import json
import os
import subprocess
import time

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)
if POOL_MODE != "transaction":
    pytest.skip("runs in the transaction-mode pass", allow_module_level=True)

ADMIN_PASSWORD = "admin-secret-4711"


def admin_config(pg) -> dict:
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", max_connections=4,
                                   acquire_timeout="500ms")
    config["users"]["admin"] = {"password": ADMIN_PASSWORD}
    config["users"]["trustadmin"] = {"auth": "trust"}
    config["admin"] = {"users": ["admin", "trustadmin"]}
    return config


def psql(port: int, sql: str, user: str = "admin", password: str | None = ADMIN_PASSWORD, aligned: bool = True):
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "pgsluice",
            "-c", sql]
    if not aligned:
        argv[1:1] = ["-A", "-t", "-F", "|"]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)


def rows(port: int, sql: str) -> list[list[str]]:
    proc = psql(port, sql, aligned=False)
    assert proc.returncode == 0, proc.stderr
    return [line.split("|") for line in proc.stdout.splitlines() if line]


@pytest.fixture
def console(pg):
    config = admin_config(pg)
    target = start_pgsluice(pg, config)
    try:
        yield target, config
    finally:
        if target.proxy.alive():
            stop_pgsluice(target)
        else:
            target.proxy.cleanup()


def test_each_show_is_a_table_psql_prints(console):
    target, _ = console
    app = psycopg2.connect(target.proxy.dsn("app"))
    app.autocommit = True
    app.cursor().execute("select 1")
    for command, header in (("SHOW POOLS", "service | database | user | pool_mode"),
                            ("SHOW STATS", "service | total_xact_count | total_query_count"),
                            ("SHOW BREAKERS", "backend | state   | consecutive_failures"),
                            ("SHOW CONFIG", "key"),
                            ("SHOW VERSION", "version"),
                            ("SHOW CLIENTS", "addr | user | database | service | state"),
                            ("SHOW SERVERS", "service | backend | state | server_pid")):
        proc = psql(target.port, command)
        assert proc.returncode == 0, (command, proc.stderr)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert lines[0].strip().startswith(header.split(" | ")[0]), (command, proc.stdout)
        assert all(word in lines[0] for word in header.replace("|", " ").split()), (command, lines[0])
        assert set(lines[1]) <= set("-+"), (command, proc.stdout)  # psql's table rule
        assert lines[-1].startswith("(") and "row" in lines[-1], (command, proc.stdout)
    pools = {r[0]: r for r in rows(target.port, "show pools")}
    assert pools["app"][1:5] == ["app", "app", "transaction", "primary"], pools["app"]
    assert pools["app"][11] == "4"  # max_connections
    stats = {r[0]: r for r in rows(target.port, "SHOW STATS;")}
    assert int(stats["app"][1]) >= 1 and int(stats["app"][2]) >= 1, stats["app"]
    assert rows(target.port, "show breakers") == [["primary", "closed", "0", rows(target.port, "show breakers")[0][3],
                                                   "0", "0", "0"]]
    config_text = psql(target.port, "SHOW CONFIG").stdout
    assert "services.app.max_connections" in config_text and "admin.users" in config_text
    for secret in (ADMIN_PASSWORD, pgharness.password_for("app")):
        assert secret not in config_text  # never a secret
    assert rows(target.port, "show version")[0][0].startswith("pgsluice ")
    # SHOW CLIENTS / SERVERS: the app client holding its server connection in a transaction.
    with app.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("select pg_backend_pid()")
        pid = str(cur.fetchone()[0])
    clients = rows(target.port, "SHOW CLIENTS")
    mine = [r for r in clients if r[1] == "app"]
    assert len(mine) == 1 and mine[0][2:8] == ["app", "app", "active", "in transaction", mine[0][6], pid], clients
    assert any(r[1] == "admin" and r[4] == "admin" for r in clients), clients
    servers = rows(target.port, "SHOW SERVERS")
    active = [r for r in servers if r[2] == "active"]
    assert len(active) == 1 and active[0][:4] == ["app", "primary", "active", pid], servers
    assert active[0][6] == mine[0][0]  # the client's address
    app.cursor().execute("COMMIT")
    servers = rows(target.port, "SHOW SERVERS")
    assert [r[:4] for r in servers if r[0] == "app"] == [["app", "primary", "idle", pid]], servers
    assert [r for r in rows(target.port, "SHOW CLIENTS") if r[1] == "app"][0][4:6] == ["idle", "idle"]
    unknown = psql(target.port, "SHOW NOTHING")
    assert unknown.returncode != 0 and "unknown SHOW nothing" in unknown.stderr
    app.close()


def test_only_admin_users_with_scram_get_in(console):
    target, _ = console
    refused = psql(target.port, "SHOW POOLS", user="app", password=pgharness.password_for("app"))
    assert refused.returncode != 0 and "may not use the admin console" in refused.stderr, refused.stderr
    wrong = psql(target.port, "SHOW POOLS", password="not-the-password")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
    trust = psql(target.port, "SHOW POOLS", user="trustadmin", password=None)
    assert trust.returncode != 0 and "needs scram-sha-256" in trust.stderr, trust.stderr
    with pytest.raises(psycopg2.OperationalError) as failure:
        psycopg2.connect(host="127.0.0.1", port=target.port, user="trusty", dbname="pgsluice", connect_timeout=10)
    assert "may not use the admin console" in str(failure.value)
    # The console is not a way to the database.
    proc = psql(target.port, "select 1")
    assert proc.returncode != 0 and "unknown command" in proc.stderr


def test_pause_resume_and_reload_do_what_they_name(console):
    target, config = console
    app = psycopg2.connect(target.proxy.dsn("app"))
    app.autocommit = True
    assert psql(target.port, "PAUSE app").returncode == 0
    assert rows(target.port, "show pools")[0][12] == "t"
    with pytest.raises(psycopg2.OperationalError) as failure:  # waits acquire_timeout, then 53300
        app.cursor().execute("select 1")
    assert failure.value.pgcode == "53300" and "paused" in str(failure.value), failure.value
    assert psql(target.port, "RESUME app").returncode == 0
    with app.cursor() as cur:
        cur.execute("select 42")
        assert cur.fetchone() == (42,)
    missing = psql(target.port, "PAUSE nosuch")
    assert missing.returncode != 0 and 'no service "nosuch"' in missing.stderr

    # RELOAD applies the file: a new max_connections shows in SHOW POOLS.
    config["services"]["app"]["max_connections"] = 7
    target.proxy.config_path.write_text(json.dumps(config))
    assert psql(target.port, "RELOAD").returncode == 0
    assert {r[0]: r for r in rows(target.port, "show pools")}["app"][11] == "7"
    # A bad file: RELOAD fails with the file's errors, the running configuration stays.
    target.proxy.config_path.write_text(json.dumps({**config, "wrkers": 2}))
    bad = psql(target.port, "RELOAD")
    assert bad.returncode != 0 and "RELOAD failed" in bad.stderr and "wrkers" in bad.stderr, bad.stderr
    with app.cursor() as cur:
        cur.execute("select 43")
        assert cur.fetchone() == (43,)
    app.close()


def test_shutdown_drains_and_exits(console):
    target, _ = console
    proc = psql(target.port, "SHUTDOWN")
    assert proc.returncode == 0, proc.stderr
    assert target.proxy.wait_exit(15) == 0
    assert "admin console: SHUTDOWN" in target.proxy.log_text()
