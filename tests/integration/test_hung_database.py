"""A hung database (issue 5, DESIGN §3, §7): with the postmaster and every backend stopped (SIGSTOP),
TCP connects still succeed (the kernel completes the handshake) but nothing ever answers. New server
connections must fail by connect_timeout (57P03), statements on server connections pgsluice already
holds by query_timeout (57014); once the circuit breaker opens, 57P03 at once; nothing hangs. After
SIGCONT statements succeed again on old and new clients within the breaker's open_for, with no
restart of pgsluice. Uses a Postgres of its own: it gets frozen."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)
if POOL_MODE not in ("transaction", "session"):
    # The scenario pins server connections with open transactions, which statement mode refuses.
    pytest.skip("runs in the transaction- and session-mode passes", allow_module_level=True)

CONNECT_TIMEOUT = 1.0
QUERY_TIMEOUT = 1.0
FAILURE_THRESHOLD = 3
OPEN_FOR = 1.0
MAX_OPEN_FOR = 2.0
# A login or statement that fails "by a timeout" fails after that timeout, and before BOUND: room for
# connect_timeout more (a cancel sent to a hung server is given up after connect_timeout) plus 0.5 s.
BOUND = 2.5
FAST = 0.1  # what a fail-fast (circuit open) may take, a debug build on a busy 2-core machine included
# After SIGCONT: the breaker may have just reopened for max_open_for, after a probe that was still
# waiting out its connect_timeout; one more second for everything else.
RECOVERY_BOUND = CONNECT_TIMEOUT + MAX_OPEN_FOR + 1.0
CONNECT_TIMEOUT_TEXT = f"connect_timeout {int(CONNECT_TIMEOUT * 1000)}ms expired"
QUERY_TIMEOUT_TEXT = f"query_timeout ({int(QUERY_TIMEOUT * 1000)}ms)"
USER = "trusty"  # trust auth, so raw-protocol logins need no password exchange


@pytest.fixture(scope="module")
def own_pg():
    with pgharness.LocalPostgres(max_connections=100) as pg:
        yield pg


def hung_config(pg) -> dict:
    config = pgharness.base_config(pg, pgharness.free_port(), mode=POOL_MODE, max_connections=10)
    backend = config["backends"]["primary"]
    backend["connect_timeout"] = f"{int(CONNECT_TIMEOUT * 1000)}ms"
    backend["breaker"] = {"failure_threshold": FAILURE_THRESHOLD, "open_for": f"{int(OPEN_FOR * 1000)}ms",
                          "max_open_for": f"{int(MAX_OPEN_FOR * 1000)}ms"}
    service = config["services"][USER]
    service.update(mode=POOL_MODE, max_connections=10, query_timeout=f"{int(QUERY_TIMEOUT * 1000)}ms")
    return config


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def frozen(pg: pgharness.LocalPostgres):
    """SIGSTOP on the postmaster and all its children for the block; SIGCONT whatever happens."""
    stopped: list[int] = []
    try:
        master = pg.postmaster_pid()
        assert master is not None and process_state(master) is not None, "the test Postgres is not running"
        os.kill(master, signal.SIGSTOP)  # first, so that it forks nothing while we stop its children
        stopped.append(master)
        for pid in pg.pids()[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        # Stopped, or gone: a backend that was exiting stays a zombie until the postmaster runs again.
        done = ("T", "Z", "X", None)
        deadline = time.monotonic() + 5
        while any(process_state(p) not in done for p in stopped) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(process_state(p) in done for p in stopped), [(p, process_state(p)) for p in stopped]
        yield
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def hung_pgsluice(pg):
    """This test's pgsluice (a fresh breaker); its clients are closed before it is stopped, so that an
    open transaction left by a failed assertion does not hold up the drain."""
    target = start_pgsluice(pg, hung_config(pg))
    target.extra["clients"] = []
    try:
        yield target
    finally:
        for conn in target.extra["clients"]:
            with contextlib.suppress(Exception):
                conn.close()
        stop_pgsluice(target)


def connect(target, timeout: int = 5):
    conn = psycopg2.connect(f"host=127.0.0.1 port={target.port} user={USER} dbname=app connect_timeout={timeout}")
    target.extra["clients"].append(conn)
    conn.autocommit = True
    return conn


def scalar(conn, sql: str):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def timed(fn):
    """(outcome, seconds): outcome is ("ok", value) or (sqlstate, message) for a Postgres error."""
    started = time.monotonic()
    try:
        outcome = ("ok", fn())
    except psycopg2.Error as e:
        outcome = (e.pgcode, str(e).strip())
    except pgharness.PgError as e:
        outcome = (e.sqlstate, e.message or "")
    except TimeoutError as e:
        outcome = ("hung", str(e))
    return outcome, time.monotonic() - started


def in_threads(calls: dict, wait: float) -> dict:
    """Runs each call in a thread of its own; {name: (outcome, seconds)}, the outcome ("hung", ...) for
    a call still running after `wait` seconds (its thread finishes once the database is back)."""
    results: dict = {}

    def run(name, fn):
        results[name] = timed(fn)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + wait
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return {name: results.get(name, (("hung", "still running"), wait)) for name in calls}


def raw_login(target) -> str:
    """Logs in over the raw protocol (so the SQLSTATE of a refused login is visible); "ok" or raises."""
    with target.raw(timeout=10) as raw:
        raw.startup(USER, "app", None)
    return "ok"


def server_backends(pg) -> dict:
    rows = pg.sql("select state, count(*) from pg_stat_activity where usename = 'app' group by state")
    return {state: count for state, count in rows}


def wait_for_recovery(target, since: float) -> float | None:
    """Seconds from `since` until a new client logs in and runs a statement; None if not within 10 s."""
    while time.monotonic() - since < 10:
        try:
            conn = connect(target)
            try:
                if scalar(conn, "select 42") == 42:
                    return time.monotonic() - since
            finally:
                conn.close()
        except psycopg2.Error:
            time.sleep(0.05)
    return None


def test_new_server_connections_fail_by_connect_timeout_and_recover_after_sigcont(own_pg):
    pg = own_pg
    with hung_pgsluice(pg) as target:
        # Clients connected and working. Transaction mode: two logged-in clients between transactions
        # (no server connection), then three in open transactions, which pin every server connection
        # the pool has: whatever needs a server connection from now on needs a new one. Session mode:
        # the three hold theirs anyway.
        between = []
        if POOL_MODE != "session":
            for _ in range(2):
                conn = connect(target)
                assert scalar(conn, "select 1") == 1
                between.append(conn)
        holders = []
        for i in range(3):
            conn = connect(target)
            conn.cursor().execute("begin")
            assert scalar(conn, f"select {i}") == i
            holders.append(conn)
        assert server_backends(pg) == {"idle in transaction": 3}, server_backends(pg)

        failures = []  # (what, outcome, seconds) while the database is hung
        with frozen(pg):
            # 1. The first thing that needs a new server connection fails by connect_timeout.
            if POOL_MODE == "session":
                failures.append(("new login",) + timed(lambda: raw_login(target)))
            else:
                failures.append(("statement of a logged-in client",) +
                                timed(lambda: scalar(between[0], "select 1")))
            # 2. More of them, until the breaker opens (failure_threshold connect failures)...
            for attempt in range(FAILURE_THRESHOLD + 2):
                if POOL_MODE == "session":
                    failures.append(("new login",) + timed(lambda: raw_login(target)))
                else:
                    # Logins are served from the parameters pgsluice learnt: no server connection
                    # needed, the database's state does not matter.
                    (login, seconds) = timed(lambda: connect(target))
                    assert login[0] == "ok" and seconds < 1.0, (login, seconds)
                    between.append(login[1])
                    failures.append(("statement of a new client",) + timed(lambda: scalar(between[-1], "select 1")))
                    client = between[attempt % 2]
                    failures.append(("statement of a logged-in client",) + timed(lambda: scalar(client, "select 1")))
                if "circuit open" in str(failures[-1][1][1]):
                    break
            # 3. ...and from then on fail fast.
            fast = []
            for _ in range(20):
                if POOL_MODE == "session":
                    fast.append(timed(lambda: raw_login(target)))
                else:
                    fast.append(timed(lambda: scalar(between[0], "select 1")))
        thawed = time.monotonic()

        recovered = wait_for_recovery(target, thawed)
        print(f"\n[{POOL_MODE}] hung database: "
              + ", ".join(f"{what} {outcome[0]} in {seconds * 1e3:.0f} ms" for what, outcome, seconds in failures)
              + f"; circuit-open failures max {max(s for _, s in fast) * 1e3:.2f} ms"
              + (f"; recovered {recovered:.2f} s after SIGCONT" if recovered is not None else "; NOT recovered"))

        for what, (code, message), seconds in failures:
            assert code == "57P03", (what, code, message, seconds)
            message = str(message)
            assert message.startswith("pgsluice:") and 'service "trusty"' in message, (what, message)
            if CONNECT_TIMEOUT_TEXT in message:
                # The connect timed out, i.e. it took connect_timeout (the DB accepts TCP, never answers).
                assert CONNECT_TIMEOUT - 0.1 <= seconds < BOUND, (what, message, seconds)
            else:
                assert "circuit open" in message and "retrying in" in message, (what, message)
                assert seconds < FAST, (what, message, seconds)
        assert CONNECT_TIMEOUT_TEXT in str(failures[0][1][1]), failures[0]
        timeouts = sum(CONNECT_TIMEOUT_TEXT in str(message) for _, (_, message), _ in failures)
        assert timeouts <= FAILURE_THRESHOLD, failures  # the breaker opened after failure_threshold of them
        assert "circuit open" in str(failures[-1][1][1]), failures
        for (code, message), seconds in fast:
            assert code == "57P03" and "circuit open" in str(message), (code, message)
            assert seconds < FAST, (message, seconds)

        # After SIGCONT, within the breaker's open_for (+ the margins above): new clients...
        assert recovered is not None and recovered <= RECOVERY_BOUND, recovered
        # ...old clients between transactions (their failed statements left them usable, DESIGN §7)...
        for conn in between:
            assert scalar(conn, "select 43") == 43
        # ...and the transactions that were open the whole time, on the same server connections.
        for i, conn in enumerate(holders):
            assert scalar(conn, f"select {i} + 100") == i + 100
            conn.cursor().execute("commit")
        for conn in between + holders:
            conn.close()
        assert target.proxy.alive()


def raw_client(target) -> pgharness.RawConnection:
    raw = target.raw(timeout=10)
    target.extra["clients"].append(raw)
    raw.startup(USER, "app", None)
    return raw


def raw_statement(raw: pgharness.RawConnection, sql: str, timeout: float):
    """Sends a simple Query; what came back up to ReadyForQuery, or up to the connection closing:
    {"errors": [ErrorResponse fields], "rows": [...], "closed": bool}. Raises TimeoutError when
    nothing settles it within timeout (a hang). Raw protocol, because libpq reports a FATAL that
    closes the connection mid-query as "server closed the connection unexpectedly", with no SQLSTATE."""
    raw.send(pgharness.message(b"Q", sql.encode() + b"\0"))
    deadline = time.monotonic() + timeout
    messages = []
    while True:
        msg = raw.read_message(max(0.001, deadline - time.monotonic()))
        if msg is None or msg[0] == b"Z":
            return {"errors": pgharness.errors_of(messages), "rows": pgharness.rows_of(messages),
                    "closed": msg is None}
        messages.append(msg)


def test_statements_on_held_server_connections_fail_by_query_timeout_and_recover_after_sigcont(own_pg):
    pg = own_pg
    with hung_pgsluice(pg) as target:
        # Three clients that have server connections to use when the database hangs: session mode,
        # their own; transaction mode, three the pool keeps idle (opened by three concurrent
        # transactions). A fourth client is inside a transaction (its connection pinned, both modes).
        clients = [raw_client(target) for _ in range(3)]
        in_transaction = raw_client(target)
        for i, raw in enumerate(clients + [in_transaction]):
            assert raw_statement(raw, f"begin; select {i}", 5)["rows"] == [[str(i)]]
        for raw in clients:
            assert raw_statement(raw, "commit", 5)["errors"] == []
        assert server_backends(pg) == {"idle": 3, "idle in transaction": 1}, server_backends(pg)

        everyone = {f"client {i}": raw for i, raw in enumerate(clients)}
        everyone["client in a transaction"] = in_transaction
        calls = {name: (lambda raw=raw: raw_statement(raw, "select 1", BOUND + 1.0)) for name, raw in everyone.items()}
        with frozen(pg):
            # Every statement must come back within query_timeout + margin; one still unanswered after
            # BOUND + 1 s is hung (its answer comes after SIGCONT).
            results = in_threads(calls, BOUND + 2.0)
        thawed = time.monotonic()

        def describe(result):
            (outcome, answer), seconds = result
            if outcome != "ok":
                return f"{outcome}: {answer} after {seconds * 1e3:.0f} ms"
            errors = [f"{e.get('S')} {e.get('C')} {e.get('M')}" for e in answer["errors"]]
            return f"{errors or answer['rows']} after {seconds * 1e3:.0f} ms{', closed' if answer['closed'] else ''}"

        described = {name: describe(result) for name, result in results.items()}
        recovered = wait_for_recovery(target, thawed)
        print(f"\n[{POOL_MODE}] hung database, statements on held server connections: {described}"
              + (f"; recovered {recovered:.2f} s after SIGCONT" if recovered is not None else "; NOT recovered"))

        # After SIGCONT, within the breaker's open_for (+ margins), new clients and the old ones that
        # are still connected work again (a statement that hung gets its late answer first).
        assert recovered is not None and recovered <= RECOVERY_BOUND, recovered
        for name, raw in everyone.items():
            (outcome, answer), _ = results[name]
            if outcome == "ok" and answer["closed"]:
                continue
            if outcome != "ok":
                raw.read_until_ready(10)
            raw_statement(raw, "rollback", 5)
            assert raw_statement(raw, "select 44", 5)["rows"] == [["44"]], name
        assert target.proxy.alive()

        # While the database was hung: 57014 naming query_timeout, after query_timeout (+ the time
        # the cancel may take to be refused), never a hang. Whether pgsluice then closes the client
        # (FATAL) or keeps it is not asserted: with the server connection given up, a session or an
        # open transaction is lost; a client between transactions could keep its connection (§7).
        hung = [name for name, ((outcome, _), _) in results.items() if outcome != "ok"]
        assert not hung, (f"statements on existing server connections not answered {BOUND + 1.0:.1f} s into "
                          f"a hang (query_timeout {QUERY_TIMEOUT} s): {hung}; all: {described}")
        for name, ((_, answer), seconds) in results.items():
            assert len(answer["errors"]) == 1 and answer["rows"] == [], (name, described[name])
            error = answer["errors"][0]
            assert error["C"] == "57014", (name, described[name])
            assert QUERY_TIMEOUT_TEXT in error["M"] and 'service "trusty"' in error["M"], (name, described[name])
            assert QUERY_TIMEOUT - 0.1 <= seconds < BOUND, (name, described[name])
