#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora, tests/fuzz/corpus/<target>/<name>: small valid inputs of the
kind each decoder meets (what psql, psycopg and pgjdbc send, what Postgres 15 answers, RFC 7677's
SCRAM example, a trimmed config/pgsluice.yaml, the statements the SQL classifier exists for).

    python3 tests/fuzz/make_corpus.py

Rewrites every seed and removes files of these folders it did not write, so the folders are exactly
what this script says. The files are committed; run it again after changing it.
"""
import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"


def cstr(text):
    return text.encode() + b"\0"


def i16(value):
    return struct.pack("!h", value)


def i32(value):
    return struct.pack("!i", value)


def message(kind, *fields):
    """A typed message (docs §55.7): type byte, Int32 length counting itself, payload."""
    payload = b"".join(fields)
    return kind.encode() + i32(len(payload) + 4) + payload


def packet(*fields):
    """An untyped startup-phase packet: Int32 length counting itself, then the fields."""
    payload = b"".join(fields)
    return i32(len(payload) + 4) + payload


# ---- startup packets ----

def startup(parameters, version=196608):
    return packet(i32(version), *(cstr(name) + cstr(value) for name, value in parameters), b"\0")


SSL_REQUEST = packet(i32(80877103))
PSQL_STARTUP = startup([("user", "app"), ("database", "nova"), ("application_name", "psql"),
                        ("client_encoding", "UTF8")])
# pgjdbc 42.x's startup parameters.
JDBC_STARTUP = startup([("user", "app"), ("database", "nova"), ("client_encoding", "UTF8"),
                        ("DateStyle", "ISO"), ("TimeZone", "UTC"), ("extra_float_digits", "3"),
                        ("application_name", "PostgreSQL JDBC Driver")])

STARTUP = {
    "ssl_request": SSL_REQUEST,
    "cancel_request": packet(i32(80877102), i32(4242), i32(0x5EC2E7)),
    "startup_psql": PSQL_STARTUP,
    "startup_pgjdbc": JDBC_STARTUP,
    "ssl_then_startup": SSL_REQUEST + PSQL_STARTUP,
    "gssenc_then_ssl_then_startup": packet(i32(80877104)) + SSL_REQUEST + JDBC_STARTUP,
    # libpq's options: -c settings, and a protocol 3.2 client with a _pq_ option (negotiated down).
    "startup_options": startup([("user", "app"), ("database", "nova"),
                                ("options", "-c search_path=app -c statement_timeout=5s")]),
    "startup_protocol_3_2": startup([("user", "app"), ("_pq_.compression", "on")], version=(3 << 16) | 2),
    "startup_protocol_2": startup([("user", "app")], version=2 << 16),
}


# ---- frontend messages ----

def parse(name, query, types=()):
    return message("P", cstr(name), cstr(query), i16(len(types)), *(i32(oid) for oid in types))


def bind(portal, statement, values, parameter_formats=(), result_formats=()):
    fields = [cstr(portal), cstr(statement), i16(len(parameter_formats))]
    fields += [i16(code) for code in parameter_formats]
    fields.append(i16(len(values)))
    for value in values:
        fields.append(i32(-1) if value is None else i32(len(value)) + value)
    fields.append(i16(len(result_formats)))
    fields += [i16(code) for code in result_formats]
    return message("B", *fields)


def describe(kind, name):
    return message("D", kind.encode(), cstr(name))


def close(kind, name):
    return message("C", kind.encode(), cstr(name))


def execute(portal="", max_rows=0):
    return message("E", cstr(portal), i32(max_rows))


SYNC = message("S")
QUERY_SQL = "SELECT id, name FROM users WHERE id = $1"

FRONTEND = {
    # psycopg 3 with a server-side bind: unnamed statement, Describe portal, Execute, Sync.
    "psycopg_pipeline": parse("", QUERY_SQL, [23]) + bind("", "", [b"42"]) + describe("P", "") + execute() + SYNC,
    # pgjdbc after prepareThreshold: a named statement, binary results, then reuse of it.
    "pgjdbc_named": parse("S_1", QUERY_SQL, [23]) + describe("S", "S_1") + SYNC
                    + bind("", "S_1", [struct.pack("!i", 42)], [1], [1]) + execute() + SYNC,
    "pgjdbc_reuse_close": bind("", "S_1", [struct.pack("!i", 7)], [1], [0, 1]) + execute("", 100)
                          + close("S", "S_1") + SYNC,
    "bind_nulls_and_formats": bind("p1", "s1", [None, b"x", b""], [0, 1, 0], [1]) + execute("p1", 10)
                              + close("P", "p1") + message("H"),
    "simple_query": message("Q", cstr("SET search_path = app; SELECT 1")),
    "sasl_initial_response": message("p", cstr("SCRAM-SHA-256"), i32(32), b"n,,n=,r=rOprNGfwEbeRWgbNEkqO0000"),
    "sasl_response": message("p", b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                  b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
    "password_md5": message("p", cstr("md5" + "0123456789abcdef" * 2)),
    "copy_and_terminate": message("Q", cstr("COPY t FROM STDIN")) + message("d", b"1\tone\n")
                          + message("c") + message("X"),
}


# ---- backend messages ----

def authentication(code, data=b""):
    return message("R", i32(code), data)


def parameter_status(name, value):
    return message("S", cstr(name), cstr(value))


def error(kind, fields):
    return message(kind, *(code.encode() + cstr(value) for code, value in fields), b"\0")


def row_description(columns):
    fields = [i16(len(columns))]
    for name, type_oid, size, modifier, fmt in columns:
        fields += [cstr(name), i32(16384), i16(1), i32(type_oid), i16(size), i32(modifier), i16(fmt)]
    return message("T", *fields)


def data_row(values):
    fields = [i16(len(values))]
    for value in values:
        fields.append(i32(-1) if value is None else i32(len(value)) + value)
    return message("D", *fields)


READY_IDLE = message("Z", b"I")

BACKEND = {
    "login_scram": authentication(10, cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") + b"\0")
                   + authentication(11, b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
                   + authentication(12, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
    "login_ok": authentication(0) + parameter_status("server_version", "15.8")
                + parameter_status("client_encoding", "UTF8") + parameter_status("TimeZone", "UTC")
                + parameter_status("standard_conforming_strings", "on")
                + message("K", i32(4242), i32(0x5EC2E7)) + READY_IDLE,
    "login_md5": authentication(3) + authentication(5, b"\x01\x02\x03\x04"),
    "error_renamed_statement": error("E", [("S", "ERROR"), ("V", "ERROR"), ("C", "26000"),
                                           ("M", 'prepared statement "pgsluice_1" does not exist'),
                                           ("F", "prepare.c"), ("L", "535"), ("R", "FetchPreparedStatement")])
                               + message("Z", b"E"),
    "notice": error("N", [("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000"),
                          ("M", "relation \"t\" already exists, skipping"), ("D", "detail text")]),
    "extended_reply": message("1") + message("t", i16(1), i32(23))
                      + row_description([("id", 23, 4, -1, 0), ("name", 25, -1, -1, 0)])
                      + message("2") + data_row([b"42", None]) + message("C", cstr("SELECT 1"))
                      + message("Z", b"T"),
    "no_data_close": message("1") + message("t", i16(0)) + message("n") + message("3") + READY_IDLE,
    "notification": message("A", i32(4242), cstr("jobs"), cstr("payload 1")),
    "probe_reply": row_description([("current_setting", 25, -1, -1, 0)]) + data_row([b"64kB"])
                   + message("C", cstr("SELECT 1")) + READY_IDLE,
    "copy_in_response": message("G", b"\0", i16(2), i16(0), i16(0)),
}


# ---- SCRAM (RFC 7677 §3): client-first\nclient-final, and server-first\nserver-final ----

def scram_plus_client():
    """The RFC 7677 exchange with channel binding (SCRAM-SHA-256-PLUS) to the end point fuzz_scram
    offers (32 bytes 0x5a): client-first and a client-final whose proof is right, so the fuzzer
    starts from the bound success path too."""
    import base64
    import hashlib
    import hmac
    gs2 = b"p=tls-server-end-point,,"
    first_bare = b"n=user,r=rOprNGfwEbeRWgbNEkqO"
    nonce = b"rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    server_first = b"r=" + nonce + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    without_proof = b"c=" + base64.b64encode(gs2 + b"\x5a" * 32) + b",r=" + nonce
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored_key, first_bare + b"," + server_first + b"," + without_proof, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return gs2 + first_bare + b"\n" + without_proof + b",p=" + base64.b64encode(proof)


SCRAM = {
    "plus_client": scram_plus_client(),
    "rfc7677_client": b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO\n"
                      b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                      b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "rfc7677_server": b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096\n"
                      b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    "postgres_client_first": b"n,,n=,r=0123456789abcdefghijklmn",
    "channel_binding_requested": b"p=tls-server-end-point,,n=,r=0123456789abcdefghijklmn",
    "client_supports_binding": b"y,,n=,r=rOprNGfwEbeRWgbNEkqO\nc=eSws,r=rOprNGfwEbeRWgbNEkqO,p=AAAA",
    "server_error": b"r=rOprNGfwEbeRWgbNEkqO0,s=QUJD,i=1\ne=invalid-proof",
    "verifier": b"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
                b"wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
    "base64": b"cGVuY2lsIHNhbHQ=",
}


# ---- configuration (config/pgsluice.yaml, trimmed) ----

CONFIG = {
    # yaml-cpp 0.7's LoadAll never ended on a leading "," (fuzz_config found it; jbeder/yaml-cpp#1040).
    "leading_comma.yaml": ",\n",
    "minimal.yaml": """\
backends:
  primary: { host: 127.0.0.1, port: 5432 }
users:
  app: { password: "${PASSWORD}" }
services:
  main:
    match: { user: app, database: nova }
""",
    "example.yaml": """\
# config/pgsluice.yaml, three services.
listen: "0.0.0.0:6432"
workers: 0
client_login_timeout: 15s
shutdown_timeout: 30s
max_client_connections: 10000
max_message_size: 64MB
max_prepared_statements_per_client: 1000
max_prepared_statement_bytes_per_client: 16MB
replicas: 1
log:
  level: info
  format: text
  slow_statements: 0
metrics:
  listen: "0.0.0.0:9187"
  enabled: true
admin:
  users: [admin]
tls:
  mode: disable
backends:
  primary:
    host: 127.0.0.1
    port: 5432
    max_connections: 100
    reserved_connections: 25
    connect_timeout: 2s
    breaker:
      failure_threshold: 5
      open_for: 2s
      max_open_for: 30s
    tls:
      mode: prefer
users:
  admin: { password: "${PGSLUICE_ADMIN_PASSWORD}" }
  auth_service: { password: "${AUTH_DB_PASSWORD}" }
  user_service: { scram_verifier: "${VERIFIER}" }
  legacy: { md5_hash: "md50123456789abcdef0123456789abcdef", auth: md5 }
  reporting: { auth: trust }
services:
  auth:
    backend: primary
    match: { user: auth_service, database: nova }
    server_user: auth_service
    server_password: "${AUTH_DB_PASSWORD}"
    server_database: nova
    mode: transaction
    max_connections: 12
    min_connections: 6
    acquire_timeout: 1s
    max_waiting_clients: 0
    idle_timeout: 10m
    max_lifetime: 1h
    health_check_after_idle: 30s
    query_timeout: 0
    idle_in_transaction_timeout: 0
    coalesce:
      enabled: true
      max_batch: 256
      window: 200us
      allow_views: false
  user:
    match: { user: user_service, database: nova }
    mode: session
    max_connections: 12
    min_connections: 6
  reports:
    match: { user: reporting, database: reports }
    mode: statement
    max_connections: 5
""",
    "two_backends_over_budget.yaml": """\
replicas: 3
backends:
  primary: { max_connections: 20, reserved_connections: 5 }
  replica: { host: "[::1]", port: 5433, tls: { mode: disable } }
users:
  app: { password: literal-password }
services:
  writes: { backend: primary, match: { user: app, database: nova }, max_connections: 10 }
  reads: { backend: replica, match: { user: app, database: nova_ro }, max_connections: 4, min_connections: 9 }
""",
    "errors.yaml": """\
listen: "not-a-port"
client_login_timeout: 5 minutes
max_message_size: 1TB
unknown_key: 1
backends: {}
users:
  app: { password: "${EMPTY}", md5_hash: "md5xyz" }
services:
  main: { match: { user: nobody, database: nova }, mode: sometimes }
""",
}


# ---- SQL texts ----

SQL = {
    # fuzz_sql found it: $83333333333 reaches the analysis as $1728954709 (the parser keeps 32 bits),
    # and the batched form named every parameter up to it (gigabytes); now ineligible.
    "param_number_overflow": "SELECT v FROM t WHERE id = $83333333333",
    "set": "SET work_mem = '64kB'",
    "set_local": "BEGIN; SET LOCAL statement_timeout = '5s'; SELECT 1; COMMIT",
    "reset": "RESET search_path; SET TimeZone TO DEFAULT; RESET ALL",
    "discard_all": "DISCARD ALL",
    "prepare_execute": "PREPARE q(int, text) AS SELECT $1, $2; EXECUTE q(1, 'a'); DEALLOCATE q; DEALLOCATE ALL",
    "listen": "LISTEN jobs; UNLISTEN \"Other\"; UNLISTEN *",
    "advisory": "SELECT pg_advisory_lock(1), pg_advisory_unlock_all()",
    "temp_table": "CREATE TEMP TABLE scratch (id int) ON COMMIT DROP",
    "select_into_temp": "SELECT * INTO TEMP t2 FROM t",
    "cursor_with_hold": "DECLARE c CURSOR WITH HOLD FOR SELECT 1; CLOSE c",
    "select_parameter": "SELECT id, name FROM users WHERE id = $1",
    "select_join": "WITH recent AS (SELECT * FROM app.orders WHERE created > now() - interval '1 day') "
                   "SELECT u.name, count(*) FROM users u JOIN recent r ON r.user_id = u.id "
                   "WHERE u.id = ANY($1::int[]) AND r.total > 1000 / $2 GROUP BY u.name ORDER BY 2 DESC",
    "select_for_update": "SELECT * FROM accounts WHERE id = $1 FOR UPDATE",
    "select_cast_params": "SELECT $1::int + $2::numeric(10,2), lower($3) -- trailing comment",
    "copy": "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
    "insert_returning": "INSERT INTO t VALUES ($1, $2) RETURNING id;",
    "with_nul": "SELECT 1\0; SET x = 1",
}


def write(target, files):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    names = set()
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        assert len(data) <= 4096, f"{target}/{name} is {len(data)} bytes"
        (folder / name).write_bytes(data)
        names.add(name)
    for stale in folder.iterdir():
        if stale.name not in names:
            stale.unlink()


def main():
    write("fuzz_startup", STARTUP)
    write("fuzz_frontend_messages", FRONTEND)
    write("fuzz_backend_messages", BACKEND)
    write("fuzz_scram", SCRAM)
    write("fuzz_config", CONFIG)
    write("fuzz_sql", SQL)


if __name__ == "__main__":
    main()
