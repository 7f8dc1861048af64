"""200 concurrent libpq sessions through pgsluice, each checking it gets its own results."""
from __future__ import annotations

import hashlib
import threading
import time

import psycopg2

from conftest import POOL_MODE

SESSIONS = 200
QUERIES = 25


def test_200_concurrent_sessions_each_get_their_own_results(target):
    barrier = threading.Barrier(SESSIONS, timeout=120)
    results: dict[int, dict] = {}
    errors: list[str] = []

    def session(ident: int) -> None:
        conn = None
        try:
            conn = psycopg2.connect(target.dsn("app", connect_timeout=60, application_name=f"s{ident}"))
            conn.autocommit = True
            # Everyone holds a connection at the same time before anyone queries.
            barrier.wait()
            with conn.cursor() as cur:
                pids = set()
                for i in range(QUERIES):
                    token = f"{ident}:{i}"
                    cur.execute("select %s::int, %s::text, md5(%s::text), current_setting('application_name'), "
                                "pg_backend_pid(), pg_sleep(0.001)", (ident, token, token))
                    got_ident, got_token, got_md5, app_name, pid, _ = cur.fetchone()
                    expected = (ident, token, hashlib.md5(token.encode()).hexdigest(), f"s{ident}")
                    if (got_ident, got_token, got_md5, app_name) != expected:
                        errors.append(f"session {ident} query {i}: got {(got_ident, got_token, got_md5, app_name)}")
                    pids.add(pid)
                # A result set big enough to span many network reads, still only ours.
                cur.execute("select %s::int + g from generate_series(1, 2000) g", (ident * 10000,))
                rows = [r[0] for r in cur.fetchall()]
                if rows != [ident * 10000 + g for g in range(1, 2001)]:
                    errors.append(f"session {ident}: wrong generate_series rows")
            results[ident] = {"pids": pids}
            # Nobody disconnects before everyone is done, so no server connection is handed on.
            barrier.wait()
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(f"session {ident}: {type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            if conn is not None:
                conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(t.is_alive() for t in threads), "sessions still running after 180 s"
    assert errors == [], f"{len(errors)} errors, first: {errors[:5]}"
    assert sorted(results) == list(range(SESSIONS))
    if POOL_MODE == "session":
        # Session mode: each client kept one server connection, and no two clients shared one.
        assert all(len(r["pids"]) == 1 for r in results.values())
        assert len({next(iter(r["pids"])) for r in results.values()}) == SESSIONS
    assert time.monotonic() - started < 120
