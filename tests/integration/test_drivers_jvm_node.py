"""Drivers that do not use libpq, through pgsluice: pgjdbc (Debian's libpostgresql-jdbc-java),
node-postgres (`pg`) and postgres.js (`postgres`), each with the habits that break poolers
(DESIGN §2): named server-side statements reused after a threshold, pipelines with one Sync or
many, Flush without Sync, portals read in batches, errors mid-pipeline, 20 clients at once.

The programs doing the work are tests/drivers/java/DriverCheck.java (compiled once per run with
javac) and tests/drivers/node/check.mjs; each runs one scenario and prints a JSON line of what it
saw. tests/drivers/install.sh installs the JDK, the jar, Node and the pinned npm packages.

In transaction mode the `app` service gets max_connections = 3, so the 20 concurrent JDBC and node
clients share 3 server connections and their named statements must move between them.

With PGSLUICE_TEST_TLS=1 (conftest.py) pgsluice requires TLS and every program connects with
sslmode=require (in the JDBC URL, and in the URL check.mjs gets), so each passing scenario ran over
TLS: a plain-text client is refused.

    bash tests/drivers/install.sh
    PGSLUICE_TEST_MODE=transaction /usr/bin/python3 -m pytest -q tests/integration/test_drivers_jvm_node.py
    PGSLUICE_TEST_TLS=1 PGSLUICE_TEST_MODE=transaction /usr/bin/python3 -m pytest -q tests/integration/test_drivers_jvm_node.py
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

# java_classes and node_modules, the fixtures these tests take, are in conftest.py (test_coalesce.py
# runs the same programs).
from conftest import INSTALL_HINT, JDBC_JAR, NODE_DIR, POOL_MODE, TARGET, TLS

# A zone with a 45-minute offset: a timestamptz rendered as text proves the client's TimeZone
# startup parameter is in force on whichever server connection ran the query.
JVM_TIMEZONE = "Asia/Kathmandu"

requires_java = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("java") is None,
                                   reason=f"no JDK (javac/java) on this machine: {INSTALL_HINT}")
requires_node = pytest.mark.skipif(shutil.which("node") is None,
                                   reason=f"no Node.js on this machine: {INSTALL_HINT}")
moves_clients = pytest.mark.skipif(
    TARGET != "pgsluice" or POOL_MODE == "session",
    reason="moves a client between server connections: transaction and statement mode")


def pgsluice_config(config, pg):
    app = config["services"]["app"]
    if app["mode"] != "session":
        # 20 concurrent clients on 3 server connections: statements must move between them.
        app["max_connections"] = 3
    # 20 clients queue for 3 connections under ASan on 2 cores; this test is about correctness,
    # not about acquire_timeout, which has its own tests.
    app["acquire_timeout"] = "10s"


# -- running the driver programs ---------------------------------------------------------------------

def run_check(target, argv: list[str], timeout: float, cwd: Path | None = None) -> dict:
    """Runs a driver program; fails the test with its output and pgsluice's log tail unless it
    exits 0. Returns the JSON object on its last line of stdout."""
    try:
        proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{argv[-1]} did not finish within {timeout:.0f} s\nstdout:\n{err.stdout}\n"
                    f"stderr:\n{err.stderr}\n{log_tail(target)}")
    if proc.returncode != 0:
        pytest.fail(f"{argv[-1]} exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                    f"stderr:\n{proc.stderr}\n{log_tail(target)}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{argv[-1]} printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def log_tail(target, lines: int = 40) -> str:
    text = target.log_text()
    return "--- pgsluice log tail:\n" + "\n".join(text.splitlines()[-lines:]) if text else ""


def jdbc(target, java_classes: Path, scenario: str, timeout: float = 90) -> dict:
    login = target.login("app")
    url = (f"jdbc:postgresql://{target.host}:{target.port}/{login.database}"
           "?ApplicationName=driver-check&connectTimeout=10&loginTimeout=20&socketTimeout=60")
    if target.tls:
        # pgjdbc (42.5) reads sslmode as libpq does: require encrypts without checking the certificate.
        url += "&sslmode=require"
    argv = ["java", f"-Duser.timezone={JVM_TIMEZONE}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-cp", f"{JDBC_JAR}:{java_classes}", "DriverCheck", url, login.user, login.password or "", scenario]
    return run_check(target, argv, timeout)


def node(target, scenario: str, timeout: float = 90) -> dict:
    return run_check(target, ["node", str(NODE_DIR / "check.mjs"), target.url("app"), scenario], timeout,
                     cwd=NODE_DIR)


def recreate_table(target, name: str) -> None:
    """An empty table `name (id int primary key, note text)` owned by app, made on Postgres directly."""
    target.pg.sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, note text)",
                  user="app", db="app")


def recreate_ddl_table(target, name: str) -> None:
    """`name (id int primary key, a text)` holding (1, 'one'), made on Postgres directly: the table
    the DDL scenarios add a column to under a prepared `select *`."""
    target.pg.sql(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, a text); "
                  f"INSERT INTO {name} VALUES (1, 'one')", user="app", db="app")


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def assert_shared_backends(target, distinct_backends: int, most_of_one_client: int) -> None:
    """20 clients: each on a server backend of its own (direct, session mode), or all on the 3 server
    connections of the transaction pool, with clients moved between them, so their named
    statements had to be re-Parsed where they landed."""
    if TARGET == "pgsluice" and POOL_MODE != "session":
        assert distinct_backends <= 3 and most_of_one_client >= 2, (distinct_backends, most_of_one_client)
    else:
        assert (distinct_backends, most_of_one_client) == (20, 1)


# -- pgjdbc ----------------------------------------------------------------------------------------

@requires_java
def test_jdbc_prepared_statement_runs_20_times_across_the_named_statement_switch(target, java_classes):
    r = jdbc(target, java_classes, "prepared")
    assert (r["executions"], r["prepare_threshold"], r["server_prepared"]) == (20, 5, True), r


@requires_java
def test_jdbc_closed_statements_are_closed_and_the_same_sql_prepares_again(target, java_classes):
    r = jdbc(target, java_classes, "reprepare")
    assert r["executions"] == 21, r
    if TARGET == "pgsluice" and POOL_MODE != "session":
        # The client's three names share one server statement per server connection (keyed by
        # text and parameter types); a client's Close never closes it.
        assert r["prepared_statements_left"] <= 1, r
    else:
        assert r["prepared_statements_left"] == 0, r


@requires_java
def test_jdbc_listen_receives_notifications_while_idle_and_its_own_before_the_statement_ends(target, java_classes):
    # pgjdbc sends LISTEN through the extended protocol: in the pooled modes the listener
    # connection serves it too, so the listener holds no pool connection while it waits.
    r = jdbc(target, java_classes, "listen")
    assert r["payloads"] == ["jdbc_channel:from-other", "jdbc_channel:own"], r


@requires_java
def test_jdbc_deallocate_all_and_discard_all_let_the_driver_prepare_its_names_again(target, java_classes):
    r = jdbc(target, java_classes, "deallocate")
    assert (r["executions"], r["resets"]) == (21, ["DEALLOCATE ALL", "DISCARD ALL"]), r


@requires_java
def test_jdbc_heals_a_server_prepared_select_star_after_a_column_is_added(target, java_classes):
    recreate_ddl_table(target, "jdbc_ddl")
    r = jdbc(target, java_classes, "ddl")
    assert r["widths"] == [2, 3], r


@requires_java
@moves_clients
def test_jdbc_heals_a_select_star_parsed_afresh_on_another_server_connection_after_a_column_is_added(
        target, java_classes):
    # The driver binds the two result formats it was told of; the server connection it is given now
    # parses the text to three columns and refuses the Bind (08P01). pgsluice reports the stale plan
    # (0A000) the original connection would have, which the driver heals by preparing again.
    recreate_ddl_table(target, "jdbc_ddl")
    r = jdbc(target, java_classes, "ddl-moved")
    assert r["widths"] == [2, 3], r


@requires_java
@moves_clients
def test_jdbc_heals_a_select_star_parsed_afresh_elsewhere_after_a_column_changed_type_and_name(
        target, java_classes):
    # The same number of columns, so the Bind's result formats cannot tell. The driver learnt the
    # columns from its Describe of the portal; pgsluice describes the copy it parses on the new server
    # connection before the Bind goes and answers the stale plan (0A000) when they differ.
    recreate_ddl_table(target, "jdbc_ddl")
    r = jdbc(target, java_classes, "ddl-retyped-moved")
    assert r["columns"] == ["a:String", "n:Integer"], r


@requires_java
def test_jdbc_query_timeout_cancels_through_the_proxy_and_the_connection_stays_usable(target, java_classes):
    r = jdbc(target, java_classes, "timeout")
    assert (r["sqlstate"], r["after"]) == ("57014", "usable"), r
    assert 1000 <= r["cancelled_after_ms"] < 5000, r


@requires_java
def test_jdbc_batch_of_100_inserts_lands_every_row(target, java_classes):
    target.pg.sql("DROP TABLE IF EXISTS jdbc_items; CREATE TABLE jdbc_items (id int PRIMARY KEY, name text)",
                  user="app", db="app")
    r = jdbc(target, java_classes, "batch")
    assert (r["update_counts"], r["count"], r["sum_id"], r["max_name"]) == (100, 100, 5050, "item-99"), r
    assert target.pg.sql("SELECT count(*), sum(id) FROM jdbc_items", user="app", db="app") == [(100, 5050)]


@requires_java
def test_jdbc_transaction_commits_and_rolls_back(target, java_classes):
    recreate_table(target, "jdbc_tx")
    r = jdbc(target, java_classes, "transaction")
    assert (r["rows"], r["other_sees"]) == ("1=committed", "committed"), r
    assert target.pg.sql("SELECT id, note FROM jdbc_tx ORDER BY id", user="app", db="app") == [(1, "committed")]


@requires_java
def test_jdbc_fetch_size_reads_1000_rows_from_a_portal_in_batches_of_10(target, java_classes):
    r = jdbc(target, java_classes, "fetch")
    # pg_cursors lists the suspended named portal and the side query's own unnamed one.
    assert (r["rows"], r["sum"], r["md5_500"], r["side_query"]) == (1000, 500500, md5_hex("500"), "side 2"), r


@requires_java
def test_jdbc_types_round_trip_in_text_and_binary_with_the_client_timezone(target, java_classes):
    r = jdbc(target, java_classes, "types")
    assert (r["runs"], r["server_prepared"], r["jvm_timezone"]) == (8, True, JVM_TIMEZONE), r
    # 2024-02-29 23:59:58.123456-07 is 2024-03-01 06:59:58.123456 UTC, +05:45 in Kathmandu.
    assert (r["timezone"], r["timestamptz_text"]) == (JVM_TIMEZONE, "2024-03-01 12:44:58.123456+05:45"), r


@requires_java
def test_jdbc_20_connections_run_prepared_statements_concurrently(target, java_classes):
    r = jdbc(target, java_classes, "many", timeout=150)
    assert (r["threads"], r["ok"], r["executions"], r["server_prepared"]) == (20, 20, 400, True), r
    assert_shared_backends(target, r["distinct_backends"], r["most_backends_of_one_connection"])


# -- node-postgres ---------------------------------------------------------------------------------

@requires_node
def test_pg_named_prepared_statements_are_reused_20_times(target, node_modules):
    r = node(target, "pg-prepared")
    assert (r["executions"], r["parsed"]) == (20, ["concat_it", "double_it"]), r


@requires_node
def test_pg_with_channel_binding_enabled_logs_in(target, node_modules):
    # Over TLS (PGSLUICE_TEST_TLS=1) node-postgres binds to pgsluice's certificate (SCRAM-SHA-256-PLUS).
    r = node(target, "pg-channel-binding")
    assert (r["word"], r["n"], r["tls"]) == ("bound", 42, TLS), r


@requires_node
def test_pg_queued_and_pipelined_queries_on_one_client_with_an_error_in_the_pipeline(target, node_modules):
    r = node(target, "pg-pipeline")
    assert (r["queued"], r["pipelined"], r["pipelined_error"], r["after"]) == (50, 50, "22012", 42), r


@requires_node
def test_pg_pool_of_20_clients_runs_50_queries_each(target, node_modules):
    r = node(target, "pg-pool")
    # sum over workers w < 20 and queries i < 50 of w*1000 + i
    assert (r["workers"], r["queries"], r["total"], r["clients_opened"]) == (20, 1000, 9_524_500, 20), r
    assert_shared_backends(target, r["distinct_backends"], r["most_backends_of_one_client"])


@requires_node
def test_pg_rows_option_reads_a_portal_in_batches_inside_and_outside_a_transaction(target, node_modules):
    r = node(target, "pg-portal")
    assert (r["rows_outside"], r["rows_inside"], r["md5_500"]) == (1000, 1000, md5_hex("500")), r


@requires_node
def test_pg_transaction_commits_and_rolls_back(target, node_modules):
    recreate_table(target, "node_tx")
    r = node(target, "pg-transaction")
    assert r["rows"] == "1=committed", r


@requires_node
def test_pg_client_stays_usable_after_division_by_zero_in_every_protocol_path(target, node_modules):
    r = node(target, "pg-error")
    assert (r["simple_message"], r["after"]) == ("division by zero", "after"), r


@requires_node
def test_pg_listen_receives_a_notification(target, node_modules):
    r = node(target, "pg-listen")
    assert (r["channel"], r["payload"]) == ("check_channel", "hello from node"), r


# -- postgres.js -----------------------------------------------------------------------------------

@requires_node
def test_postgresjs_named_statements_are_reused_150_times(target, node_modules):
    r = node(target, "postgres-prepared")
    names = r["statement_names"]
    # Two statement texts, each parsed once under a name of its own (not the unnamed statement).
    assert (r["executions"], len(names), all(names)) == (150, 2, True), r


@requires_node
@moves_clients
def test_postgresjs_heals_a_select_star_parsed_afresh_on_another_server_connection_after_a_column_is_added(
        target, node_modules):
    # postgres.js binds with no result formats; pgsluice spells out the two the client was told of,
    # so the server connection that now parses the text to three columns refuses the Bind, and the
    # client gets the stale-plan error it re-prepares on instead of three-column rows read as two.
    recreate_ddl_table(target, "postgres_ddl")
    r = node(target, "postgres-ddl-moved")
    assert r["widths"] == [2, 3], r


@requires_node
@moves_clients
def test_postgresjs_heals_a_select_star_parsed_afresh_elsewhere_after_a_column_changed_type_and_name(
        target, node_modules):
    # The same number of columns: the Bind's result formats cannot tell. pgsluice describes the copy
    # it parsed on the new server connection before the Bind goes, finds other columns than the
    # client was told of, and answers the stale-plan error postgres.js re-prepares on.
    recreate_ddl_table(target, "postgres_ddl")
    r = node(target, "postgres-ddl-retyped")
    assert r["columns"] == ["id,a", "id,n"], r


@requires_node
def test_postgresjs_clients_sharing_server_connections_all_heal_after_a_column_is_added(target, node_modules):
    # A client preparing the text after the DDL, on a server connection with a copy parsed before it,
    # gets a fresh Parse (three columns), not the stale-plan error postgres.js would not retry.
    recreate_ddl_table(target, "postgres_ddl")
    r = node(target, "postgres-ddl-shared")
    assert r["clients"] == 12, r


@requires_node
def test_postgresjs_begin_commits_rolls_back_and_uses_savepoints(target, node_modules):
    recreate_table(target, "postgres_tx")
    r = node(target, "postgres-begin")
    assert (r["inside"], r["rows"]) == ("committed", "1=committed,3=savepoint"), r


@requires_node
def test_postgresjs_200_concurrent_queries_on_10_connections(target, node_modules):
    r = node(target, "postgres-concurrent")
    assert (r["queries"], r["total"]) == (200, 3 * sum(range(200))), r


@requires_node
def test_postgresjs_cursor_reads_1000_rows_in_batches_of_10_without_a_transaction(target, node_modules):
    r = node(target, "postgres-cursor")
    assert (r["rows"], r["sum"], r["batches"], r["side_queries"], r["after"]) == (1000, 500500, 100, 30, "ok"), r
