"""TLS on both sides (issue 17, DESIGN §2): clients reach pgsluice with sslmode=require and
verify-full, Postgres 17's direct TLS (ALPN "postgresql") is accepted, `tls.mode: require` refuses
plain text with 28000; pgsluice reaches a Postgres that only accepts TLS (hostssl in pg_hba) and
pg_stat_ssl shows the server side encrypted; SCRAM channel binding (SCRAM-SHA-256-PLUS,
tls-server-end-point) is offered over TLS, and a binding to another certificate is refused; backend
verify-full refuses a certificate of another issuer; SIGHUP picks up a rotated certificate for new connections while existing ones go on.

The harness makes a throwaway CA and certificates with openssl; this module's Postgres is its own
(ssl = on, TCP logins only over TLS).
"""
from __future__ import annotations

import hashlib
import os
import pwd
import signal
import ssl
import struct
import subprocess
import time
from contextlib import closing

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


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    """A Postgres that accepts TCP logins over TLS only, and the certificates of the test CA."""
    certs = tmp_path_factory.mktemp("tls")
    ca = pgharness.make_ca(certs / "ca")
    other_ca = pgharness.make_ca(certs / "other", name="other")
    pg = pgharness.LocalPostgres(max_connections=100).start()
    try:
        server_dir = pg.root / "tls"
        server_dir.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(server_dir, pw.pw_uid, pw.pw_gid)
        server = pgharness.make_certificate(server_dir, "server", ca, owner="postgres")
        pg.sql("ALTER SYSTEM SET ssl = on")
        pg.sql(f"ALTER SYSTEM SET ssl_cert_file = '{server[0]}'")
        pg.sql(f"ALTER SYSTEM SET ssl_key_file = '{server[1]}'")
        hba = ["local all postgres trust", "hostssl all postgres 127.0.0.1/32 trust"]
        hba += [f"hostssl all {role} 127.0.0.1/32 {method}" for role, method in pgharness.ROLES.items()]
        hba += ["hostnossl all all 127.0.0.1/32 reject"]
        (pg.datadir / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        pg.sql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        pg.sql("CREATE EXTENSION IF NOT EXISTS sslinfo", db="app")
        proxy_cert = pgharness.make_certificate(certs / "proxy", "proxy", ca)
        yield pg, {"ca": ca, "other_ca": other_ca, "proxy": proxy_cert, "dir": certs}
    finally:
        pg.cleanup()


def tls_config(pg, certs, client_mode="require", backend_mode="verify-full", backend_ca=None):
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", max_connections=8)
    config["tls"] = {"mode": client_mode, "cert": str(certs["proxy"][0]), "key": str(certs["proxy"][1])}
    config["backends"]["primary"]["host"] = "localhost" if backend_mode == "verify-full" else "127.0.0.1"
    config["backends"]["primary"]["tls"] = {"mode": backend_mode, "ca": str(backend_ca or certs["ca"][0])}
    return config


@pytest.fixture(scope="module")
def proxy(tls_pg):
    pg, certs = tls_pg
    target = start_pgsluice(pg, tls_config(pg, certs))
    try:
        yield target, certs
    finally:
        stop_pgsluice(target)


def psql(target, sql, sslmode, **params):
    login = target.login("app")
    conninfo = pgharness.libpq_dsn(params.pop("host", "127.0.0.1"), target.port, login.user, login.password,
                                   login.database)
    conninfo += f" sslmode={sslmode}" + "".join(f" {k}={v}" for k, v in params.items())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run([PSQL, "-X", "-At", "-d", conninfo, "-c", sql], capture_output=True, text=True,
                          timeout=30, env=env)


SERVER_SIDE = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def test_psql_with_sslmode_require_reaches_an_encrypted_server_side(proxy):
    target, _ = proxy
    out = psql(target, SERVER_SIDE, "require")
    assert out.returncode == 0, out.stderr
    ssl_on, version = out.stdout.strip().split("|")
    assert ssl_on == "t" and version.startswith("TLSv1."), out.stdout


def test_psql_with_sslmode_verify_full_checks_pgsluice_certificate(proxy):
    target, certs = proxy
    out = psql(target, "SELECT 6 * 7", "verify-full", host="localhost", sslrootcert=certs["ca"][0])
    assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr
    # The same client trusting another CA refuses pgsluice's certificate.
    out = psql(target, "SELECT 1", "verify-full", host="localhost", sslrootcert=certs["other_ca"][0])
    assert out.returncode != 0 and "certificate verify failed" in out.stderr, out.stderr


def test_a_plain_client_is_refused_with_28000_when_tls_is_required(proxy):
    target, _ = proxy
    out = psql(target, "SELECT 1", "disable")
    assert out.returncode != 0
    assert "TLS is required (tls.mode require)" in out.stderr, out.stderr
    with target.raw() as raw:
        raw.send(pgharness.startup_packet({"user": "app", "database": "app"}))
        error = raw.expect_rejected()
        assert error is not None and error.get("C") == "28000", error


def tls_raw(target, *, direct, alpn=("postgresql",), cafile=None):
    """A RawConnection over TLS: after SSLRequest/'S', or direct (a ClientHello first)."""
    raw = target.raw()
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if not direct:
        raw.send(struct.pack("!ii", 8, pgharness.SSL_REQUEST_CODE))
        assert raw.read_byte() == b"S"
    raw.sock = context.wrap_socket(raw.sock, server_hostname="localhost")
    return raw


def test_postgres_17_direct_tls_with_alpn_postgresql_is_accepted(proxy):
    target, certs = proxy
    raw = tls_raw(target, direct=True, cafile=certs["ca"][0])
    try:
        assert raw.sock.selected_alpn_protocol() == "postgresql"
        raw.startup("app", "app", target.login("app").password)
        assert pgharness.rows_of(raw.query("SELECT 'direct'")) == [["direct"]]
    finally:
        raw.close()
    # Direct TLS without ALPN "postgresql" is refused (as Postgres 17 does).
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw = tls_raw(target, direct=True, alpn=("http/1.1",))
        raw.startup("app", "app", target.login("app").password)


def test_scram_over_tls_and_many_queries_through_one_connection(proxy):
    target, _ = proxy
    raw = tls_raw(target, direct=False)
    try:
        raw.startup("app", "app", target.login("app").password)
        assert "SCRAM-SHA-256" in raw.sasl_mechanisms
        # Results larger than a TLS record and than the socket buffers, both ways.
        big = "x" * 300_000
        rows = pgharness.rows_of(raw.query(f"SELECT length('{big}'), repeat('y', 1000000)"))
        assert rows[0][0] == "300000" and rows[0][1] == "y" * 1_000_000
        for i in range(200):
            assert pgharness.rows_of(raw.query(f"SELECT {i}")) == [[str(i)]]
    finally:
        raw.close()


def end_point(raw) -> bytes:
    """tls-server-end-point (RFC 5929): SHA-256 of the certificate the server showed (the test CA
    signs with SHA-256)."""
    return hashlib.sha256(raw.sock.getpeercert(binary_form=True)).digest()


PLUS = "SCRAM-SHA-256-PLUS"
BINDING = "p=tls-server-end-point,,"


def test_scram_channel_binding_is_offered_over_tls_and_binds_to_pgsluice_certificate(proxy):
    target, certs = proxy
    # libpq refuses to log in without channel binding when told so: pgsluice must offer and pass it.
    out = psql(target, "SELECT 'bound'", "verify-full", host="localhost", sslrootcert=certs["ca"][0],
               channel_binding="require")
    assert out.returncode == 0 and out.stdout.strip() == "bound", out.stderr
    password = target.login("app").password
    raw = tls_raw(target, direct=False)
    try:
        raw.startup("app", "app", password, sasl=(PLUS, BINDING, end_point(raw)))
        assert raw.sasl_mechanisms == [PLUS, "SCRAM-SHA-256"]  # Postgres's order
        assert pgharness.rows_of(raw.query("SELECT 'plus'")) == [["plus"]]
    finally:
        raw.close()
    # Direct TLS too.
    raw = tls_raw(target, direct=True)
    try:
        raw.startup("app", "app", password, sasl=(PLUS, BINDING, end_point(raw)))
        assert pgharness.rows_of(raw.query("SELECT 'direct plus'")) == [["direct plus"]]
    finally:
        raw.close()


@pytest.mark.parametrize("mechanism, gs2_header, data, says", [
    # A man in the middle: the client saw another certificate, so its hash is not pgsluice's.
    (PLUS, BINDING, hashlib.sha256(b"another certificate").digest(), "channel binding check failed"),
    (PLUS, BINDING, b"", "channel binding check failed"),
    (PLUS, "n,,", b"", "does not include channel binding data"),
    (PLUS, "p=tls-unique,,", b"x" * 12, "unsupported SCRAM channel-binding type"),
    # A downgrade: the client could bind but was made to believe pgsluice cannot.
    ("SCRAM-SHA-256", "y,,", b"", "negotiation error"),
    ("SCRAM-SHA-256", BINDING, b"", "includes channel binding data"),
])
def test_scram_channel_binding_that_does_not_match_is_refused_with_08p01(proxy, mechanism, gs2_header, data, says):
    target, _ = proxy
    raw = tls_raw(target, direct=False)
    try:
        with pytest.raises(pgharness.PgError) as failure:
            raw.startup("app", "app", target.login("app").password, sasl=(mechanism, gs2_header, data))
        assert failure.value.sqlstate == "08P01" and says in failure.value.message, failure.value.fields
    finally:
        raw.close()
    # pgsluice goes on serving: the same client with the right binding logs in.
    raw = tls_raw(target, direct=False)
    try:
        raw.startup("app", "app", target.login("app").password, sasl=(PLUS, BINDING, end_point(raw)))
    finally:
        raw.close()


def test_plain_data_after_sslrequest_is_refused(proxy):
    target, _ = proxy
    with target.raw() as raw:
        # SSLRequest and a startup packet in one write: the startup packet would be read as if it
        # came through TLS (CVE-2021-23214 in Postgres): refused.
        raw.send(struct.pack("!ii", 8, pgharness.SSL_REQUEST_CODE) +
                 pgharness.startup_packet({"user": "app", "database": "app"}))
        messages = raw.read_until_closed(10)
        assert messages and messages[0][0] == b"E", messages


def test_psycopg2_concurrent_clients_over_tls_share_a_small_pool(proxy):
    target, _ = proxy
    conns = [psycopg2.connect(target.dsn("app", sslmode="require")) for _ in range(30)]
    try:
        for round_ in range(5):
            for i, conn in enumerate(conns):
                with conn.cursor() as cur:
                    cur.execute("SELECT %s::int + 1, ssl_is_used()", (i * round_,))
                    assert cur.fetchone() == (i * round_ + 1, True)
                conn.commit()
    finally:
        for conn in conns:
            conn.close()


def test_backend_verify_full_refuses_a_certificate_of_another_issuer(tls_pg):
    pg, certs = tls_pg
    target = start_pgsluice(pg, tls_config(pg, certs, client_mode="allow", backend_ca=certs["other_ca"][0]))
    try:
        with pytest.raises(psycopg2.OperationalError) as failure:
            psycopg2.connect(target.dsn("app", sslmode="disable", connect_timeout=10)).close()
        assert "certificate verify failed" in str(failure.value), str(failure.value)
        assert failure.value.pgcode in (None, "57P03"), failure.value.pgcode
    finally:
        stop_pgsluice(target)


def test_backend_channel_binding_require_logs_in_bound_with_scram(tls_pg):
    pg, certs = tls_pg
    config = tls_config(pg, certs, client_mode="allow")
    config["backends"]["primary"]["tls"]["channel_binding"] = "require"
    target = start_pgsluice(pg, config)
    try:
        with psycopg2.connect(target.dsn("app", sslmode="disable", connect_timeout=10)) as conn:
            with conn.cursor() as cur:
                cur.execute(SERVER_SIDE)
                assert cur.fetchone()[0] is True
    finally:
        stop_pgsluice(target)


@pytest.mark.parametrize("server_user, says", [
    # Postgres asks these roles for a password pgsluice would send to whoever answers: it sends none.
    ("md5_user", "asks for an MD5 password, but tls.channel_binding require allows only SCRAM-SHA-256-PLUS"),
    ("plain_user", "asks for a cleartext password, but tls.channel_binding require"),
    # And lets this one in without any exchange: not the server the setting trusts.
    ("trust_user", "authenticated pgsluice without SCRAM channel binding (tls.channel_binding require)"),
])
def test_backend_channel_binding_require_refuses_a_server_login_without_it(tls_pg, server_user, says):
    pg, certs = tls_pg
    config = tls_config(pg, certs, client_mode="allow")
    config["backends"]["primary"]["tls"]["channel_binding"] = "require"
    config["services"]["app"]["server_user"] = server_user
    config["services"]["app"]["server_password"] = pgharness.password_for(server_user)
    target = start_pgsluice(pg, config)
    try:
        with pytest.raises(psycopg2.OperationalError) as failure:
            psycopg2.connect(target.dsn("app", sslmode="disable", connect_timeout=10)).close()
        assert says in str(failure.value), str(failure.value)
    finally:
        stop_pgsluice(target)
    # The same server user with channel binding preferred (the default) gets in.
    config["backends"]["primary"]["tls"]["channel_binding"] = "prefer"
    target = start_pgsluice(pg, config)
    try:
        with closing(psycopg2.connect(target.dsn("app", sslmode="disable", connect_timeout=10))) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                assert cur.fetchone()[0] == server_user
    finally:
        stop_pgsluice(target)


def peer_serial(target, cafile) -> int:
    raw = tls_raw(target, direct=False, cafile=cafile)
    try:
        return int(raw.sock.getpeercert()["serialNumber"], 16)
    finally:
        raw.close()


def test_sighup_picks_up_a_rotated_certificate_without_dropping_connections(tls_pg):
    pg, certs = tls_pg
    rotation = certs["dir"] / "rotation"
    cert, key = pgharness.make_certificate(rotation, "proxy", certs["ca"])
    config = tls_config(pg, certs, client_mode="allow")
    config["tls"]["cert"], config["tls"]["key"] = str(cert), str(key)
    target = start_pgsluice(pg, config)
    try:
        before = peer_serial(target, certs["ca"][0])
        kept = psycopg2.connect(target.dsn("app", sslmode="require"))
        kept.autocommit = True
        # The files are replaced in place (a cert-manager rotation), then SIGHUP.
        pgharness.make_certificate(rotation, "proxy", certs["ca"])
        target.proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while peer_serial(target, certs["ca"][0]) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert peer_serial(target, certs["ca"][0]) != before
        with kept.cursor() as cur:  # the connection made with the old certificate goes on
            cur.execute("SELECT ssl_is_used()")
            assert cur.fetchone() == (True,)
        kept.close()
    finally:
        stop_pgsluice(target)


def test_a_bad_certificate_file_fails_the_reload_and_the_running_one_stays(tls_pg):
    pg, certs = tls_pg
    target = start_pgsluice(pg, tls_config(pg, certs, client_mode="allow"))
    try:
        broken = certs["dir"] / "broken.crt"
        broken.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        config = dict(target.proxy.config)
        config["tls"] = {**config["tls"], "cert": str(broken)}
        target.proxy.write_config(config)
        target.proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload: " not in target.proxy.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        log = target.proxy.log_text()
        assert "tls: cert " in log and "keeping the running configuration" in log, log[-2000:]
        out = psql(target, "SELECT 1", "require")
        assert out.returncode == 0, out.stderr
        check = subprocess.run([str(target.proxy.binary or pgharness.find_binary()), "--check", "--config",
                                str(target.proxy.config_path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 1 and "tls: cert" in check.stderr, check.stderr
    finally:
        stop_pgsluice(target)


def test_server_tls_prefer_falls_back_to_plain_text_on_a_server_without_tls(pg):
    """The default backend mode is prefer: the shared test Postgres has ssl off."""
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction")
    target = start_pgsluice(pg, config)
    try:
        conn = psycopg2.connect(target.dsn("app"))
        with conn.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (False,)
        conn.close()
    finally:
        stop_pgsluice(target)


def test_a_tls_client_of_a_server_without_tls_config_gets_n(pg):
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction")
    target = start_pgsluice(pg, config)
    try:
        with target.raw() as raw:
            raw.send(struct.pack("!ii", 8, pgharness.SSL_REQUEST_CODE))
            assert raw.read_byte() == b"N"
            raw.startup("app", "app", target.login("app").password)
            assert pgharness.rows_of(raw.query("SELECT 1")) == [["1"]]
    finally:
        stop_pgsluice(target)
