#!/usr/bin/python3
"""Same-run pgbench comparison: direct Postgres vs pgsluice vs PgBouncer (DESIGN §9).

One run starts a throwaway Postgres, loads it with `pgbench -i`, then measures the same pgbench
workload against each target, one after the other, and prints TPS, average latency and the
ratios to direct Postgres and to PgBouncer:

    bench/pgbench_compare.py                                   # -S -c 20 -j 2 -T 15, session mode
    bench/pgbench_compare.py --mode prepared --pool-mode transaction --clients 50 --pool-size 20
    bench/pgbench_compare.py --targets direct,pgbouncer --json result.json

Targets: `direct` (pgbench straight to Postgres), `pgsluice` (the release build, `--workers`
threads), `pgsluice-coalesce` (the same with `coalesce: {enabled: true}` on its service, transaction
mode only; docs/coalescing.md), `pgbouncer` (Debian's /usr/sbin/pgbouncer, run as the `postgres` OS
user because it refuses to run as root). Every target runs on this machine, so pgbench, the proxy
and Postgres share its cores: the ratios are what this run measured, on this machine, nothing more.

`--tls` runs every target with TLS on both sides: the benchmark's Postgres gets `ssl = on` with a
certificate of a throwaway CA and accepts TCP logins over TLS only (hostssl), pgsluice gets
`tls: {mode: require, cert, key}` and its backend `tls: {mode: require}`, PgBouncer
`client_tls_sslmode = require` (with its own certificate of that CA) and `server_tls_sslmode =
require`, and pgbench connects to every target, direct Postgres included, with sslmode=require.
Before measuring, one connection through each target checks that both of its sides are encrypted
(libpq's view of the client side, pg_stat_ssl's of the server side) and one with sslmode=disable
that it is refused.

`--p99` adds the 99th percentile of the latency (from pgbench's per-transaction log, `-l`) and
`--executions` the statements Postgres executed per pgbench transaction (from pg_stat_statements):
the N+1 scenario of issue 15 (bench/n_plus_one.sh) uses both.

With `--rounds` > 1 the targets are interleaved, each round in a rotated order (each target runs
first, second, ... in turn), and a ratio is the median over rounds of the ratio measured within
one round: two targets of the same round ran seconds apart, so a slow minute of the machine hits
both and cancels out of their ratio. TPS and latency columns are medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "harness"))

import psycopg2  # noqa: E402
from pgharness import (LocalPostgres, Pgsluice, base_config, free_port, make_ca,  # noqa: E402
                       make_certificate, password_for, wait_for_port)

PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"
PGBOUNCER = "/usr/sbin/pgbouncer"
ALL_TARGETS = ("direct", "pgsluice", "pgsluice-coalesce", "pgbouncer")
DEFAULT_TARGETS = ("direct", "pgsluice", "pgbouncer")
COALESCE = "pgsluice-coalesce"  # and pgsluice-coalesce-wN with several --workers
USER, DATABASE = "app", "app"

TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
LATENCY_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
PROCESSED_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
ABORTED_RE = re.compile(r"client \d+ (?:script \d+ )?aborted", re.M)


@dataclass
class Measurement:
    target: str
    round: int
    ok: bool
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    aborted_clients: int = 0
    cpu_user_us: float | None = None  # the proxy's CPU per transaction (from /proc/PID/stat)
    cpu_sys_us: float | None = None
    client_cpu_us: float | None = None  # pgbench's user+system CPU per transaction
    client_wakes: float | None = None  # pgbench's voluntary context switches per transaction
    server_cpu_us: float | None = None  # all Postgres backends' CPU per transaction
    p99_latency_ms: float | None = None  # --p99: from pgbench's per-transaction log, steady state
    log_latency_ms: float | None = None  # --p99: the average from that log, same window
    logged_transactions: int | None = None  # --p99: the transactions of that window
    server_executions: int | None = None  # --executions: pg_stat_statements calls during the run
    executions_per_tx: float | None = None
    top_statements: list | None = None  # --executions: [calls, text] of the most called statements
    error: str | None = None


@dataclass
class Summary:
    target: str
    ok: bool
    tps: float | None = None
    latency_ms: float | None = None
    tps_vs_direct: float | None = None
    tps_vs_pgbouncer: float | None = None
    tps_vs_pgbouncer_range: tuple[float, float] | None = None  # lowest and highest round's ratio
    latency_vs_direct: float | None = None
    latency_vs_pgbouncer: float | None = None
    cpu_user_us: float | None = None
    cpu_sys_us: float | None = None
    client_cpu_us: float | None = None
    client_wakes: float | None = None
    server_cpu_us: float | None = None
    p99_latency_ms: float | None = None
    executions_per_tx: float | None = None
    tps_vs_off: float | None = None  # pgsluice-coalesce against pgsluice (same workers), paired by round
    latency_vs_off: float | None = None
    rounds: list = field(default_factory=list)
    error: str | None = None


def parse_pgbench(output: str) -> dict:
    """The figures of one pgbench run; raises ValueError when its summary lines are missing."""
    tps, latency = TPS_RE.search(output), LATENCY_RE.search(output)
    if not tps or not latency:
        raise ValueError("no 'tps = ... (without initial connection time)' or 'latency average' line")
    processed, failed = PROCESSED_RE.search(output), FAILED_RE.search(output)
    return {
        "tps": float(tps.group(1)),
        "latency_ms": float(latency.group(1)),
        "transactions": int(processed.group(1)) if processed else None,
        "failed": int(failed.group(1)) if failed else 0,
        "aborted_clients": len(ABORTED_RE.findall(output)),
    }


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- PgBouncer -------------------------------------------------------------------------------------
class PgBouncer:
    """Debian's pgbouncer in a temp dir with its own ini and userlist, as the `postgres` OS user."""

    def __init__(self, pg: LocalPostgres, pool_mode: str, pool_size: int, max_clients: int,
                 nofile: int | None = None, tls: tuple[Path, Path] | None = None):
        self.pg, self.pool_mode, self.pool_size, self.max_clients = pg, pool_mode, pool_size, max_clients
        # With tls (certificate, key), clients must use TLS and so does PgBouncer towards Postgres.
        self.tls = tls
        # With nofile, pgbouncer runs under `prlimit --nofile=N:N` (runuser's PAM session resets the
        # soft limit to 1024, too few for thousands of clients); None leaves its limits alone.
        self.nofile = nofile
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PgBouncer":
        if not os.access(PGBOUNCER, os.X_OK):
            raise RuntimeError(f"{PGBOUNCER} not found: apt-get install pgbouncer (bench/run.sh does)")
        self.dir = Path(tempfile.mkdtemp(prefix="pgsluice-bench-pgbouncer-", dir="/tmp"))
        self.write_files()
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root.
            pw = pwd.getpwnam("postgres")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir / "userlist.txt", 0o600)
            argv = ["runuser", "-u", "postgres", "--", *self.limits_prefix(), PGBOUNCER,
                    str(self.dir / "pgbouncer.ini")]
        else:
            argv = [*self.limits_prefix(), PGBOUNCER, str(self.dir / "pgbouncer.ini")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, cwd="/tmp")
        if not wait_for_port("127.0.0.1", self.port, 15, alive=lambda: self.proc.poll() is None):
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"pgbouncer did not start on port {self.port}:\n{tail(log)}")
        return self

    def write_files(self) -> None:
        """pgbouncer.ini and userlist.txt in self.dir (a subclass writes its own)."""
        # Clients authenticate with SCRAM against a plain-text userlist entry; PgBouncer then logs in
        # to Postgres with SCRAM using the same password, as pgsluice does.
        (self.dir / "userlist.txt").write_text(f'"{USER}" "{password_for(USER)}"\n')
        tls_settings = ""
        if self.tls is not None:
            # Copies in its own dir, so that the postgres OS user it runs as owns them (below).
            shutil.copyfile(self.tls[0], self.dir / "tls.crt")
            shutil.copyfile(self.tls[1], self.dir / "tls.key")
            os.chmod(self.dir / "tls.key", 0o600)
            tls_settings = (f"client_tls_sslmode = require\nclient_tls_cert_file = {self.dir}/tls.crt\n"
                            f"client_tls_key_file = {self.dir}/tls.key\nserver_tls_sslmode = require\n")
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{DATABASE} = host={self.pg.host} port={self.pg.port} dbname={DATABASE}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.dir}/userlist.txt\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
            f"max_client_conn = {self.max_clients + 100}\n"
            "server_reset_query = DISCARD ALL\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.dir}/pgbouncer.log\npidfile = {self.dir}/pgbouncer.pid\n"
            "log_connections = 0\nlog_disconnections = 0\nstats_period = 3600\n"
            + tls_settings
        )

    def limits_prefix(self) -> list[str]:
        """What pgbouncer's argv starts with to get its file descriptor limit (prlimit execs it, so
        the pid stays pgbouncer's)."""
        return [] if self.nofile is None else ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--"]

    def pid(self) -> int | None:
        """pgbouncer's own pid (runuser forks it), from its pidfile once written."""
        for _ in range(50):
            try:
                return int((self.dir / "pgbouncer.pid").read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.1)
        return None

    def version(self) -> str:
        out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "unknown"

    def log_text(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        # runuser forks: signal pgbouncer itself (its pidfile), then reap runuser. SIGTERM is
        # pgbouncer's immediate shutdown.
        try:
            pid = int((self.dir / "pgbouncer.pid").read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pgbouncer":
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None and not os.environ.get("PGSLUICE_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgBouncer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


# -- pgsluice ------------------------------------------------------------------------------------
def pgsluice_config(pg: LocalPostgres, port: int, args, workers: int, coalesce: bool = False,
                    tls: tuple[Path, Path] | None = None) -> dict:
    """The harness's base config, reduced to the one `app` service the benchmark uses; with coalesce,
    that service coalesces (docs/coalescing.md); with tls (certificate, key), clients must use TLS and
    so does pgsluice towards Postgres."""
    config = base_config(pg, port, mode=args.pool_mode, max_connections=args.pool_size, min_connections=0)
    if coalesce:
        config["services"]["app"]["coalesce"] = {"enabled": True, "max_batch": args.coalesce_max_batch}
    config["workers"] = workers
    config["log"] = {"level": args.pgsluice_log_level}
    config["users"] = {USER: config["users"][USER]}
    config["services"] = {"app": config["services"]["app"]}
    if tls is not None:
        config["tls"] = {"mode": "require", "cert": str(tls[0]), "key": str(tls[1])}
        config["backends"]["primary"]["tls"] = {"mode": "require"}
    return config


class Scraper:
    """GETs /metrics every `interval` seconds in a thread, as Prometheus would (--scrape-ms)."""

    def __init__(self, port: int, interval: float):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = self.failures = 0
        self.slowest = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                self.scrapes += 1
            except OSError:
                self.failures += 1
            self.slowest = max(self.slowest, time.monotonic() - started)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


# -- TLS on both sides (--tls) ---------------------------------------------------------------------
def enable_tls(pg: LocalPostgres) -> dict[str, tuple[Path, Path]]:
    """Switches pg to ssl = on with a certificate of a throwaway CA and to TCP logins over TLS only
    (every `host` line of its pg_hba.conf becomes `hostssl`, plain text is rejected), and returns the
    certificates (certificate, key) of that CA for pgsluice and PgBouncer. All of it lives under
    pg.root, removed with the cluster."""
    certs = pg.root / "certs"
    ca = make_ca(certs / "ca")
    # Postgres wants its key owned by the OS user it runs as, mode 0600, in a directory it can read.
    server_dir = pg.root / "tls"
    server_dir.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(server_dir, pw.pw_uid, pw.pw_gid)
    server = make_certificate(server_dir, "server", ca, owner="postgres")
    pg.sql("ALTER SYSTEM SET ssl = on")
    pg.sql(f"ALTER SYSTEM SET ssl_cert_file = '{server[0]}'")
    pg.sql(f"ALTER SYSTEM SET ssl_key_file = '{server[1]}'")
    hba_path = pg.datadir / "pg_hba.conf"
    hba = [("hostssl" + line[len("host"):]) if line.startswith("host ") else line
           for line in hba_path.read_text().splitlines()]
    hba_path.write_text("\n".join([*hba, "hostnossl all all 127.0.0.1/32 reject"]) + "\n")
    pg.sql("SELECT pg_reload_conf()")
    for _ in range(50):  # the postmaster reloads asynchronously
        if pg.sql("SHOW ssl")[0][0] == "on":
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"postgres did not turn ssl on:\n{tail(pg.log_text())}")
    return {"ca": ca, "pgsluice": make_certificate(certs / "pgsluice", "pgsluice", ca),
            "pgbouncer": make_certificate(certs / "pgbouncer", "pgbouncer", ca)}


SERVER_SIDE_SQL = "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def check_tls(port: int) -> str:
    """One connection through a target with sslmode=require: libpq must have TLS on the client side
    and pg_stat_ssl must show it on the server side (the backend that ran the query); one with
    sslmode=disable must be refused. Raises RuntimeError otherwise; returns what was negotiated."""
    login = dict(host="127.0.0.1", port=port, user=USER, password=password_for(USER), dbname=DATABASE,
                 connect_timeout=10)
    try:
        conn = psycopg2.connect(sslmode="require", **login)
    except psycopg2.Error as e:
        raise RuntimeError(f"TLS check: cannot connect with sslmode=require: {str(e).strip()}") from e
    try:
        client = (conn.info.ssl_in_use, conn.info.ssl_attribute("protocol"), conn.info.ssl_attribute("cipher"))
        with conn.cursor() as cur:
            cur.execute(SERVER_SIDE_SQL)
            server = cur.fetchone()
        conn.rollback()
    except psycopg2.Error as e:
        raise RuntimeError(f"TLS check: {SERVER_SIDE_SQL} failed: {str(e).strip()}") from e
    finally:
        conn.close()
    if not client[0]:
        raise RuntimeError("TLS check: the client side is not encrypted with sslmode=require")
    if server is None or server[0] is not True:
        raise RuntimeError(f"TLS check: the server side is not encrypted (pg_stat_ssl: {server})")
    try:
        psycopg2.connect(sslmode="disable", **login).close()
    except psycopg2.Error as e:
        refusal = str(e).strip().splitlines()[0]
    else:
        raise RuntimeError("TLS check: a connection with sslmode=disable was accepted")
    return (f"client side {client[1]} {client[2]}, server side {server[1]} {server[2]}; "
            f"sslmode=disable refused ({refusal})")


# -- running pgbench --------------------------------------------------------------------------------
def pgbench_argv(port: int, args, duration: int, log_prefix: Path | None = None) -> list[str]:
    workload = ["-f", str(Path(args.script).resolve())] if args.script else ["-S"]
    log = ["-l", "--log-prefix", str(log_prefix)] if log_prefix is not None else []
    return [PGBENCH, "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-n", *workload, *log,
            "-M", args.mode, "-c", str(args.clients), "-j", str(args.threads), "-T", str(duration), DATABASE]


def pgbench_env(tls: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password_for(USER), PGSSLMODE="require" if tls else "disable",
               PGCONNECT_TIMEOUT="10")
    return env


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: index i is field i + 3 of proc(5)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_ticks(pid: int | None) -> tuple[int, int] | None:
    """User and system CPU of a process (all its threads) so far, in clock ticks."""
    fields = stat_fields(pid) if pid is not None else None
    if fields is None:
        return None
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def postmaster_pid(pg: LocalPostgres) -> int | None:
    try:
        return int((pg.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def children_ticks(parent: int | None) -> int | None:
    """User+system CPU, in clock ticks, of the children of `parent` (the postmaster's: its backends
    and helpers): the live ones, plus those that exited and were reaped (the parent's cutime and
    cstime), so that a backend ending in between (a direct pgbench run's own) is still counted."""
    fields = stat_fields(parent) if parent is not None else None
    if fields is None:
        return None
    total = int(fields[13]) + int(fields[14])  # cutime, cstime (fields 16 and 17 of proc(5))
    return total + sum(int(child[11]) + int(child[12]) for child in children_fields(parent))


def children_fields(parent: int):
    """The stat fields (see stat_fields) of every live child of `parent`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(entry.name)) is not None:
            if int(fields[1]) == parent:  # field 4 of proc(5): ppid
                yield fields


PROGRESS_RE = re.compile(r"^progress: ([0-9.]+) s, ([0-9.]+) tps")


# -- latency percentiles (--p99) -------------------------------------------------------------------
def logged_latencies(log_dir: Path, since: float | None) -> list[int]:
    """The latencies in µs of the transactions in pgbench's per-transaction logs (`-l`, one file per
    thread in log_dir) that completed at or after the Unix time `since` (all of them when None).

    A line is `client_id transaction_no time script_no time_epoch time_us [...]` (pgbench docs,
    "Per-Transaction Logging"): `time` is the latency in µs, or `skipped`/`failed` (not counted),
    and time_epoch.time_us is when the transaction completed."""
    latencies = []
    since_us = None if since is None else int(since * 1e6)
    for path in sorted(log_dir.iterdir()):
        with path.open() as log:
            for line in log:
                fields = line.split()
                if len(fields) < 6 or not fields[2].isdigit():
                    continue
                if since_us is not None and int(fields[4]) * 1_000_000 + int(fields[5]) < since_us:
                    continue
                latencies.append(int(fields[2]))
    return latencies


def percentile(values: list[int], fraction: float) -> int:
    """The nearest-rank percentile: the smallest value with at least `fraction` of them at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)] if ordered else 0


# -- server executions (--executions) ---------------------------------------------------------------
# pg_stat_statements counts every statement Postgres executes (top level; utility statements such as
# DISCARD or SET not at all), per database: the calls in the benchmark's database over one pgbench
# run, divided by its transactions, are the server executions per request.
PG_STAT_STATEMENTS_CONF = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.max": 10000,
    "pg_stat_statements.track": "top",
    "pg_stat_statements.track_utility": "off",
}
STATEMENTS_SQL = """
    SELECT s.calls, s.query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname = %s AND s.query NOT LIKE '%%pg_stat_statements%%' ORDER BY s.calls DESC"""


def reset_statements(pg: LocalPostgres) -> None:
    # From the postgres database (where the extension is): these calls are not in the app's count.
    pg.sql("SELECT pg_stat_statements_reset()")


def executed_statements(pg: LocalPostgres) -> list[tuple[int, str]]:
    """(calls, text) of every statement executed in the benchmark's database since the reset."""
    return [(int(calls), query) for calls, query in pg.sql(STATEMENTS_SQL, params=(DATABASE,))]


def process_cpu(pid: int) -> tuple[int, int] | None:
    """CPU ticks (user+system, all threads) and voluntary context switches (all threads) of a
    running process."""
    ticks = cpu_ticks(pid)
    if ticks is None:
        return None
    switches = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return ticks[0] + ticks[1], switches


def run_pgbench(target: str, port: int, args, round_no: int, duration: int, pid: int | None = None,
                postmaster: int | None = None, latency_log: bool = False,
                statements_of: LocalPostgres | None = None) -> Measurement:
    """One pgbench run. TPS and latency are pgbench's own. The CPU figures per transaction are taken
    over the steady state only: from its first progress report (1 s in, the clients connected) to its
    last, with the transactions of that window from the reports. Counting the whole run would charge
    each process for the logins too (SCRAM costs the client, the proxy and Postgres milliseconds of
    CPU per connection, as much as hundreds of transactions), unequally between proxies.

    With latency_log, pgbench also writes its per-transaction log, and the p99 and average latency
    are those of the transactions that completed from its first progress report on (the same steady
    state). With statements_of (a Postgres with pg_stat_statements), its statistics are reset before
    the run and its executions in the benchmark's database counted after it."""
    log_dir = Path(tempfile.mkdtemp(prefix="pgsluice-bench-log-", dir="/tmp")) if latency_log else None
    try:
        if statements_of is not None:
            reset_statements(statements_of)
        m, window_started_at = pgbench_once(target, port, args, round_no, duration, pid, postmaster,
                                            log_dir / "pgbench_log" if log_dir else None)
        if m.transactions and statements_of is not None:
            statements = executed_statements(statements_of)
            m.server_executions = sum(calls for calls, _ in statements)
            m.executions_per_tx = m.server_executions / m.transactions
            m.top_statements = [[calls, " ".join(query.split())[:200]] for calls, query in statements[:5]]
        if m.transactions and log_dir is not None:
            latencies = logged_latencies(log_dir, window_started_at)
            if not latencies:  # a run too short for a progress report
                latencies = logged_latencies(log_dir, None)
            if latencies:
                m.p99_latency_ms = percentile(latencies, 0.99) / 1e3
                m.log_latency_ms = sum(latencies) / len(latencies) / 1e3
                m.logged_transactions = len(latencies)
        return m
    finally:
        if log_dir is not None:
            shutil.rmtree(log_dir, ignore_errors=True)


def pgbench_once(target: str, port: int, args, round_no: int, duration: int, pid: int | None,
                 postmaster: int | None, log_prefix: Path | None) -> tuple[Measurement, float | None]:
    """The measurement of run_pgbench, and the Unix time of pgbench's first progress report."""
    argv = pgbench_argv(port, args, duration, log_prefix) + ["-P", "1"]
    try:
        proc = subprocess.Popen(argv, env=pgbench_env(args.tls), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        return Measurement(target, round_no, ok=False, error=f"cannot run pgbench: {e}"), None
    killer = threading.Timer(duration + 60, proc.kill)
    killer.start()
    window_start = None  # (progress time, proxy ticks, server ticks, pgbench (ticks, switches))
    window_end = None
    window_tx = 0.0
    window_started_at = None
    stderr_lines = []
    try:
        for line in proc.stderr:
            stderr_lines.append(line)
            progress = PROGRESS_RE.match(line)
            if not progress:
                continue
            snapshot = (float(progress.group(1)), cpu_ticks(pid), children_ticks(postmaster), process_cpu(proc.pid))
            if window_start is None:
                window_start = snapshot
                window_started_at = time.time()
                continue
            window_tx += float(progress.group(2)) * (snapshot[0] - (window_end or window_start)[0])
            window_end = snapshot
        stdout = proc.stdout.read()
        proc.wait()
    finally:
        killer.cancel()
    output = stdout + "\n" + "".join(line for line in stderr_lines if not PROGRESS_RE.match(line))
    if proc.returncode == -signal.SIGKILL:
        return Measurement(target, round_no, ok=False, error=f"pgbench did not finish in {duration + 60} s"), None
    try:
        figures = parse_pgbench(output)
    except ValueError as e:
        return Measurement(target, round_no, ok=False, error=f"{e} (exit {proc.returncode}):\n{tail(output)}"), None
    m = Measurement(target, round_no, ok=True, **figures)
    if window_start and window_end and window_tx > 0:
        seconds_per_tick = 1 / os.sysconf("SC_CLK_TCK")
        per_tx = lambda ticks: ticks * seconds_per_tick * 1e6 / window_tx  # noqa: E731
        if window_start[1] and window_end[1]:
            m.cpu_user_us = per_tx(window_end[1][0] - window_start[1][0])
            m.cpu_sys_us = per_tx(window_end[1][1] - window_start[1][1])
        if window_start[2] is not None and window_end[2] is not None:
            m.server_cpu_us = per_tx(window_end[2] - window_start[2])
        if window_start[3] and window_end[3]:
            m.client_cpu_us = per_tx(window_end[3][0] - window_start[3][0])
            m.client_wakes = (window_end[3][1] - window_start[3][1]) / window_tx
    if proc.returncode != 0 or m.aborted_clients or m.failed:
        m.ok = False
        m.error = (f"exit {proc.returncode}, {m.aborted_clients} clients aborted, {m.failed} failed "
                   f"transactions:\n{tail(output)}")
    return m, window_started_at


def summarize(measurements: list[Measurement], targets: list[str]) -> list[Summary]:
    summaries = {}
    for target in targets:
        runs = [m for m in measurements if m.target == target]
        good = [m for m in runs if m.ok]
        s = Summary(target, ok=bool(runs) and len(good) == len(runs), rounds=[asdict(m) for m in runs])
        if good:
            s.tps = statistics.median(m.tps for m in good)
            s.latency_ms = statistics.median(m.latency_ms for m in good)
            if all(m.cpu_user_us is not None for m in good):
                s.cpu_user_us = statistics.median(m.cpu_user_us for m in good)
                s.cpu_sys_us = statistics.median(m.cpu_sys_us for m in good)
            for name in ("client_cpu_us", "client_wakes", "server_cpu_us", "p99_latency_ms", "executions_per_tx"):
                if all(getattr(m, name) is not None for m in good):
                    setattr(s, name, statistics.median(getattr(m, name) for m in good))
        bad = [m for m in runs if not m.ok]
        if bad:
            s.error = bad[0].error
        summaries[target] = s

    def round_ratios(target: str, ref: str, field_name: str) -> list[float]:
        # The ratio within each round both ran well.
        by_round = {m.round: getattr(m, field_name) for m in measurements if m.target == ref and m.ok}
        return [getattr(m, field_name) / by_round[m.round] for m in measurements
                if m.target == target and m.ok and by_round.get(m.round)]

    def median_or_none(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    for s in summaries.values():
        for ref in ("direct", "pgbouncer"):
            if ref in summaries:
                tps_ratios = round_ratios(s.target, ref, "tps")
                setattr(s, f"tps_vs_{ref}", median_or_none(tps_ratios))
                setattr(s, f"latency_vs_{ref}", median_or_none(round_ratios(s.target, ref, "latency_ms")))
                if ref == "pgbouncer" and len(tps_ratios) > 1:
                    s.tps_vs_pgbouncer_range = (min(tps_ratios), max(tps_ratios))
        if (off := coalesce_off(s.target)) in summaries:
            s.tps_vs_off = median_or_none(round_ratios(s.target, off, "tps"))
            s.latency_vs_off = median_or_none(round_ratios(s.target, off, "latency_ms"))
    return list(summaries.values())


def coalesce_off(target: str) -> str | None:
    """The pgsluice target that differs from a coalescing one only in coalescing."""
    return "pgsluice" + target[len(COALESCE):] if target.startswith(COALESCE) else None


def format_table(summaries: list[Summary], p99: bool = False, executions: bool = False) -> str:
    """The results as a Markdown table; p99 and executions add their columns, and the ratios to
    coalescing off appear when a coalescing target and its pgsluice were both measured."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    names = {s.target for s in summaries}
    vs_off = any(coalesce_off(name) in names for name in names)
    columns = [  # (header, cell of a summary, shown)
        ("target", lambda s: s.target + ("" if s.ok else " (FAILED)"), True),
        ("TPS", lambda s: num(s.tps, ",.0f"), True),
        ("avg latency ms", lambda s: num(s.latency_ms, ".3f"), True),
        ("p99 latency ms", lambda s: num(s.p99_latency_ms, ".3f"), p99),
        ("TPS / direct", lambda s: num(s.tps_vs_direct, ".2f"), True),
        ("TPS / PgBouncer", lambda s: num(s.tps_vs_pgbouncer, ".2f") + (
            "" if s.tps_vs_pgbouncer_range is None or s.target == "pgbouncer" else
            " ({:.2f}–{:.2f})".format(*s.tps_vs_pgbouncer_range)), True),
        ("TPS / coalesce off", lambda s: num(s.tps_vs_off, ".2f"), vs_off),
        ("latency / direct", lambda s: num(s.latency_vs_direct, ".2f"), True),
        ("latency / PgBouncer", lambda s: num(s.latency_vs_pgbouncer, ".2f"), True),
        ("latency / coalesce off", lambda s: num(s.latency_vs_off, ".2f"), vs_off),
        ("proxy CPU µs/tx user+sys",
         lambda s: "-" if s.cpu_user_us is None else f"{s.cpu_user_us:.1f}+{s.cpu_sys_us:.1f}", True),
        ("pgbench µs/tx (wakes/tx)",
         lambda s: "-" if s.client_cpu_us is None else f"{s.client_cpu_us:.1f} ({s.client_wakes:.2f})", True),
        ("Postgres µs/tx", lambda s: num(s.server_cpu_us, ".1f"), True),
        ("exec/req", lambda s: num(s.executions_per_tx, ".3f"), executions),
    ]
    columns = [(header, cell) for header, cell, shown in columns if shown]
    headers = [header for header, _ in columns]
    rows = [[cell(s) for _, cell in columns] for s in summaries]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", "-c", type=int, default=20, help="pgbench -c (default 20)")
    p.add_argument("--threads", "-j", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--duration", "-T", type=int, default=15, help="seconds per measured run (default 15)")
    p.add_argument("--mode", "-M", choices=("simple", "extended", "prepared"), default="simple",
                   help="pgbench query mode (default simple)")
    p.add_argument("--pool-mode", choices=("session", "transaction"), default="session",
                   help="pool mode of pgsluice and PgBouncer (default session)")
    p.add_argument("--pool-size", type=int, default=None,
                   help="server connections per pool, pgsluice max_connections = PgBouncer default_pool_size "
                        "(default: --clients in session mode, min(--clients, 20) in transaction mode)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} "
                        f"(default: {','.join(DEFAULT_TARGETS)}); {COALESCE} needs --pool-mode transaction")
    p.add_argument("--coalesce-max-batch", type=int, default=256,
                   help=f"coalesce.max_batch of {COALESCE} (default 256)")
    p.add_argument("--p99", action="store_true",
                   help="also report the p99 latency, from pgbench's per-transaction log (-l) over the "
                        "steady state")
    p.add_argument("--executions", action="store_true",
                   help="load pg_stat_statements into the benchmark's Postgres and report the statements it "
                        "executed per pgbench transaction (exec/req)")
    p.add_argument("--workers", default="2",
                   help="pgsluice `workers` threads (default 2); a list such as 1,2 runs one pgsluice "
                        "per value (targets pgsluice-w1, pgsluice-w2; pgsluice-coalesce-w1, ...)")
    p.add_argument("--binary", default=str(REPO_ROOT / "build" / "release" / "pgsluice"),
                   help="pgsluice binary (default: the release build, build/release/pgsluice)")
    p.add_argument("--script", "-f", default=None,
                   help="a pgbench script to run instead of the built-in -S (e.g. one that SETs first)")
    p.add_argument("--scale", "-s", type=int, default=10, help="pgbench -i scale factor (default 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every target this many times, interleaved; report medians (default 1)")
    p.add_argument("--warmup", type=int, default=5,
                   help="seconds of pgbench against direct Postgres before measuring, to warm its caches "
                        "(default 5, 0 = none)")
    p.add_argument("--pg-max-connections", type=int, default=None,
                   help="the throwaway Postgres's max_connections "
                        "(default: max(300, enough for every target))")
    p.add_argument("--pgsluice-log-level", default="info", help="pgsluice log.level during the run")
    p.add_argument("--scrape-ms", type=int, default=0,
                   help="also measure target pgsluice-scraped: a second pgsluice (the first --workers value) "
                        "with its /metrics endpoint on and scraped every this many ms for the whole run "
                        "(issue 16: scraping must cost < 3 %% TPS against the unscraped pgsluice)")
    p.add_argument("--tls", action="store_true",
                   help="TLS on both sides of every target: Postgres with ssl = on and hostssl-only TCP logins, "
                        "pgsluice tls mode require towards clients and Postgres, PgBouncer client_tls_sslmode "
                        "and server_tls_sslmode require, pgbench (direct included) with sslmode=require; "
                        "checked through each target before measuring")
    p.add_argument("--json", metavar="FILE", help="also write parameters, environment and results as JSON")
    args = p.parse_args(argv)

    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in ALL_TARGETS]
    if unknown or not args.targets:
        p.error(f"--targets: unknown {unknown}; choose from {', '.join(ALL_TARGETS)}")
    if COALESCE in args.targets and args.pool_mode != "transaction":
        p.error(f"{COALESCE} needs --pool-mode transaction (session-mode clients are never coalesced)")
    if args.coalesce_max_batch < 1:
        p.error("--coalesce-max-batch must be positive")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers: a number or a comma-separated list of numbers")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers must be positive")
    # The measured targets, in order: "pgsluice" and "pgsluice-coalesce" expand to one target per
    # workers value.
    args.runs = []
    for target in args.targets:
        if not target.startswith("pgsluice"):
            args.runs.append((target, None))
        elif len(args.workers) == 1:
            args.runs.append((target, args.workers[0]))
        else:
            args.runs.extend((f"{target}-w{w}", w) for w in args.workers)
    if args.scrape_ms > 0:
        if "pgsluice" not in args.targets:
            p.error("--scrape-ms needs pgsluice in --targets")
        args.runs.append(("pgsluice-scraped", args.workers[0]))
    if args.pool_size is None:
        args.pool_size = args.clients if args.pool_mode == "session" else min(args.clients, 20)
    if args.pool_mode == "session" and args.pool_size < args.clients:
        p.error("session mode needs --pool-size >= --clients (each client holds a server connection)")
    if args.clients < 1 or args.threads < 1 or args.duration < 1 or args.rounds < 1:
        p.error("--clients, --threads, --duration and --rounds must be positive")
    # pgsluice is started in its own temp dir: a relative path must not depend on that.
    args.binary = str(Path(args.binary).expanduser().absolute())
    if args.pg_max_connections is None:
        # Poolers keep their server connections open between runs: leave room for all of them.
        poolers = len(args.runs) - ("direct" in args.targets)
        args.pg_max_connections = max(300, args.clients + poolers * args.pool_size + 20)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    any_pgsluice = any(target.startswith("pgsluice") for target in args.targets)
    if any_pgsluice and not os.access(args.binary, os.X_OK):
        print(f"pgsluice binary {args.binary} not found: build it with "
              "`cmake --preset release && cmake --build --preset release` (bench/run.sh does), "
              "or leave pgsluice out of --targets", file=sys.stderr)
        return 2

    env_info = {
        "host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "pgbench": version_of([PGBENCH, "--version"]),
        "pgbouncer": version_of([PGBOUNCER, "--version"]) if "pgbouncer" in args.targets else None,
        "pgsluice": (f"{version_of([args.binary, '--version'])} ({Path(args.binary).resolve()})"
                     if any_pgsluice else None),
    }
    params = {k: v for k, v in vars(args).items() if k not in ("json", "runs")}
    params["targets"] = [name for name, _ in args.runs]
    workers = ",".join(map(str, args.workers))
    print(f"pgbench {'-f ' + args.script if args.script else '-S'} -M {args.mode} -c {args.clients} -j {args.threads} -T {args.duration}, "
          f"pool mode {args.pool_mode}, pool size {args.pool_size}, pgsluice workers {workers}, "
          f"scale {args.scale}, {args.rounds} round(s), {os.cpu_count()} CPUs"
          f"{', TLS on both sides' if args.tls else ''}", flush=True)
    if COALESCE in args.targets:
        print(f"{COALESCE}: coalesce enabled, max_batch {args.coalesce_max_batch}", flush=True)

    measurements: list[Measurement] = []
    started: dict[str, object] = {}
    extra_conf = PG_STAT_STATEMENTS_CONF if args.executions else None
    with LocalPostgres(max_connections=args.pg_max_connections, extra_conf=extra_conf) as pg:
        env_info["postgres"] = pg.sql("SHOW server_version")[0][0]
        if args.executions:
            pg.sql("CREATE EXTENSION pg_stat_statements")
        tls_certs = None
        if args.tls:
            try:
                tls_certs = enable_tls(pg)
            except RuntimeError as e:
                print(f"--tls: {e}", file=sys.stderr)
                return 1
            env_info["tls_checks"] = {}
        print(f"postgres {env_info['postgres']} on port {pg.port}; pgbench -i -s {args.scale} ...",
              flush=True)
        init = subprocess.run([PGBENCH, "-h", pg.host, "-p", str(pg.port), "-U", USER, "-i", "-q",
                               "-s", str(args.scale), DATABASE], env=pgbench_env(args.tls), capture_output=True,
                              text=True, timeout=900)
        if init.returncode != 0:
            print(f"pgbench -i failed:\n{init.stdout}\n{init.stderr}", file=sys.stderr)
            return 1

        ports: dict[str, int] = {}
        scraper = None
        pids: dict[str, int] = {}  # the proxies', for their CPU per transaction
        postmaster = postmaster_pid(pg)  # its children are the backends, for theirs
        try:
            for target, workers in args.runs:
                try:
                    if target == "direct":
                        ports[target] = pg.port
                    elif target.startswith("pgsluice"):
                        config = pgsluice_config(pg, free_port(), args, workers,
                                                 coalesce=target.startswith(COALESCE),
                                                 tls=tls_certs["pgsluice"] if tls_certs else None)
                        if target == "pgsluice-scraped":
                            metrics_port = free_port()
                            config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
                        px = Pgsluice(config, binary=args.binary)
                        started[target] = px
                        px.start()
                        ports[target] = px.port
                        pids[target] = px.proc.pid
                        if target == "pgsluice-scraped":
                            scraper = Scraper(metrics_port, args.scrape_ms / 1000.0)
                            scraper.start()
                    elif target == "pgbouncer":
                        bouncer = PgBouncer(pg, args.pool_mode, args.pool_size, args.clients,
                                            tls=tls_certs["pgbouncer"] if tls_certs else None)
                        started[target] = bouncer
                        bouncer.start()
                        ports[target] = bouncer.port
                        if (pid := bouncer.pid()) is not None:
                            pids[target] = pid
                except (RuntimeError, OSError) as e:
                    print(f"{target}: could not start: {e}", file=sys.stderr, flush=True)
                    measurements.append(Measurement(target, 0, ok=False, error=f"could not start: {e}"))
                if args.tls and target in ports:
                    try:
                        negotiated = check_tls(ports[target])
                    except RuntimeError as e:
                        log = f"\n{target} log tail:\n{tail(started[target].log_text())}" if target in started else ""
                        print(f"{target}: {e}{log}", file=sys.stderr, flush=True)
                        measurements.append(Measurement(target, 0, ok=False, error=str(e)))
                        del ports[target]
                    else:
                        env_info["tls_checks"][target] = negotiated
                        print(f"{target}: TLS: {negotiated}", flush=True)

            if args.warmup > 0:
                print(f"warm-up: {args.warmup} s against direct Postgres", flush=True)
                run_pgbench("warmup", pg.port, args, 0, args.warmup)

            for round_no in range(1, args.rounds + 1):
                # Rotated each round: each target takes each place in the round in turn.
                shift = (round_no - 1) % len(args.runs)
                for target, _ in args.runs[shift:] + args.runs[:shift]:
                    if target not in ports:
                        continue
                    print(f"round {round_no}/{args.rounds}: {target} ({args.duration} s) ...", end=" ",
                          flush=True)
                    m = run_pgbench(target, ports[target], args, round_no, args.duration, pids.get(target),
                                    postmaster, latency_log=args.p99,
                                    statements_of=pg if args.executions else None)
                    measurements.append(m)
                    extra = "".join([f", p99 {m.p99_latency_ms:.3f} ms" if m.p99_latency_ms is not None else "",
                                     f", {m.executions_per_tx:.3f} exec/req" if m.executions_per_tx is not None
                                     else ""])
                    print(f"{m.tps:,.0f} tps, {m.latency_ms:.3f} ms{extra}" if m.ok else "FAILED", flush=True)
                    if not m.ok:
                        print(m.error, file=sys.stderr, flush=True)
        finally:
            if scraper is not None:
                scraper.stop()
                print(f"pgsluice-scraped: {scraper.scrapes} scrapes of /metrics every {args.scrape_ms} ms, "
                      f"{scraper.failures} failed, {scraper.slowest * 1e3:.1f} ms the slowest", flush=True)
            failed = {m.target for m in measurements if not m.ok}
            for target, proc in started.items():
                if target in ports and target.startswith("pgsluice") and not proc.alive():
                    print(f"{target} exited during the run ({proc.proc.returncode})", file=sys.stderr)
                if target in failed and target in ports:
                    print(f"{target} log tail:\n{tail(proc.log_text())}", file=sys.stderr)
                proc.cleanup()

    summaries = summarize(measurements, [name for name, _ in args.runs])
    print()
    print(format_table(summaries, p99=args.p99, executions=args.executions))
    for s in summaries:
        if s.error:
            lines = s.error.splitlines()
            first = next((ln for ln in lines if "error" in ln.lower()), lines[0])
            print(f"  {s.target} failed: {first.strip()}")
            if s.target == "pgbouncer" and args.mode == "prepared" and args.pool_mode == "transaction":
                print("  (PgBouncer 1.18 does not support protocol-level prepared statements in transaction "
                      "mode; 1.21 added max_prepared_statements)")
    print(f"\n(pgbench {'-f ' + args.script if args.script else '-S'} -M {args.mode} -c {args.clients} -j {args.threads} -T {args.duration}; "
          f"{args.pool_mode} mode, pool size {args.pool_size}; ratios > 1 mean more TPS / more latency "
          f"than the reference, each the median over rounds of the ratio within a round (in brackets: "
          f"the lowest and highest round's TPS / PgBouncer); proxy CPU is the "
          f"proxy process's user+system time per transaction, "
          f"steadier than TPS on a shared machine; pgbench's CPU and voluntary context switches and the "
          f"Postgres backends' CPU per transaction show what a proxy costs the processes around it; all CPU "
          f"figures are over the steady state, from pgbench's first progress report to its last, so the "
          f"logins are not in them)")
    if args.tls:
        checked = env_info.get("tls_checks", {})
        negotiated = sorted({v.split(";")[0] for v in checked.values()})
        print(f"(TLS on both sides: pgbench connected to every target, direct included, with sslmode=require; "
              f"pgsluice tls mode require towards clients and backend tls mode require, PgBouncer "
              f"client_tls_sslmode and server_tls_sslmode require, Postgres ssl = on with hostssl-only TCP "
              f"logins; checked before measuring through {', '.join(checked) or 'no target'}: "
              f"{' / '.join(negotiated) or '-'}, sslmode=disable refused)")
    if args.p99:
        print("(p99 latency: pgbench's per-transaction log (-l), the transactions completed from its first "
              "progress report on, median over rounds)")
    if args.executions:
        print("(exec/req: statements Postgres executed in the benchmark's database during the run "
              "(pg_stat_statements calls, utility statements not tracked) / pgbench's transactions, median "
              "over rounds)")
    if any(coalesce_off(s.target) in {t.target for t in summaries} for s in summaries):
        print(f"(TPS and latency / coalesce off: {COALESCE} against pgsluice with the same workers, paired "
              f"by round)")

    if args.json:
        Path(args.json).write_text(json.dumps(
            {"parameters": params, "environment": env_info, "results": [asdict(s) for s in summaries],
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(s.ok for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
