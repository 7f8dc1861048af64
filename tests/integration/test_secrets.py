"""Secrets and values never leave pgsluice (issue 17, DESIGN §5, §8): after a run at log level
trace that used every kind of secret — plain passwords of SCRAM and MD5 users, a stored SCRAM
verifier, a server password, a TLS private key — and statements with parameter values (through the
relay, the coalescer and failed casts that quote the value in the server's error), none of them
appears in pgsluice's log, in the admin console's SHOW CONFIG, in /metrics, or in an error message
pgsluice itself wrote (its own errors and FATALs start with "pgsluice:").
"""
from __future__ import annotations

import base64
import os
import subprocess
import urllib.request
from contextlib import closing

import psycopg
import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)
if POOL_MODE != "transaction":
    pytest.skip("runs in the transaction-mode pass", allow_module_level=True)

PSQL = "/usr/lib/postgresql/15/bin/psql"
ADMIN_PASSWORD = "admin-Secret-9931"
PARAMETER_VALUES = ["param-Value-5521", "param-Value-7781", "NotAnInt-6612"]


@pytest.fixture(scope="module")
def run(pg, tmp_path_factory):
    """pgsluice at log level trace with every kind of secret, after a workload that used them all."""
    certs = tmp_path_factory.mktemp("secrets-tls")
    ca = pgharness.make_ca(certs / "ca")
    cert, key = pgharness.make_certificate(certs / "proxy", "proxy", ca)
    verifier = pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'scram_user'")[0][0]
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", coalesce={"enabled": True})
    config["log"] = {"level": "trace"}
    config["tls"] = {"mode": "allow", "cert": str(cert), "key": str(key)}
    config["users"]["verified"] = {"scram_verifier": verifier}
    config["users"]["admin"] = {"password": ADMIN_PASSWORD}
    config["admin"] = {"users": ["admin"]}
    server = {k: v for k, v in config["services"]["app"].items() if k not in ("match", "max_connections")}
    config["services"]["verified"] = {**server, "match": {"user": "verified", "database": "app"},
                                      "max_connections": 5}
    metrics_port = pgharness.free_port()
    config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    target = start_pgsluice(pg, config)
    outputs: list[str] = []  # what clients were told
    try:
        # Logins of every kind, good and bad, plain and TLS.
        for name, sslmode in (("app", "require"), ("md5", "disable"), ("app", "disable")):
            with closing(psycopg2.connect(target.dsn(name, sslmode=sslmode))) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        with closing(psycopg2.connect(pgharness.libpq_dsn("127.0.0.1", target.port, "verified",
                                                          pgharness.password_for("scram_user"), "app"))) as conn:
            conn.cursor().execute("SELECT 1")
        for user, password in (("app", "wrong-Password-1"), ("nobody", "wrong-Password-2"), ("md5client", "x-wrong")):
            with pytest.raises(psycopg2.OperationalError) as failed:
                psycopg2.connect(pgharness.libpq_dsn("127.0.0.1", target.port, user, password, "app"))
            outputs.append(str(failed.value))
        # Parameter values: relayed, coalesced, and quoted back by a failed cast.
        with psycopg.connect(target.dsn("app"), autocommit=True) as conn:
            for value in PARAMETER_VALUES[:2]:
                assert conn.execute("SELECT %s::text", [value]).fetchone() == (value,)
                assert conn.execute("SELECT %s::text AS v FROM pg_class WHERE relname = 'pg_class'",
                                    [value]).fetchone() == (value,)
            with pytest.raises(psycopg.errors.InvalidTextRepresentation) as failed:
                conn.execute("SELECT %s::int", [PARAMETER_VALUES[2]])
            outputs.append(str(failed.value))  # the server's own error: it may quote the value
        show_config = subprocess.run(
            [PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(target.port), "-U", "admin", "-d", "pgsluice",
             "-c", "SHOW CONFIG"], capture_output=True, text=True, timeout=30,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "PGPASSWORD": ADMIN_PASSWORD})
        assert show_config.returncode == 0, show_config.stderr
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        yield {"target": target, "log": target.log_text(), "show_config": show_config.stdout, "metrics": metrics,
               "outputs": outputs, "verifier": verifier, "key": key.read_text(), "config": config}
    finally:
        stop_pgsluice(target)


def secrets_of(run) -> dict[str, str]:
    """Every secret the run used, and the distinctive parts of the structured ones."""
    out = {
        "app password": "secret-app",
        "admin password": ADMIN_PASSWORD,
        "server password": pgharness.password_for("app"),
        "scram_user password": pgharness.password_for("scram_user"),
        "wrong password 1": "wrong-Password-1",
        "wrong password 2": "wrong-Password-2",
        "md5 wrong password": "x-wrong",
        "verifier": run["verifier"],
    }
    # The verifier's salt, StoredKey and ServerKey (SCRAM-SHA-256$i:salt$StoredKey:ServerKey).
    salt_and_keys = run["verifier"].split("$", 1)[1]
    _, salt = salt_and_keys.split("$")[0].split(":")
    stored, server = salt_and_keys.split("$")[1].split(":")
    out.update({"verifier salt": salt, "StoredKey": stored, "ServerKey": server})
    # The private key's body, line by line (any 40 characters of it would do).
    body = [line for line in run["key"].splitlines() if line and not line.startswith("-----")]
    for i, line in enumerate(body):
        out[f"TLS key line {i}"] = line[:40]
    out["TLS key bytes"] = base64.b64decode("".join(body)).hex()[:40]
    for value in PARAMETER_VALUES:
        out[f"parameter {value}"] = value
    return out


@pytest.mark.parametrize("where", ["log", "show_config", "metrics"])
def test_no_secret_or_value_is_shown(run, where):
    text = run[where]
    assert text
    found = [name for name, secret in secrets_of(run).items() if secret and secret in text]
    assert not found, f"{where} shows: {found}"


def test_pgsluices_own_error_messages_hold_no_secret(run):
    secrets = secrets_of(run)
    # The failed cast's error is the server's own reply to that client (it quotes the value, as
    # Postgres does); pgsluice's own messages are the login failures.
    own = [text for text in run["outputs"] if "NotAnInt" not in text]
    assert own
    for text in own:
        found = [name for name, secret in secrets.items() if secret in text]
        assert not found, f"{text!r} shows {found}"
    assert any("password authentication failed" in text for text in own)


def test_the_log_was_verbose(run):
    """The run really logged at trace (a quiet log proves nothing)."""
    assert " trace " in run["log"] or " debug " in run["log"], run["log"][-2000:]
