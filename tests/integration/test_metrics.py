"""Observability (issue 16, DESIGN §6): /metrics in the Prometheus text format (checked by promtool),
counters that count exactly what a known workload did, /healthz, and /readyz following the
draining state and the circuit breaker."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import psycopg2
import pytest

import pgharness
from conftest import POOL_MODE, TARGET, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice-only behaviour", allow_module_level=True)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def with_metrics(config: dict) -> int:
    port = pgharness.free_port()
    config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{port}"}
    return port


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[tuple, float]:
    """/metrics as {(name, (label pairs, sorted)): value}."""
    status, text = http_get(port, "/metrics")
    assert status == 200, (status, text)
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, tuple(sorted(LABEL.findall(labels or ""))))] = float(value)
    return samples


def value(samples: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not scraped; have: " + ", ".join(
        f"{n}{dict(l)}" for n, l in samples if n == name)
    return samples[key]


def promtool_check(text: str) -> None:
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"promtool check metrics:\n{proc.stdout}\n{proc.stderr}"


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_health_endpoints_and_a_scrape_promtool_accepts_under_load(pg):
    config = pgharness.base_config(pg, pgharness.free_port(), mode=POOL_MODE, max_connections=5)
    port = with_metrics(config)
    target = start_pgsluice(pg, config)
    try:
        assert http_get(port, "/healthz") == (200, "ok\n")
        assert http_get(port, "/readyz") == (200, "ready\n")
        assert http_get(port, "/nothing")[0] == 404
        clients = [psycopg2.connect(target.proxy.dsn("app")) for _ in range(5)]
        for conn in clients:
            conn.autocommit = True
        # Under load: five clients busy while the scrapes run.
        import threading
        stop = threading.Event()

        def work(conn):
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("select pg_sleep(0.001)")

        threads = [threading.Thread(target=work, args=(conn,)) for conn in clients]
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                status, text = http_get(port, "/metrics")
                assert status == 200
                promtool_check(text)
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
        samples = scrape(port)
        assert value(samples, "pgsluice_build_info", version=re.search(r'version="([^"]+)"', text).group(1)) == 1
        assert value(samples, "pgsluice_pool_max_connections", service="app", backend="primary") == 5
        assert value(samples, "pgsluice_breaker_state", backend="primary", state="closed") == 1
        assert value(samples, "pgsluice_queries_total", service="app", backend="primary") > 0
        connected = sum(v for (n, _), v in samples.items() if n == "pgsluice_client_connections")
        assert connected == 5, samples
        for conn in clients:
            conn.close()
    finally:
        stop_pgsluice(target)


@pytest.mark.skipif(POOL_MODE != "transaction", reason="runs in the transaction-mode pass")
def test_counters_count_exactly_what_a_known_workload_did(pg):
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", max_connections=1,
                                   acquire_timeout="300ms")
    dead_port = pgharness.free_port()  # nothing listens there
    config["backends"]["dead"] = {"host": "127.0.0.1", "port": dead_port, "connect_timeout": "1s",
                                  "breaker": {"failure_threshold": 1, "open_for": "60s", "max_open_for": "60s"}}
    config["services"]["dead"] = {**config["services"]["trusty"], "backend": "dead", "mode": "transaction",
                                  "match": {"user": "trusty", "database": "dead"}}
    port = with_metrics(config)
    target = start_pgsluice(pg, config)
    try:
        worker, holder = (psycopg2.connect(target.proxy.dsn("app")) for _ in range(2))
        worker.autocommit = holder.autocommit = True
        before = scrape(port)
        labels = {"service": "app", "backend": "primary"}

        transactions, timeouts = 25, 3
        with worker.cursor() as cur:
            for _ in range(transactions):
                cur.execute("select 1")
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("select 1")
        for _ in range(timeouts):  # the pool's one connection is the holder's: 53300 after 300 ms
            with pytest.raises(psycopg2.OperationalError) as failure:
                with worker.cursor() as cur:
                    cur.execute("select 1")
            assert failure.value.pgcode == "53300"
        with holder.cursor() as cur:
            cur.execute("COMMIT")

        after = scrape(port)
        delta = lambda name, **more: value(after, name, **labels, **more) - value(before, name, **labels, **more)
        assert delta("pgsluice_transactions_total") == transactions + 1
        assert delta("pgsluice_queries_total") == transactions + timeouts + 3
        assert delta("pgsluice_acquire_timeouts_total") == timeouts
        assert delta("pgsluice_fast_fails_total", reason="circuit_open") == 0
        # Acquires: the worker's 25, the holder's BEGIN, the 3 refused (each ~300 ms: above 0.25 s).
        assert delta("pgsluice_acquire_duration_seconds_count") == transactions + 1 + timeouts
        assert delta("pgsluice_acquire_duration_seconds_bucket", le="+Inf") == transactions + 1 + timeouts
        assert delta("pgsluice_acquire_duration_seconds_bucket", le="0.25") == transactions + 1
        assert delta("pgsluice_acquire_duration_seconds_bucket", le="0.5") == transactions + 1 + timeouts
        assert delta("pgsluice_acquire_duration_seconds_sum") >= timeouts * 0.3
        # Statements that reached the server: the worker's 25, the holder's BEGIN, select, COMMIT.
        assert delta("pgsluice_query_duration_seconds_count") == transactions + 3

        # One breaker trip: the dead backend's first connect fails (failure_threshold 1).
        assert http_get(port, "/readyz") == (200, "ready\n")
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(host="127.0.0.1", port=target.port, user="trusty", dbname="dead", connect_timeout=10)
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(host="127.0.0.1", port=target.port, user="trusty", dbname="dead", connect_timeout=10)
        assert "circuit open" in str(refused.value)
        samples = scrape(port)
        assert value(samples, "pgsluice_breaker_trips_total", backend="dead") == 1
        assert value(samples, "pgsluice_breaker_state", backend="dead", state="open") == 1
        assert value(samples, "pgsluice_breaker_state", backend="dead", state="closed") == 0
        assert value(samples, "pgsluice_breaker_trips_total", backend="primary") == 0
        assert value(samples, "pgsluice_server_connects_total", service="dead", backend="dead", result="failure") == 1
        assert value(samples, "pgsluice_fast_fails_total", service="dead", backend="dead", reason="circuit_open") >= 1
        assert http_get(port, "/readyz") == (503, "not ready: circuit breaker open for backend dead\n")

        # One reload that applies, one that does not.
        proxy = target.proxy
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: "reload: applied" in proxy.log_text(), 10, "the reload was not applied")
        proxy.config_path.write_text(proxy.config_path.read_text().replace('"workers"', '"wrkers"'))
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running configuration" in proxy.log_text(), 10, "the bad reload was not seen")
        samples = scrape(port)
        assert value(samples, "pgsluice_config_reloads_total", result="success") == 1
        assert value(samples, "pgsluice_config_reloads_total", result="failure") == 1
        worker.close()
        holder.close()
    finally:
        stop_pgsluice(target)


@pytest.mark.skipif(POOL_MODE != "transaction", reason="runs in the transaction-mode pass")
def test_readyz_follows_the_breaker_and_draining():
    with pgharness.LocalPostgres() as pg:
        config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", max_connections=2)
        config["backends"]["primary"]["connect_timeout"] = "1s"
        config["backends"]["primary"]["breaker"] = {"failure_threshold": 1, "open_for": "1s", "max_open_for": "1s"}
        port = with_metrics(config)
        target = start_pgsluice(pg, config)
        try:
            conn = psycopg2.connect(target.proxy.dsn("app"))
            conn.autocommit = True
            assert http_get(port, "/readyz")[0] == 200
            pg.stop("immediate")
            with pytest.raises(psycopg2.Error):
                conn.cursor().execute("select 1")
            opened = time.monotonic()
            wait_for(lambda: http_get(port, "/readyz")[0] == 503, 5, "/readyz never said 503")
            assert time.monotonic() - opened < 1.0
            assert "circuit breaker open for backend primary" in http_get(port, "/readyz")[1]
            pg.start_again()
            # The next statement after open_for is the probe; it closes the breaker.
            def statement_works():
                try:
                    with psycopg2.connect(target.proxy.dsn("app")) as probe, probe.cursor() as cur:
                        cur.execute("select 1")
                    return True
                except psycopg2.Error:
                    return False
            wait_for(statement_works, 10, "statements never worked again")
            assert http_get(port, "/readyz") == (200, "ready\n")
            # SIGTERM: not ready while draining (a client still connected keeps it draining).
            target.proxy.signal(signal.SIGTERM)
            wait_for(lambda: http_get(port, "/readyz")[0] == 503, 5, "/readyz said ready while draining")
            assert "draining" in http_get(port, "/readyz")[1]
            conn.close()
        finally:
            stop_pgsluice(target)


@pytest.mark.skipif(POOL_MODE != "transaction", reason="runs in the transaction-mode pass")
def test_the_shipped_alert_rules_pass_promtool():
    rules = pgharness.REPO_ROOT / "deploy" / "prometheus"
    for argv in ([PROMTOOL, "check", "rules", str(rules / "alerts.yaml")],
                 [PROMTOOL, "test", "rules", str(rules / "alerts_test.yaml")]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.skipif(POOL_MODE != "transaction", reason="runs in the transaction-mode pass")
def test_pins_and_replays_are_counted(pg):
    config = pgharness.base_config(pg, pgharness.free_port(), mode="transaction", max_connections=1)
    port = with_metrics(config)
    target = start_pgsluice(pg, config)
    try:
        a, b = (psycopg2.connect(target.proxy.dsn("app")) for _ in range(2))
        a.autocommit = b.autocommit = True
        labels = {"service": "app", "backend": "primary"}
        before = scrape(port)
        # One connection: A's setting is on it, so B's next statement replays B's settings, then A's.
        a.cursor().execute("SET work_mem = '77kB'")
        b.cursor().execute("select 1")
        a.cursor().execute("select 1")
        after = scrape(port)
        assert value(after, "pgsluice_state_replays_total", **labels) - \
            value(before, "pgsluice_state_replays_total", **labels) == 2
        with a.cursor() as cur:
            cur.execute("select pg_advisory_lock(42)")
            cur.execute("select pg_advisory_lock(43)")
        assert value(scrape(port), "pgsluice_pins_total", **labels) == 1  # once per client
        a.cursor().execute("select pg_advisory_unlock_all()")
        a.close()
        b.close()
    finally:
        stop_pgsluice(target)


def test_slow_statements_are_logged_with_their_shape_never_their_values(pg):
    config = pgharness.base_config(pg, pgharness.free_port(), mode=POOL_MODE, max_connections=2)
    config["log"]["slow_statements"] = "100ms"
    target = start_pgsluice(pg, config)
    try:
        conn = psycopg2.connect(target.proxy.dsn("app"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select 'fast-secret-value'")
            cur.execute("select pg_sleep(0.2), 'slow-secret-value' as v")
            cur.execute("select pg_sleep(%s), %s", (0.15, "bound-secret-value"))
        conn.close()
        wait_for(lambda: target.proxy.log_text().count("slow statement") >= 2, 5, "no slow statement logged")
        log = target.proxy.log_text()
        lines = [line for line in log.splitlines() if "slow statement" in line]
        assert len(lines) == 2, lines
        assert "select pg_sleep($1), $2 as v" in lines[0] and "fingerprint " in lines[0], lines[0]
        assert "service app, user app" in lines[0]
        for secret in ("fast-secret-value", "slow-secret-value", "bound-secret-value"):
            assert secret not in log
    finally:
        stop_pgsluice(target)


def test_bad_http_input_gets_an_error_or_a_closed_socket_and_harms_nothing(pg):
    import socket

    config = pgharness.base_config(pg, pgharness.free_port(), mode=POOL_MODE, max_connections=2)
    port = with_metrics(config)
    target = start_pgsluice(pg, config)
    try:
        def exchange(data: bytes) -> bytes:
            # pgsluice may close (even reset) the connection before it has read all of an oversized
            # request: then the send, the shutdown or the read fails, which is a closed socket too.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                chunks = []
                try:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    while chunk := sock.recv(65536):
                        chunks.append(chunk)
                except (ConnectionResetError, BrokenPipeError, OSError) as e:
                    if isinstance(e, socket.timeout):
                        raise
                return b"".join(chunks)

        assert exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert exchange(b"\x00\x01garbage that is not HTTP\r\n\r\n") == b""        # closed, no answer
        assert exchange(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n") == b""      # header over 8 KiB
        # A scraper that connects and says nothing holds nobody up.
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            assert http_get(port, "/healthz") == (200, "ok\n")
            with psycopg2.connect(target.proxy.dsn("app")) as conn, conn.cursor() as cur:
                cur.execute("select 1")
                assert cur.fetchone() == (1,)
        finally:
            idle.close()
        status, text = http_get(port, "/metrics")
        assert status == 200 and "pgsluice_build_info" in text
    finally:
        stop_pgsluice(target)
