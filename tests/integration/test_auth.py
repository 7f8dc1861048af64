"""Authentication: clients to pgsluice (SCRAM-SHA-256, MD5, trust; failures as Postgres reports
them) and pgsluice to Postgres (SCRAM-SHA-256, MD5, cleartext password, trust)."""
from __future__ import annotations

import re
import time
from contextlib import closing

import psycopg2
import pytest

import pgharness

# pgsluice logs in to Postgres as each of these roles; pg_hba.conf gives each its own method.
SERVER_METHODS = {"scram_user": "scram-sha-256", "md5_user": "md5", "plain_user": "password", "trust_user": "trust"}


def pgsluice_config(config, pg):
    for role in SERVER_METHODS:
        # Clients log in to pgsluice with SCRAM as `role` and land on database `postgres` as `role`.
        config["users"][role] = {"password": pgharness.password_for(role)}
        service = {"backend": "primary", "match": {"user": role, "database": "postgres"}, "server_user": role,
                   "server_database": "postgres", "mode": config["services"]["app"]["mode"],
                   "max_connections": 5, "min_connections": 0}
        if role != "trust_user":  # trust needs no server password
            service["server_password"] = pgharness.password_for(role)
        config["services"][role] = service


def connect(target, name="app", **overrides):
    conn = psycopg2.connect(target.dsn(name, connect_timeout=10, **overrides))
    conn.autocommit = True
    return conn


def scalar(conn, query):
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


def raw_login_error(target, user, database, password) -> tuple[pgharness.PgError, list[int]]:
    """Logs in over a raw socket expecting an ErrorResponse; returns it and the auth requests seen.
    Also checks that the server closes the connection after a FATAL."""
    with target.raw() as conn:
        with pytest.raises(pgharness.PgError) as err:
            conn.startup(user, database, password)
        assert conn.read_until_closed(5) == []
        return err.value, conn.auth_requests


def test_server_roles_store_the_password_kinds_the_methods_need(pg):
    stored = dict(pg.sql("select rolname, rolpassword from pg_authid where rolname = any(%s)",
                         params=(list(pgharness.ROLES),)))
    assert stored["md5_user"].startswith("md5") and len(stored["md5_user"]) == 35
    for role in ("scram_user", "plain_user", "app"):
        assert stored[role].startswith("SCRAM-SHA-256$4096:")


# -- client side: pgsluice authenticates its clients ---------------------------------------------

def test_scram_client_with_libpq(target):
    with closing(connect(target, "app")) as conn:
        assert scalar(conn, "select current_user") == "app"
    login = target.login("app")
    with target.raw() as raw:
        raw.startup(login.user, login.database, login.password)
        assert raw.auth_requests == [10, 11, 12, 0]  # SASL, SASLContinue, SASLFinal (signature checked), Ok
        assert "SCRAM-SHA-256" in raw.sasl_mechanisms
        assert raw.backend_key is not None
        assert pgharness.rows_of(raw.query("select 40 + 2")) == [["42"]]


def test_md5_client_with_libpq(target):
    with closing(connect(target, "md5")) as conn:
        assert scalar(conn, "select 1") == 1
    login = target.login("md5")
    with target.raw() as raw:
        raw.startup(login.user, login.database, login.password)
        assert raw.auth_requests == [5, 0]  # AuthenticationMD5Password, then Ok


def test_md5_client_with_wrong_password_gets_28p01(target):
    login = target.login("md5")
    err, requests = raw_login_error(target, login.user, login.database, "wrong")
    assert (err.sqlstate, err.fields.get("S"), requests) == ("28P01", "FATAL", [5])


def test_trust_client_needs_no_password(target):
    with closing(connect(target, "trust", password=None)) as conn:
        assert scalar(conn, "select 1") == 1
    login = target.login("trust")
    with target.raw() as raw:
        raw.startup(login.user, login.database, None)
        assert raw.auth_requests == [0]


@pytest.mark.parametrize("name", ["app", "md5"])
def test_a_login_that_arrives_in_pieces_works(target, name):
    """The startup packet and each answer to a challenge cut in pieces that arrive apart (SCRAM and
    md5): each piece is a read of its own, the login goes on where it stopped."""
    login = target.login(name)
    with target.raw() as raw:
        packet = pgharness.startup_packet({"user": login.user, "database": login.database})
        for piece in (packet[:3], packet[3:11], packet[11:]):
            raw.send(piece)
            time.sleep(0.05)
        send_whole = raw.send

        def send_in_two(data: bytes) -> None:
            send_whole(data[:3])
            time.sleep(0.05)
            send_whole(data[3:])

        raw.send = send_in_two
        raw.authenticate(login.user, login.password)
        raw.send = send_whole
        assert pgharness.rows_of(raw.query("select 'in pieces'")) == [["in pieces"]]


def test_a_query_sent_with_the_startup_packet_is_answered_after_the_login(target):
    """What arrives with the login's last message (here a Query in the startup packet's segment, for
    a trust user) is the first thing the session serves once logged in."""
    login = target.login("trust")
    with target.raw() as raw:
        raw.send(pgharness.startup_packet({"user": login.user, "database": login.database})
                 + pgharness.message(b"Q", b"select 'sent with the startup packet'\0"))
        raw.authenticate(login.user, None)
        assert pgharness.rows_of(raw.read_until_ready()) == [["sent with the startup packet"]]
        assert pgharness.rows_of(raw.query("select 'and after'")) == [["and after"]]


def test_wrong_password_is_refused_with_28p01(target):
    login = target.login("app")
    with pytest.raises(psycopg2.OperationalError):
        connect(target, "app", password="not-the-password")
    err, requests = raw_login_error(target, login.user, login.database, "not-the-password")
    assert err.sqlstate == "28P01"
    assert err.fields.get("S") == "FATAL"
    assert requests[0] == 10  # the SCRAM exchange was offered before the refusal


def normalised(text: str, user: str) -> str:
    return text.replace(f'"{user}"', '"<user>"').replace(f" {user}", " <user>")


def test_unknown_user_gets_the_same_28p01_text_as_a_wrong_password(target):
    login = target.login("app")
    wrong, _ = raw_login_error(target, login.user, login.database, "bad-password")
    unknown, _ = raw_login_error(target, "no_such_user_x", login.database, "bad-password")
    assert unknown.sqlstate == wrong.sqlstate == "28P01"
    assert normalised(unknown.message, "no_such_user_x") == normalised(wrong.message, login.user)
    # And libpq shows the same text.
    texts = []
    for user in (login.user, "no_such_user_x"):
        with pytest.raises(psycopg2.OperationalError) as err:
            psycopg2.connect(pgharness.libpq_dsn(target.host, target.port, user, "bad-password", login.database))
        texts.append(normalised(str(err.value).split("failed: ", 1)[-1], user))
    assert texts[0] == texts[1]


def test_unknown_user_goes_through_the_same_exchange_as_a_wrong_password(target):
    # As Postgres does (a mock SCRAM exchange): the refusal comes at the same step, so a client
    # cannot probe which user names exist.
    login = target.login("app")
    _, wrong_requests = raw_login_error(target, login.user, login.database, "bad-password")
    _, unknown_requests = raw_login_error(target, "no_such_user_x", login.database, "bad-password")
    assert unknown_requests == wrong_requests == [10, 11]


def test_unknown_database_is_refused_with_3d000(target):
    login = target.login("app")
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(target, "app", dbname="no_such_db_x")
    assert "no_such_db_x" in str(err.value)
    err, _ = raw_login_error(target, login.user, "no_such_db_x", login.password)
    assert err.sqlstate == "3D000"
    assert err.fields.get("S") == "FATAL"
    assert "no_such_db_x" in err.message


def test_startup_without_user_is_refused(target):
    with target.raw() as raw:
        raw.send(pgharness.startup_packet({"database": "app"}))
        fields = raw.expect_rejected(5)
    assert fields is None or fields["C"] in ("28000", "08P01"), fields


# -- server side: pgsluice authenticates to Postgres ----------------------------------------------

def auth_log_lines(pg, pid: int) -> list[str]:
    deadline = time.monotonic() + 3
    while True:
        lines = [line for line in pg.log_text().splitlines() if f"[{pid}] " in line]
        if any("connection authorized" in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("role", list(SERVER_METHODS))
def test_server_side_auth_method(target, pg, role):
    with closing(connect(target, role)) as conn:
        assert scalar(conn, "select current_user") == role
        assert scalar(conn, "select current_database()") == "postgres"
        pid = scalar(conn, "select pg_backend_pid()")
    lines = auth_log_lines(pg, pid)
    authenticated = [m.group(1) for line in lines
                     if (m := re.search(r"connection authenticated: .* method=(\S+)", line))]
    assert any("connection authorized: user=" + role in line for line in lines), lines
    if SERVER_METHODS[role] == "trust":
        assert authenticated == [], lines
    else:
        assert authenticated == [SERVER_METHODS[role]], lines


@pytest.mark.proxy_only
def test_log_holds_no_secrets(target):
    text = target.log_text()
    assert text, "empty pgsluice log"
    for secret in ["secret-app", *(pgharness.password_for(r) for r in SERVER_METHODS), "bad-password",
                   "not-the-password"]:
        assert secret not in text
