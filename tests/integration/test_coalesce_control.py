"""The coalescer's edges (issue 15, DESIGN §4): a client that cancels stops waiting and gets 57014
while the shared execution goes on for the others; query_timeout bounds a shared execution; what
it did is visible in SHOW STATEMENTS, /metrics and the likely-N+1 log line.

A STABLE function that sleeps (`coalesce_slow(k, seconds)`) makes an execution last long enough
for other requests to queue behind it: the first request runs at once, the ones that arrive while
it runs form the next execution.
"""
from __future__ import annotations

import threading
import time
import urllib.request

import psycopg
import psycopg.errors
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice
from test_admin_console import ADMIN_PASSWORD, rows

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)
if POOL_MODE != "transaction":
    pytest.skip("runs in the transaction-mode pass", allow_module_level=True)

SLOW = "SELECT coalesce_slow(%s, %s) AS k"
LOOKUP = "SELECT v FROM coalesce_control WHERE id = %s AND coalesce_slow(id, %s) = id"


@pytest.fixture(scope="module")
def setup(pg):
    pg.sql("CREATE OR REPLACE FUNCTION coalesce_slow(k int, seconds float8) RETURNS int STABLE LANGUAGE plpgsql "
           "AS $$ BEGIN PERFORM pg_sleep(seconds); RETURN k; END $$; "
           "CREATE TABLE IF NOT EXISTS coalesce_control (id int PRIMARY KEY, v text); "
           "INSERT INTO coalesce_control SELECT g, 'v' || g FROM generate_series(1, 100) g ON CONFLICT DO NOTHING",
           user="app", db="app")
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", max_connections=4,
                                   query_timeout="1500ms", coalesce={"enabled": True})
    config["users"]["admin"] = {"password": ADMIN_PASSWORD}
    config["admin"] = {"users": ["admin"]}
    metrics_port = pgharness.free_port()
    config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    target = start_pgsluice(pg, config)
    target.extra["metrics"] = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        yield target
    finally:
        stop_pgsluice(target)


def connect(target):
    return psycopg.connect(target.dsn("app", connect_timeout=10), autocommit=True)


def test_a_cancelled_member_stops_waiting_and_the_others_get_their_rows(setup):
    first, waiting, cancelled = connect(setup), connect(setup), connect(setup)
    results = {}

    def run(name, conn, key):
        started = time.monotonic()
        try:
            results[name] = (conn.execute(SLOW, [key, 0.8]).fetchone(), time.monotonic() - started)
        except psycopg.Error as e:
            results[name] = (e.sqlstate, time.monotonic() - started)

    threads = [threading.Thread(target=run, args=("first", first, 1))]
    threads[0].start()
    time.sleep(0.2)  # `first` runs; the next two form the next execution behind it
    threads += [threading.Thread(target=run, args=(name, conn, key))
                for name, conn, key in (("waiting", waiting, 2), ("cancelled", cancelled, 3))]
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)
    cancelled.cancel()
    for t in threads:
        t.join(10)
    assert results["first"][0] == (1,)
    assert results["waiting"][0] == (2,)
    assert results["cancelled"][0] == "57014"
    assert results["cancelled"][1] < 0.8, results  # it stopped waiting at once
    # The cancelled client goes on working.
    assert cancelled.execute("SELECT v FROM coalesce_control WHERE id = %s", [7]).fetchone() == ("v7",)
    for conn in (first, waiting, cancelled):
        conn.close()


def test_query_timeout_bounds_a_shared_execution(setup):
    conns = [connect(setup) for _ in range(3)]
    outcomes = [None] * len(conns)

    def run(i):
        try:
            conns[i].execute(SLOW, [i, 5]).fetchone()
            outcomes[i] = "rows"
        except psycopg.Error as e:
            outcomes[i] = (e.sqlstate, e.diag.message_primary)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(conns))]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert time.monotonic() - started < 8
    for outcome in outcomes:
        assert outcome is not None and outcome[0] == "57014", outcomes
        assert "query_timeout" in outcome[1], outcomes
    # The pool is still usable.
    for conn in conns:
        assert conn.execute("SELECT v FROM coalesce_control WHERE id = %s", [3]).fetchone() == ("v3",)
        conn.close()


def test_show_statements_metrics_and_the_likely_n_plus_one_line(setup):
    with connect(setup) as conn:
        for key in range(1, 31):  # one session, one shape, other values, quickly: an N+1
            assert conn.execute("SELECT v FROM coalesce_control WHERE id = %s", [key]).fetchone() == (f"v{key}",)
        conn.execute("SELECT 1 AS other").fetchone()  # ends the streak
    deadline = time.monotonic() + 5
    while "likely N+1" not in setup.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = setup.log_text()
    assert 'likely N+1 in service "app": SELECT v FROM coalesce_control WHERE id = $1 ran 30 times in' in log, \
        log[-2000:]
    assert "v17" not in log  # never a value
    statements = {r[9]: r for r in rows(setup.port, "SHOW STATEMENTS")}
    row = statements["SELECT v FROM coalesce_control WHERE id = $1"]
    assert row[0] == "app" and int(row[2]) >= 30 and int(row[8]) >= 1, row
    assert int(row[3]) <= int(row[2])  # executions never exceed calls
    metrics = urllib.request.urlopen(setup.extra["metrics"], timeout=5).read().decode()
    for family in ("pgsluice_coalesce_requests_total", "pgsluice_coalesce_executions_total",
                   "pgsluice_coalesce_shared_total", "pgsluice_coalesce_batches_total",
                   "pgsluice_n_plus_one_total"):
        assert f"{family}{{" in metrics, family
    n_plus_one = [line for line in metrics.splitlines()
                  if line.startswith("pgsluice_n_plus_one_total{") and 'service="app"' in line]
    assert n_plus_one and float(n_plus_one[0].split()[-1]) >= 1, n_plus_one


def scrape(setup):
    """The app service's samples: {(name, labels-without-service/backend): value}."""
    text = urllib.request.urlopen(setup.extra["metrics"], timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or 'service="app"' not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        kept = ",".join(sorted(p for p in labels.split(",") if not p.startswith(("service=", "backend="))))
        out[(name, kept)] = float(value)
    return out


def test_requests_by_outcome_and_the_batch_size_histogram_count_exactly(setup):
    """A known workload: one request alone, then three that queue behind a slow execution (two
    equal values and one other: one batched execution of three), then two equal ones behind another
    slow one (shared, not batched). Each outcome and each batch size is counted exactly. (A
    statement of parameters alone, like SLOW, is shared but never batched: a table lookup here.)"""
    before = scrape(setup)

    def outcome(name):
        key = ("pgsluice_coalesce_request_outcomes_total", f'outcome="{name}"')
        return after.get(key, 0) - before.get(key, 0)

    def bucket(le):
        key = ("pgsluice_coalesce_batch_size_bucket", f'le="{le}"')
        return after.get(key, 0) - before.get(key, 0)

    with connect(setup) as conn:  # alone: one request, one execution
        assert conn.execute(LOOKUP, [1, 0.0]).fetchone() == ("v1",)

    def round_behind(first_args, others):
        conns = [connect(setup) for _ in range(len(others) + 1)]
        results = [None] * len(conns)

        def run(i, args):
            results[i] = conns[i].execute(LOOKUP, args).fetchone()

        head = threading.Thread(target=run, args=(0, first_args))
        head.start()
        time.sleep(0.3)  # the first execution runs (sleeps 1 s); the others queue behind it
        tail = [threading.Thread(target=run, args=(i + 1, args)) for i, args in enumerate(others)]
        for t in tail:
            t.start()
        for t in [head, *tail]:
            t.join(10)
        for c in conns:
            c.close()
        return results

    assert round_behind([7, 1.0], [[5, 0.0], [5, 0.0], [6, 0.0]]) == [("v7",), ("v5",), ("v5",), ("v6",)]
    assert round_behind([8, 1.0], [[9, 0.0], [9, 0.0]]) == [("v8",), ("v9",), ("v9",)]
    after = scrape(setup)
    assert outcome("alone") == 3, (before, after)      # the first request and the two slow heads
    assert outcome("batched") == 3, (before, after)    # 5, 5, 6 in one batched statement
    assert outcome("shared") == 2, (before, after)     # 9 and 9: one execution
    assert outcome("bypassed") == 0 and outcome("failed") == 0
    assert bucket("1") == 3 and bucket("2") == 4 and bucket("4") == 5 and bucket("+Inf") == 5, (before, after)
    sum_key = ("pgsluice_coalesce_batch_size_sum", "")
    assert after[sum_key] - before.get(sum_key, 0) == 3 + 3 + 2
