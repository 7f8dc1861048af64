"""`pgsluice --check --config FILE`, and secrets taken from the environment."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from contextlib import closing

import psycopg2
import pytest
import yaml

import pgharness
from conftest import make_config, start_pgsluice, stop_pgsluice

pytestmark = pytest.mark.proxy_only


def write_yaml(path, config: dict) -> list[str]:
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    path.write_text(text)
    return text.splitlines()


def insert_after(lines: list[str], anchor: str, new_line: str, start: int = 0) -> int:
    """Inserts new_line after the first line equal to anchor (from `start`); returns its 1-based number."""
    index = next(i for i in range(start, len(lines)) if lines[i] == anchor)
    lines.insert(index + 1, new_line)
    return index + 2


def check(path, env=None):
    proc = subprocess.run([str(pgharness.find_binary()), "--check", "--config", str(path)], capture_output=True,
                          text=True, timeout=30, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def lines_mentioning(output: str, word: str) -> list[str]:
    return [line for line in output.splitlines() if word in line]


def test_check_accepts_a_valid_config(pg, tmp_path):
    path = tmp_path / "valid.yaml"
    write_yaml(path, make_config(pg))
    code, output = check(path)
    assert code == 0, output


def test_check_accepts_the_same_config_written_as_json(pg, tmp_path):
    # The harness writes JSON (a subset of YAML); --check must read it the same way.
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(make_config(pg), indent=2))
    code, output = check(path)
    assert code == 0, output


def test_check_rejects_an_unknown_key_with_its_line_number(pg, tmp_path):
    lines = write_yaml(tmp_path / "base.yaml", make_config(pg))
    line = insert_after(lines, "  app:", "    no_such_option: true", start=lines.index("services:"))
    path = tmp_path / "unknown-key.yaml"
    path.write_text("\n".join(lines) + "\n")
    code, output = check(path)
    assert code == 1, output
    mentions = lines_mentioning(output, "no_such_option")
    assert mentions, output
    assert any(re.search(rf"(?<!\d){line}(?!\d)", m) for m in mentions), f"line {line} not named:\n{output}"


def test_check_reports_every_error_with_its_line(pg, tmp_path):
    lines = write_yaml(tmp_path / "base.yaml", make_config(pg))
    first = insert_after(lines, "  primary:", "    typo_backend_option: 1", start=lines.index("backends:"))
    lines.append("no_such_top_level_key: 2")
    second = len(lines)
    path = tmp_path / "two-errors.yaml"
    path.write_text("\n".join(lines) + "\n")
    code, output = check(path)
    assert code == 1, output
    for word, line in (("typo_backend_option", first), ("no_such_top_level_key", second)):
        mentions = lines_mentioning(output, word)
        assert any(re.search(rf"(?<!\d){line}(?!\d)", m) for m in mentions), f"{word} line {line}:\n{output}"


def test_check_rejects_a_bad_duration(pg, tmp_path):
    config = make_config(pg)
    config["client_login_timeout"] = "five seconds"
    lines = write_yaml(tmp_path / "bad-duration.yaml", config)
    line = next(i + 1 for i, text in enumerate(lines) if text.startswith("client_login_timeout:"))
    code, output = check(tmp_path / "bad-duration.yaml")
    assert code == 1, output
    assert any(re.search(rf"(?<!\d){line}(?!\d)", m) for m in lines_mentioning(output, "client_login_timeout")), output


def test_check_rejects_an_unset_environment_secret(pg, tmp_path):
    config = make_config(pg)
    config["users"]["app"]["password"] = "${PGSLUICE_TEST_SURELY_UNSET}"
    write_yaml(tmp_path / "unset-env.yaml", config)
    env = {k: v for k, v in os.environ.items() if k != "PGSLUICE_TEST_SURELY_UNSET"}
    code, output = check(tmp_path / "unset-env.yaml", env=env)
    assert code == 1, output
    assert "PGSLUICE_TEST_SURELY_UNSET" in output


def test_check_rejects_more_connections_than_the_backend_allows(pg, tmp_path):
    config = make_config(pg)
    config["services"]["app"]["max_connections"] = pg.max_connections  # + reserved > the server's max
    write_yaml(tmp_path / "overcommitted.yaml", config)
    code, output = check(tmp_path / "overcommitted.yaml")
    assert code == 1, output
    assert "primary" in output, output


def test_secrets_from_environment_variables_are_used_and_never_logged(pg):
    config = make_config(pg)
    config["users"]["app"]["password"] = "${PGSLUICE_TEST_CLIENT_SECRET}"
    config["services"]["app"]["server_password"] = "${PGSLUICE_TEST_SERVER_SECRET}"
    env = dict(os.environ, PGSLUICE_TEST_CLIENT_SECRET="client-side-Secret-71",
               PGSLUICE_TEST_SERVER_SECRET=pgharness.password_for("app"))
    target = start_pgsluice(pg, config, env=env)
    try:
        with closing(psycopg2.connect(target.dsn("app", password="client-side-Secret-71", connect_timeout=10))) as c:
            with c.cursor() as cur:
                cur.execute("select current_user")
                assert cur.fetchone() == ("app",)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(target.dsn("app", password="${PGSLUICE_TEST_CLIENT_SECRET}", connect_timeout=10))
        log = target.log_text()
        assert "client-side-Secret-71" not in log and pgharness.password_for("app") not in log
    finally:
        stop_pgsluice(target)


def test_log_format_json_writes_one_json_object_per_line(pg):
    config = make_config(pg)
    proxy = pgharness.Pgsluice(config, extra_args=["--log-format", "json"]).start()
    try:
        with closing(psycopg2.connect(pgharness.libpq_dsn("127.0.0.1", proxy.port, "app", "secret-app", "app"))) as c:
            with c.cursor() as cur:
                cur.execute("select 1")
        code = proxy.stop()
        lines = [line for line in proxy.log_text().splitlines() if line.strip()]
        assert code == 0 and lines, proxy.log_text()
        for line in lines:
            record = json.loads(line)  # raises on anything that is not one JSON object
            assert isinstance(record, dict), line
    finally:
        proxy.cleanup()


def test_log_lines_stay_whole_while_both_workers_log_at_once(pg):
    # Each line is written with one write(2) from the thread that logs it, no lock between the
    # workers: at trace level, 16 clients spread over the two workers' listeners log several lines
    # per statement at once, and every line must still be one whole JSON object.
    config = make_config(pg)
    config["workers"] = 2
    config["log"] = {"level": "trace"}
    proxy = pgharness.Pgsluice(config, extra_args=["--log-format", "json"]).start()
    errors: list[str] = []

    def client(n: int) -> None:
        try:
            with closing(psycopg2.connect(pgharness.libpq_dsn("127.0.0.1", proxy.port, "app", "secret-app",
                                                              "app"))) as c:
                c.autocommit = True
                with c.cursor() as cur:
                    for i in range(40):
                        cur.execute("select %s::int + %s", (n, i))
                        assert cur.fetchone() == (n + i,)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {n}: {e!r}")

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        code = proxy.stop()
        assert not errors and code == 0, errors
        lines = proxy.log_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]  # raises on a broken line
        assert all(isinstance(r, dict) and set(r) >= {"time", "level", "thread", "msg"} for r in records)
        # A login and a close line per client at least; the pooled modes also trace every message.
        assert len(records) >= 2 * 16 + (0 if config["services"]["app"]["mode"] == "session" else 16 * 40)
        assert len({r["thread"] for r in records}) >= 2  # both workers logged
    finally:
        proxy.cleanup()


def test_backend_host_given_by_name_is_looked_up_for_connections_and_cancels(pg):
    # A numeric backend host is connected to without a lookup (Asio's resolver would start a thread
    # of its own); a name, as a Kubernetes service gives, goes through the resolver. Both the
    # server connections and the cancel requests sent for clients must reach the database.
    config = make_config(pg)
    config["backends"]["primary"]["host"] = "localhost"
    target = start_pgsluice(pg, config)
    try:
        with closing(psycopg2.connect(target.dsn("app", connect_timeout=10))) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("select host(inet_server_addr()), 1")
                assert cur.fetchone() == ("127.0.0.1", 1)
                timer = threading.Timer(0.5, conn.cancel)
                timer.start()
                try:
                    with pytest.raises(psycopg2.errors.QueryCanceled):
                        cur.execute("select pg_sleep(30)")
                finally:
                    timer.cancel()
                cur.execute("select 2")
                assert cur.fetchone() == (2,)
    finally:
        stop_pgsluice(target)


def test_a_second_pgsluice_on_the_same_address_refuses_to_start_while_the_first_serves_on(pg):
    # With workers > 1 every worker listens on its own socket of an SO_REUSEPORT group; a second
    # process must not join the group and quietly take a share of the clients.
    config = make_config(pg)
    config["workers"] = 2
    first = start_pgsluice(pg, config)
    second = pgharness.Pgsluice(config)
    try:
        try:
            second.start()  # may see the port answer (the first pgsluice) before the second exits
        except RuntimeError:
            pass
        code = second.wait_exit(10)  # a second that went on listening is killed: -9
        log = second.log_text()
        assert code == 1 and "address already in use" in log.lower(), f"exit {code}; log:\n{log}"
        for _ in range(20):  # logins land on both workers' sockets; all are served
            with closing(psycopg2.connect(first.dsn("app", connect_timeout=10))) as c:
                with c.cursor() as cur:
                    cur.execute("select 1")
                    assert cur.fetchone() == (1,)
    finally:
        second.cleanup()
        stop_pgsluice(first)
