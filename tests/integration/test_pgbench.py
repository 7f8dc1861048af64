"""pgbench through pgsluice: select-only and TPC-B-like, 20 clients, in every query protocol."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

CLIENTS = 20
SECONDS = 3


@pytest.fixture(scope="module")
def pgbench_tables(pg):
    # Initialised straight on Postgres, so that only the benchmark itself goes through the proxy.
    env = dict(pg.env("app", "app"))
    proc = subprocess.run(["pgbench", "-i", "-s", "2", "-q", "app"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert pg.sql("select count(*) from pgbench_accounts", user="app", db="app") == [(200000,)]


def run_pgbench(target, *args):
    login = target.login("app")
    env = dict(os.environ, PGPASSWORD=login.password, PGCONNECT_TIMEOUT="10")
    argv = ["pgbench", "-h", target.host, "-p", str(target.port), "-U", login.user, "-n",
            "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS), *args, login.database]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=SECONDS + 120)
    return proc, proc.stdout + proc.stderr


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("script", ["select-only", "tpcb-like"])
def test_pgbench_completes_without_aborted_or_failed_transactions(target, pgbench_tables, script, protocol):
    proc, output = run_pgbench(target, "-b", script, "-M", protocol)
    assert proc.returncode == 0, output
    assert "aborted" not in output, output
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", output, re.M), output
    assert re.search(rf"^number of clients: {CLIENTS}$", output, re.M), output
    assert re.search(rf"^query mode: {protocol}$", output, re.M), output
    processed = int(re.search(r"^number of transactions actually processed: (\d+)$", output, re.M).group(1))
    tps = float(re.search(r"^tps = ([0-9.]+) \(without initial connection time\)$", output, re.M).group(1))
    assert processed > 0 and tps > 0, output
