#!/usr/bin/python3
"""Bursts, login storms and memory after a storm (issue 17): pgsluice against PgBouncer, one run.

    bench/storm.py --binary /tmp/release_storm                 # 10 000-client burst, 2 000-client storms
    bench/storm.py --clients 2000 --storm 500 --storm-rounds 2 --targets pgsluice --json storm.json
    bench/storm.py --parts storm --binary /tmp/after --compare /tmp/before   # two builds, same storms

One run starts a throwaway Postgres (tests/harness/pgharness.py), then pgsluice (the release build)
and PgBouncer (Debian's 1.18) one after the other, both in transaction mode with a pool of
--pool-size (20) server connections, set up as bench/pgbench_compare.py and bench/idle_memory.py
set them up (their code, imported). Clients are raw sockets speaking the v3 protocol, driven by
epoll loops in --procs forked processes (10 000 threads would be too many); the harness's
message helpers (tests/harness/pgwire.py) build and parse what they send.

1. Burst. A fresh pooler (pgsluice: `acquire_timeout` and `max_waiting_clients` at their defaults,
   1 s and 0 = no count limit, `max_client_connections` = --clients + 100; PgBouncer:
   `max_client_conn` = --clients + 100, `default_pool_size` = --pool-size). After a warm-up that
   makes the pool's server connections exist, --clients clients log in (SCRAM-SHA-256) and stay
   idle; then every process is told "go" at one moment and each of its clients sends `SELECT 1`
   (simple Query) and reads the reply. Reported: clients served (a row and ReadyForQuery), the
   others by outcome (an ErrorResponse's SQLSTATE, the connection closed, no reply within
   --burst-timeout), how long the sends took (send spread), and the time from "go" to each reply:
   median, p99 and the last one.

2. Memory after a storm, the same burst run: the pooler's VmRSS (/proc/PID/status) at the start
   (pool warm, no clients), with the clients logged in and idle, the peak (the largest of VmHWM,
   the kernel's high-water mark, and VmRSS read every 0.1 s through the burst), and 5 s and 10 s
   after every client has left (each sent Terminate and closed its socket). pgsluice hands free
   heap back to the system (malloc_trim) when its client count has fallen by ≥ 500 and below half
   the peak, checked every 2 s, so "after 5 s" includes at least two such checks.

3. Login storms, --storm-rounds times, interleaved in a rotated order: --storm clients start at
   once (spread over the processes), each connects, logs in, runs `SELECT 1`, sends Terminate and
   closes. Before and after (plus --settle seconds for the pooler to finish the closes) the pooler's
   user+system CPU is read from /proc/PID/stat (clock ticks, 10 ms each) and, finer, the run time
   of all its threads from /proc/PID/task/*/schedstat (ns); each divided by the clients started is
   the CPU per connection; the summary also splits it into user and system time, from the ticks
   summed over all rounds. Once with MD5 and once with SCRAM-SHA-256:
     pgsluice: users `storm_md5` (plain password, `auth: md5`) and `storm_scram` (plain password,
       `auth: scram-sha-256`; pgsluice derives its verifier once at startup), one instance;
     PgBouncer: one instance with `auth_type = md5` and an md5 userlist entry ("md5" + md5(password
       + user)), one with `auth_type = scram-sha-256` and a SCRAM verifier in the userlist (4096
       iterations). Both entries are the roles' pg_authid.rolpassword: the script creates the roles
       storm_md5 (password_encryption md5, pg_hba method md5) and storm_scram (scram-sha-256) in
       its Postgres, because PgBouncer logs in to Postgres as the client's user, with the md5 hash
       or with the keys of the client's SCRAM exchange (which fit only the verifier Postgres has).
       (A forced `user=app password=…` on PgBouncer's database line was tried first: once clients
       had logged in with SCRAM, its server logins as app failed with "password authentication
       failed".) pgsluice's services log in as `app` with its password. The burst's PgBouncer has
       `app`'s verifier from pg_authid the same way.
   "refused" counts the clients that did not get through (an ErrorResponse during login, the
   connection closed, a timeout).

Connection logging is on for both (--connection-logs on, the default): pgsluice at its default
log.level info writes a line per login and per close, PgBouncer gets log_connections and
log_disconnections = 1 (its defaults); --connection-logs off runs pgsluice at log.level warn and
PgBouncer with both 0. PgBouncer's listen_backlog is raised to 4096 (its default is 128), the
backlog pgsluice listens with (SOMAXCONN), so that neither drops SYNs of the storm.

How to read it: the clients, the poolers and Postgres share this machine's cores, so wall times
(open, burst, storm) move with its load; the CPU per connection is the pooler's own and moves less,
but a busy machine still shifts it (caches, preemption): compare the two poolers within a round
and look at the spread over rounds. The clients derive the SCRAM salted password once per salt
(their PBKDF2 would otherwise dominate the client side); the poolers' work per login is unchanged.
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import multiprocessing
import os
import platform
import selectors
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# pgbench_compare puts tests/harness on sys.path, so pgharness imports after it.
from pgbench_compare import (DATABASE, PGBOUNCER, REPO_ROOT, USER, PgBouncer, cpu_ticks,  # noqa: E402
                             pgsluice_config, tail, version_of)
from idle_memory import FD_MARGIN, binary_identity, kib, open_files_limit, proc_status, raise_nofile  # noqa: E402
from pgharness import (LocalPostgres, Pgsluice, ScramClient, free_port, md5_password, message,  # noqa: E402
                       parse_error_fields, password_for, startup_packet)

ALL_TARGETS = ("pgsluice", "pgbouncer")
STORM_USERS = {"md5": "storm_md5", "scram": "storm_scram"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- clients: non-blocking v3 protocol state machines on one epoll loop per process ----------------
class CachedScram(ScramClient):
    """pgwire's SCRAM client, with the salted password derived once per (password, salt, iterations)
    in this process: the pooler's side of the exchange is unchanged, the client's PBKDF2 is not
    repeated 10 000 times."""

    salted_cache: dict = {}

    def salted_password(self, salt: str, iterations: int) -> bytes:
        key = (self.password, salt, iterations)
        if key not in self.salted_cache:
            self.salted_cache[key] = super().salted_password(salt, iterations)
        return self.salted_cache[key]


class Loop:
    """One epoll selector and the clients on it that have not finished their current step."""

    def __init__(self):
        self.sel = selectors.EpollSelector()
        self.active: set = set()

    def step(self, timeout: float) -> None:
        for key, mask in self.sel.select(timeout=max(0.0, timeout)):
            key.data.on_event(mask)

    def run(self, deadline: float, reason: str = "timeout") -> None:
        """Until every active client is done (or the deadline: those fail with `reason`)."""
        while self.active:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for client in list(self.active):
                    client.fail(f"{reason} ({client.state})")
                return
            self.step(min(0.5, remaining))


class Client:
    """connect → startup → authentication → (idle | SELECT → (kept open | Terminate, close)).

    `then` is "idle" (stop after ReadyForQuery, socket kept: the burst sends later) or "query_close"
    (the storm: query at once, then Terminate and close). outcome: None while running, "ok", or what
    went wrong ("login 28P01", "query 53300", "login closed", "connect ECONNREFUSED", "timeout (auth)")."""

    __slots__ = ("loop", "user", "password", "then", "sql", "state", "sock", "inbuf", "outbuf", "events",
                 "scram", "query_error", "rows", "outcome", "t_sent", "t_done")

    def __init__(self, loop: Loop, port: int, user: str, password: str, then: str, sql: str = "SELECT 1"):
        self.loop, self.user, self.password, self.then, self.sql = loop, user, password, then, sql
        self.state = "connect"
        self.inbuf = bytearray()
        self.outbuf = b""
        self.events = 0
        self.scram = None
        self.query_error = None
        self.rows = 0
        self.outcome = None
        self.t_sent = self.t_done = None
        self.sock = None
        loop.active.add(self)
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = self.sock.connect_ex(("127.0.0.1", port))
        except OSError as e:
            self.fail(f"connect {errno.errorcode.get(e.errno, e.errno)}")
            return
        if err not in (0, errno.EINPROGRESS):
            self.fail(f"connect {errno.errorcode.get(err, err)}")
            return
        self.watch(selectors.EVENT_WRITE)

    # selector bookkeeping
    def watch(self, events: int) -> None:
        if events == self.events or self.sock is None:
            return
        if self.events and events:
            self.loop.sel.modify(self.sock, events, self)
        elif events:
            self.loop.sel.register(self.sock, events, self)
        else:
            self.loop.sel.unregister(self.sock)
        self.events = events

    def finish(self, state: str) -> None:
        self.state = state
        self.loop.active.discard(self)

    def fail(self, reason: str) -> None:
        if self.outcome is None:
            self.outcome = reason
        self.t_done = self.t_done or time.monotonic()
        self.close()
        self.finish("failed")

    def close(self) -> None:
        if self.sock is not None:
            self.watch(0)
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def send(self, data: bytes) -> None:
        if self.sock is None:
            return
        if not self.outbuf:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self.fail(f"{self.phase()} {errno.errorcode.get(e.errno, e.errno)}")
                return
            self.outbuf = data[sent:]
        else:
            self.outbuf += data
        self.watch(selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0))

    def phase(self) -> str:
        return "query" if self.state == "query" else "login"

    # events
    def on_event(self, mask: int) -> None:
        if self.state == "connect":
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(f"connect {errno.errorcode.get(err, err)}")
                return
            self.state = "auth"
            self.send(startup_packet({"user": self.user, "database": DATABASE}))
            return
        if mask & selectors.EVENT_WRITE and self.outbuf:
            data, self.outbuf = self.outbuf, b""
            self.send(data)
        if mask & selectors.EVENT_READ and self.sock is not None:
            self.on_readable()

    def on_readable(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(f"{self.phase()} {errno.errorcode.get(e.errno, e.errno)}")
            return
        if not chunk:
            self.fail(f"{self.phase()} closed")
            return
        self.inbuf += chunk
        while len(self.inbuf) >= 5 and self.state in ("auth", "query"):
            (length,) = struct.unpack_from("!I", self.inbuf, 1)
            if len(self.inbuf) < 1 + length:
                break
            kind, payload = bytes(self.inbuf[:1]), bytes(self.inbuf[5:1 + length])
            del self.inbuf[:1 + length]
            try:
                self.on_message(kind, payload)
            except Exception as e:  # noqa: BLE001 - a protocol surprise is this client's outcome
                self.fail(f"{self.phase()} {type(e).__name__}: {e}")

    def on_message(self, kind: bytes, payload: bytes) -> None:
        if kind == b"E":
            sqlstate = parse_error_fields(payload).get("C", "?")
            if self.state == "auth":
                self.fail(f"login {sqlstate}")
            else:
                self.query_error = self.query_error or sqlstate
            return
        if self.state == "auth":
            if kind == b"R":
                self.on_auth_request(struct.unpack_from("!I", payload)[0], payload[4:])
            elif kind == b"Z":
                if self.then == "idle":
                    self.watch(0)  # nothing to read until the burst; it re-registers
                    self.finish("idle")
                else:
                    self.query()
            return  # S, K, N, v: nothing to do
        if kind == b"D":
            self.rows += 1
        elif kind == b"Z":
            self.t_done = time.monotonic()
            if self.query_error:
                self.outcome = f"query {self.query_error}"
            else:
                self.outcome = "ok" if self.rows == 1 else f"query {self.rows} rows"
            if self.then == "query_close":
                self.send(message(b"X"))
                self.close()
            else:
                self.watch(0)
            self.finish("done")

    def on_auth_request(self, code: int, rest: bytes) -> None:
        if code == 0:  # AuthenticationOk; ReadyForQuery follows
            return
        if code == 3:
            self.send(message(b"p", self.password.encode() + b"\0"))
        elif code == 5:
            self.send(message(b"p", md5_password(self.user, self.password, rest[:4]).encode() + b"\0"))
        elif code == 10:
            self.scram = CachedScram(self.password)
            first = self.scram.client_first().encode()
            self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        elif code == 11:
            self.send(message(b"p", self.scram.client_final(rest.decode()).encode()))
        elif code == 12:
            self.scram.verify_server_final(rest.decode())
        else:
            raise ValueError(f"unsupported authentication request {code}")

    def query(self) -> None:
        self.state = "query"
        self.loop.active.add(self)
        self.t_sent = time.monotonic()
        self.send(message(b"Q", self.sql.encode() + b"\0"))

    def terminate(self) -> None:
        if self.sock is not None:
            try:
                self.sock.send(message(b"X"))
            except OSError:
                pass
            self.close()


def open_idle(loop: Loop, port: int, user: str, password: str, count: int, concurrency: int,
              timeout: float) -> list[Client]:
    """`count` logged-in idle clients, at most `concurrency` logins in flight."""
    clients: list[Client] = []
    deadline = time.monotonic() + timeout
    while len(clients) < count or loop.active:
        while len(clients) < count and len(loop.active) < concurrency:
            clients.append(Client(loop, port, user, password, "idle"))
        if time.monotonic() >= deadline:
            loop.run(deadline, "timeout")
            break
        loop.step(0.2)
    return clients


def outcome_counts(clients: list[Client], ok_states=("idle",)) -> dict:
    counts = collections.Counter()
    for c in clients:
        counts["ok" if c.state in ok_states else (c.outcome or c.state)] += 1
    return dict(counts)


# -- worker processes (forked; driven through a Pipe) -----------------------------------------------
def burst_worker(ctrl, port: int, user: str, password: str, count: int, concurrency: int,
                 login_timeout: float, reply_timeout: float) -> None:
    """Commands: "open" (log `count` clients in, keep them idle), "go" (each sends SELECT 1, reads
    the reply), "close" (Terminate and close every client), then exits."""
    loop = Loop()
    clients: list[Client] = []
    try:
        while True:
            command = ctrl.recv()
            if command == "open":
                started = time.monotonic()
                clients = open_idle(loop, port, user, password, count, concurrency, login_timeout)
                ctrl.send({"opened": outcome_counts(clients), "seconds": time.monotonic() - started})
            elif command == "go":
                woke = time.monotonic()
                idle = [c for c in clients if c.state == "idle"]
                for c in idle:
                    c.query()
                sends_done = time.monotonic()
                loop.run(sends_done + reply_timeout, "timeout")
                ctrl.send({"woke": woke, "sends_done": sends_done,
                           "outcomes": dict(collections.Counter(c.outcome or c.state for c in idle)),
                           "ok_times": [c.t_done for c in idle if c.outcome == "ok"],
                           "any_last": max((c.t_done for c in idle if c.t_done), default=None)})
            elif command == "close":
                for c in clients:
                    c.terminate()
                ctrl.send({"closed": time.monotonic()})
                return
    except (EOFError, KeyboardInterrupt):
        return


def storm_worker(ctrl, port: int, user: str, password: str, count: int, timeout: float) -> None:
    """On "go": `count` clients at once, each connect, log in, SELECT 1, Terminate, close."""
    loop = Loop()
    try:
        if ctrl.recv() != "go":
            return
    except (EOFError, KeyboardInterrupt):
        return
    started = time.monotonic()
    clients = [Client(loop, port, user, password, "query_close") for _ in range(count)]
    loop.run(started + timeout, "timeout")
    ctrl.send({"started": started, "ended": time.monotonic(),
               "outcomes": dict(collections.Counter(c.outcome or c.state for c in clients))})


class Workers:
    """`procs` forked worker processes running `target(ctrl, *args, count)` with the count split."""

    def __init__(self, target, args: tuple, total: int, procs: int, tail_args: tuple = ()):
        ctx = multiprocessing.get_context("fork")
        shares = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        self.pipes, self.procs = [], []
        for share in shares:
            if share == 0:
                continue
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, *args, share, *tail_args), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def send(self, command) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    def collect(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a client process did not answer within {timeout:.0f} s")
            replies.append(pipe.recv())
        return replies

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def merge_counts(dicts) -> dict:
    total = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


# -- the poolers ------------------------------------------------------------------------------------
def create_storm_roles(pg: LocalPostgres) -> None:
    """storm_md5 (md5 hash in pg_authid, pg_hba md5) and storm_scram (SCRAM verifier), for PgBouncer,
    which logs in to Postgres as its client's user."""
    hba = pg.datadir / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    catch_all = next(i for i, line in enumerate(lines) if line.startswith("host all all "))
    lines.insert(catch_all, f"host all {STORM_USERS['md5']} 127.0.0.1/32 md5")
    hba.write_text("\n".join(lines) + "\n")
    for auth, user in STORM_USERS.items():
        encryption = "md5" if auth == "md5" else "scram-sha-256"
        pg.sql(f"SET password_encryption = '{encryption}'; CREATE ROLE {user} LOGIN PASSWORD '{password_for(user)}'")
    pg.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)  # the postmaster reloads pg_hba.conf asynchronously


def stored_password(pg: LocalPostgres, user: str) -> str:
    """pg_authid.rolpassword: "md5…" or "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"."""
    return pg.sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(user,))[0][0]


class StormBouncer(PgBouncer):
    """pgbench_compare's PgBouncer (runuser as postgres, prlimit, pidfile, stop and cleanup) with
    its own auth_type and userlist entries, connection logging and listen_backlog."""

    def __init__(self, pg: LocalPostgres, pool_size: int, max_clients: int, nofile: int, auth_type: str,
                 entries: dict[str, str], connection_logs: bool):
        super().__init__(pg, "transaction", pool_size, max_clients, nofile=nofile)
        self.auth_type, self.entries, self.connection_logs = auth_type, entries, connection_logs

    def write_files(self) -> None:
        (self.dir / "userlist.txt").write_text("".join(f'"{u}" "{s}"\n' for u, s in self.entries.items()))
        logs = int(self.connection_logs)
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{DATABASE} = host={self.pg.host} port={self.pg.port} dbname={DATABASE}\n"
            "\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\nlisten_backlog = 4096\n"
            f"auth_type = {self.auth_type}\nauth_file = {self.dir}/userlist.txt\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
            f"max_client_conn = {self.max_clients + 100}\n"
            f"logfile = {self.dir}/pgbouncer.log\npidfile = {self.dir}/pgbouncer.pid\n"
            f"log_connections = {logs}\nlog_disconnections = {logs}\nstats_period = 3600\n")


class Pooler:
    """A started pgsluice or PgBouncer: its process, port, pid, and how to log in to it."""

    def __init__(self, name: str, proc, port: int, pid: int):
        self.name, self.proc, self.port, self.pid = name, proc, port, pid

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists() and proc_status(self.pid).get("State", "Z")[:1] != "Z"

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.proc.log_text(), lines)


def start_pgsluice(pg: LocalPostgres, args, users: dict[str, dict], binary: str | None = None,
                   name: str = "pgsluice") -> Pooler:
    """pgsluice in transaction mode, one service per user (pool --pool-size, acquire_timeout and
    max_waiting_clients left at their defaults), all logging in to Postgres as `app`."""
    config = pgsluice_config(pg, free_port(), args, args.workers)
    config["max_client_connections"] = args.clients + 100
    config["log"] = {"level": "info" if args.connection_logs == "on" else "warn"}
    template = config["services"]["app"]
    config["users"], config["services"] = {}, {}
    for user, entry in users.items():
        config["users"][user] = entry
        config["services"][user] = {**template, "match": {"user": user, "database": DATABASE}}
    px = Pgsluice(config, binary=binary or args.binary)
    px.start()
    return Pooler(name, px, px.port, px.proc.pid)


def start_pgbouncer(pg: LocalPostgres, args, auth_type: str, entries: dict[str, str]) -> Pooler:
    bouncer = StormBouncer(pg, args.pool_size, args.clients, args.nofile, auth_type, entries,
                           args.connection_logs == "on")
    bouncer.start()
    pid = bouncer.pid()
    if pid is None:
        bouncer.cleanup()
        raise RuntimeError("no pgbouncer.pid: cannot read its CPU and memory")
    return Pooler("pgbouncer", bouncer, bouncer.port, pid)


# -- /proc ------------------------------------------------------------------------------------------
def schedstat_ns(pid: int) -> int | None:
    """Time on CPU of all the threads of `pid` so far, in ns (/proc/PID/task/*/schedstat, field 1)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
    except OSError:
        return None
    return total


def rss_kib(pid: int) -> int | None:
    return kib(proc_status(pid).get("VmRSS"))


class RssSampler:
    """VmRSS of `pid` every `interval` seconds in a thread: the largest seen."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.pid, self.interval = pid, interval
        self.max_kib = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.is_set():
            value = rss_kib(self.pid)
            if value:
                self.max_kib = max(self.max_kib, value)
            self.done.wait(self.interval)

    def start(self) -> "RssSampler":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)


def warm_up(port: int, user: str, password: str, clients: int) -> dict:
    """`clients` clients at once, each runs `SELECT pg_sleep(0.2)` and leaves: the pool opens its
    server connections (twice, for a pooler that opens fewer at a time)."""
    outcomes = collections.Counter()
    for _ in range(2):
        loop = Loop()
        batch = [Client(loop, port, user, password, "query_close", "SELECT pg_sleep(0.2)") for _ in range(clients)]
        loop.run(time.monotonic() + 30)
        outcomes.update(c.outcome or c.state for c in batch)
    return dict(outcomes)


def server_connections(pg: LocalPostgres) -> int:
    return pg.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s "
                  "AND backend_type = 'client backend'", params=(DATABASE, USER))[0][0]


# -- 1 + 3: the burst and the memory around it --------------------------------------------------------
def burst(target: str, pg: LocalPostgres, args) -> dict:
    result: dict = {"target": target, "ok": False}
    password = password_for(USER)
    try:
        if target == "pgsluice":
            pooler = start_pgsluice(pg, args, {USER: {"password": password}})
        else:
            pooler = start_pgbouncer(pg, args, "scram-sha-256", {USER: stored_password(pg, USER)})
    except (RuntimeError, OSError) as e:
        result["error"] = f"could not start: {e}"
        return result
    result["open_files_limit"] = open_files_limit(pooler.pid)
    workers = None
    sampler = None
    try:
        warm = warm_up(pooler.port, USER, password, args.pool_size)
        result["warm_up"] = warm
        if warm.get("ok", 0) != 2 * args.pool_size:
            raise RuntimeError(f"warm-up failed: {warm}")
        result["server_connections_before"] = server_connections(pg)
        # Fork before the sampler thread starts (and before the pooler grows).
        workers = Workers(burst_worker, (pooler.port, USER, password), args.clients, args.procs,
                          (args.login_concurrency, args.login_timeout, args.burst_timeout))
        time.sleep(args.settle)
        result["rss_start_kib"] = rss_kib(pooler.pid)
        sampler = RssSampler(pooler.pid).start()
        print(f"{target}: opening {args.clients:,} clients ...", end=" ", flush=True)
        started = time.monotonic()
        workers.send("open")
        opened = workers.collect(args.login_timeout + 60)
        result["open_seconds"] = time.monotonic() - started
        result["logins"] = merge_counts(r["opened"] for r in opened)
        logged_in = result["logins"].get("ok", 0)
        print(f"{logged_in:,} logged in in {result['open_seconds']:.1f} s", flush=True)
        if logged_in < args.clients:
            print(f"{target}: {args.clients - logged_in} logins failed: {result['logins']}\n"
                  f"{target} log tail:\n{pooler.log_tail()}", file=sys.stderr, flush=True)
        if not pooler.alive():
            raise RuntimeError(f"{target} is gone after the logins")
        # Idle long enough for pgsluice's 2-second memory check to see the peak client count.
        time.sleep(max(args.settle, 2.5))
        result["rss_idle_kib"] = rss_kib(pooler.pid)
        print(f"{target}: burst: {logged_in:,} × SELECT 1 ...", end=" ", flush=True)
        go = time.monotonic()
        workers.send("go")
        replies = workers.collect(args.burst_timeout + 60)
        result["rss_after_burst_kib"] = rss_kib(pooler.pid)
        outcomes = merge_counts(r["outcomes"] for r in replies)
        ok_times = sorted(t - go for r in replies for t in r["ok_times"])
        lasts = [r["any_last"] for r in replies if r["any_last"] is not None]
        result.update(
            served=outcomes.get("ok", 0), outcomes=outcomes,
            wake_spread_ms=(max(r["woke"] for r in replies) - go) * 1e3,
            send_spread_ms=(max(r["sends_done"] for r in replies) - go) * 1e3,
            median_reply_s=statistics.median(ok_times) if ok_times else None,
            p99_reply_s=ok_times[max(0, -(-len(ok_times) * 99 // 100) - 1)] if ok_times else None,
            last_served_s=ok_times[-1] if ok_times else None,
            last_reply_s=(max(lasts) - go) if lasts else None)
        errors = {k: v for k, v in outcomes.items() if k != "ok"}
        print(f"served {result['served']:,}, last reply {result['last_reply_s'] or 0:.3f} s after go"
              + (f", others {errors}" if errors else ""), flush=True)
        workers.send("close")
        closed = workers.collect(120)
        left = max(r["closed"] for r in closed)
        workers.stop()
        workers = None
        for seconds in (5, 10):
            time.sleep(max(0.0, left + seconds - time.monotonic()))
            result[f"rss_after_{seconds}s_kib"] = rss_kib(pooler.pid)
        sampler.stop()
        status = proc_status(pooler.pid)
        result["rss_hwm_kib"] = kib(status.get("VmHWM"))
        result["rss_sampled_max_kib"] = sampler.max_kib
        # VmHWM is the kernel's high-water mark; its per-thread RSS counters are folded in lazily,
        # so the largest of it and of what was read is the peak.
        result["rss_peak_kib"] = max(v for v in (result["rss_hwm_kib"], sampler.max_kib, result["rss_idle_kib"],
                                                 result["rss_after_burst_kib"]) if v is not None)
        if not pooler.alive():
            raise RuntimeError(f"{target} is gone after the burst")
        result["ok"] = logged_in == args.clients and result["served"] == logged_in
    except (RuntimeError, OSError, TimeoutError, EOFError) as e:
        result["error"] = str(e)
        print(f"\n{target}: {e}\n{target} log tail:\n{pooler.log_tail()}", file=sys.stderr, flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
        if workers is not None:
            for proc in workers.procs:
                proc.kill()
            workers.stop()
        if target == "pgsluice" and not pooler.alive():
            print(f"pgsluice exited ({pooler.proc.proc.poll()}); log tail:\n{pooler.log_tail()}", file=sys.stderr)
        pooler.proc.cleanup()
    return result


# -- 2: login storms ------------------------------------------------------------------------------
def storm_once(pooler: Pooler, auth: str, round_no: int, args) -> dict:
    user = STORM_USERS[auth]
    result = {"target": pooler.name, "auth": auth, "round": round_no, "connections": args.storm, "ok": False}
    workers = Workers(storm_worker, (pooler.port, user, password_for(user)), args.storm, args.procs,
                      (args.storm_timeout,))
    try:
        time.sleep(0.5)  # the forks settle before the window opens
        ticks0, ns0 = cpu_ticks(pooler.pid), schedstat_ns(pooler.pid)
        workers.send("go")
        replies = workers.collect(args.storm_timeout + 60)
        time.sleep(args.settle)  # the pooler finishes the closes
        ticks1, ns1 = cpu_ticks(pooler.pid), schedstat_ns(pooler.pid)
    except (TimeoutError, EOFError) as e:
        result["error"] = str(e)
        return result
    finally:
        workers.stop()
    outcomes = merge_counts(r["outcomes"] for r in replies)
    result["outcomes"] = outcomes
    result["served"] = outcomes.get("ok", 0)
    result["refused"] = args.storm - result["served"]
    result["wall_seconds"] = max(r["ended"] for r in replies) - min(r["started"] for r in replies)
    if ticks0 and ticks1:
        result["ticks_user"] = ticks1[0] - ticks0[0]
        result["ticks_sys"] = ticks1[1] - ticks0[1]
        ticks = result["ticks_user"] + result["ticks_sys"]
        result["cpu_us_per_conn"] = ticks / CLK_TCK * 1e6 / args.storm
    if ns0 is not None and ns1 is not None:
        result["schedstat_us_per_conn"] = (ns1 - ns0) / 1e3 / args.storm
    result["ok"] = result["refused"] == 0 and pooler.alive()
    return result


def storms(pg: LocalPostgres, args) -> list[dict]:
    passwords = {auth: password_for(user) for auth, user in STORM_USERS.items()}
    poolers: dict[tuple[str, str], Pooler] = {}
    started: list[Pooler] = []
    results: list[dict] = []
    try:
        for target in args.targets:
            try:
                if target == "pgsluice":
                    # --compare: more pgsluice binaries in the same run, each its own target.
                    binaries = [args.binary] + args.compare
                    for binary in binaries:
                        name = f"pgsluice[{Path(binary).name}]" if args.compare else "pgsluice"
                        px = start_pgsluice(pg, args, {
                            STORM_USERS["md5"]: {"password": passwords["md5"], "auth": "md5"},
                            STORM_USERS["scram"]: {"password": passwords["scram"], "auth": "scram-sha-256"}},
                            binary=binary, name=name)
                        started.append(px)
                        poolers[(name, "md5")] = poolers[(name, "scram")] = px
                else:
                    for auth, auth_type in (("md5", "md5"), ("scram", "scram-sha-256")):
                        entry = stored_password(pg, STORM_USERS[auth])
                        if not entry.startswith("md5" if auth == "md5" else "SCRAM-SHA-256$"):
                            raise RuntimeError(f"pg_authid has {entry[:14]}… for {STORM_USERS[auth]}")
                        pb = start_pgbouncer(pg, args, auth_type, {STORM_USERS[auth]: entry})
                        started.append(pb)
                        poolers[(target, auth)] = pb
            except (RuntimeError, OSError) as e:
                print(f"{target}: could not start for the storms: {e}", file=sys.stderr, flush=True)
                results.append({"target": target, "auth": "-", "round": 0, "ok": False, "error": str(e)})
        for (target, auth), pooler in poolers.items():
            user = STORM_USERS[auth]
            warm = warm_up(pooler.port, user, password_for(user), args.pool_size)
            if warm.get("ok", 0) != 2 * args.pool_size:
                print(f"{target} {auth}: warm-up failed: {warm}\n{target} log tail:\n{pooler.log_tail()}",
                      file=sys.stderr, flush=True)
        runs = list(poolers)
        for round_no in range(1, args.storm_rounds + 1):
            shift = (round_no - 1) % len(runs) if runs else 0
            for target, auth in runs[shift:] + runs[:shift]:
                pooler = poolers[(target, auth)]
                if not pooler.alive():
                    continue
                print(f"storm round {round_no}/{args.storm_rounds}: {target} {auth}, {args.storm:,} clients ...",
                      end=" ", flush=True)
                r = storm_once(pooler, auth, round_no, args)
                results.append(r)
                if r.get("cpu_us_per_conn") is not None:
                    print(f"{r['served']:,} served in {r['wall_seconds']:.2f} s, "
                          f"{r['cpu_us_per_conn']:.0f} µs/conn (schedstat {r['schedstat_us_per_conn']:.0f})"
                          + (f", refused {r['refused']}: {r['outcomes']}" if r["refused"] else ""), flush=True)
                else:
                    print(f"FAILED: {r.get('error')}", flush=True)
                if r.get("refused", 1):
                    print(f"{target} log tail:\n{pooler.log_tail()}", file=sys.stderr, flush=True)
                elif not pooler.alive():
                    print(f"{target} is gone; log tail:\n{pooler.log_tail()}", file=sys.stderr, flush=True)
    finally:
        for pooler in started:
            pooler.proc.cleanup()
    return results


# -- report -----------------------------------------------------------------------------------------
def markdown(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cs: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def num(v, fmt: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def others(counts: dict | None) -> str:
    rest = {k: v for k, v in (counts or {}).items() if k != "ok"}
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(rest.items())) or "none"


def burst_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        rows.append([r["target"] + ("" if r["ok"] else " (FAILED)"),
                     f"{r.get('logins', {}).get('ok', 0):,}", others(r.get("logins")),
                     num(r.get("open_seconds"), ".1f"), f"{r.get('served', 0):,}", others(r.get("outcomes")),
                     num(r.get("send_spread_ms"), ".0f"), num(r.get("median_reply_s"), ".3f"),
                     num(r.get("p99_reply_s"), ".3f"), num(r.get("last_reply_s"), ".3f")])
    return markdown(["target", "logged in", "login errors", "open s", "served", "not served (by outcome)",
                     "sends done ms", "median reply s", "p99 reply s", "go → last reply s"], rows)


def memory_table(results: list[dict]) -> str:
    mib = 1 / 1024
    rows = []
    for r in results:
        start, after = r.get("rss_start_kib"), r.get("rss_after_5s_kib")
        rows.append([r["target"], num(start, ".1f", mib), num(r.get("rss_idle_kib"), ".1f", mib),
                     num(r.get("rss_peak_kib"), ".1f", mib), num(r.get("rss_after_5s_kib"), ".1f", mib),
                     num(r.get("rss_after_10s_kib"), ".1f", mib),
                     num(after - start if after is not None and start is not None else None, "+.1f", mib)])
    return markdown(["target", "start MiB", "clients idle MiB", "peak MiB", "after 5 s MiB",
                     "after 10 s MiB", "after 5 s − start MiB"], rows)


def storm_rounds_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        if r.get("round", 0) == 0:
            continue
        ticks = f"{r['ticks_user']}+{r['ticks_sys']}" if "ticks_user" in r else "-"
        rows.append([r["target"], r["auth"], str(r["round"]), f"{r.get('served', 0):,}",
                     f"{r.get('refused', '-')}" + (f" ({others(r.get('outcomes'))})" if r.get("refused") else ""),
                     num(r.get("wall_seconds"), ".2f"), ticks, num(r.get("cpu_us_per_conn"), ".0f"),
                     num(r.get("schedstat_us_per_conn"), ".0f")])
    return markdown(["target", "auth", "round", "served", "refused", "wall s", "CPU ticks user+sys",
                     "CPU µs/conn (stat)", "CPU µs/conn (schedstat)"], rows)


def user_system_us(runs: list[dict]) -> dict:
    ticked = [r for r in runs if r.get("ticks_user") is not None and r.get("connections")]
    connections = sum(r["connections"] for r in ticked)
    if not connections:
        return {"user_us_per_conn": None, "system_us_per_conn": None}
    per_tick = 1e6 / CLK_TCK / connections
    return {"user_us_per_conn": sum(r["ticks_user"] for r in ticked) * per_tick,
            "system_us_per_conn": sum(r["ticks_sys"] for r in ticked) * per_tick}


def storm_summary(results: list[dict]) -> list[dict]:
    summary = []
    keys = []
    for r in results:
        if r.get("round", 0) and (r["target"], r["auth"]) not in keys:
            keys.append((r["target"], r["auth"]))
    for target, auth in keys:
        runs = [r for r in results if r["target"] == target and r["auth"] == auth and r.get("round")]
        stat = [r["cpu_us_per_conn"] for r in runs if r.get("cpu_us_per_conn") is not None]
        sched = [r["schedstat_us_per_conn"] for r in runs if r.get("schedstat_us_per_conn") is not None]
        summary.append({"target": target, "auth": auth, "rounds": len(runs),
                        "refused": sum(r.get("refused", 0) for r in runs),
                        "connections": sum(r.get("connections", 0) for r in runs),
                        "cpu_us_per_conn": statistics.median(stat) if stat else None,
                        "cpu_us_range": (min(stat), max(stat)) if stat else None,
                        "schedstat_us_per_conn": statistics.median(sched) if sched else None,
                        "schedstat_us_range": (min(sched), max(sched)) if sched else None,
                        # User and system time over all rounds (ticks summed, so the 10 ms tick
                        # averages out): where the two poolers differ, kernel or user space.
                        **user_system_us(runs)})
    bouncer = {s["auth"]: s for s in summary if s["target"] == "pgbouncer"}
    # Each round against PgBouncer's round with the same auth (they ran minutes apart at most): the
    # median of those ratios moves less with the machine's load than the ratio of the medians.
    bouncer_rounds = {(r["auth"], r["round"]): r.get("schedstat_us_per_conn") for r in results
                      if r["target"] == "pgbouncer" and r.get("round")}
    for s in summary:
        ref = bouncer.get(s["auth"])
        s["schedstat_vs_pgbouncer"] = (s["schedstat_us_per_conn"] / ref["schedstat_us_per_conn"]
                                       if ref and s["schedstat_us_per_conn"] and ref["schedstat_us_per_conn"]
                                       else None)
        paired = [r["schedstat_us_per_conn"] / bouncer_rounds[(r["auth"], r["round"])] for r in results
                  if r["target"] == s["target"] and r["auth"] == s["auth"] and r.get("round")
                  and r.get("schedstat_us_per_conn") and bouncer_rounds.get((r["auth"], r["round"]))]
        s["paired_vs_pgbouncer"] = statistics.median(paired) if paired else None
        s["paired_range"] = (min(paired), max(paired)) if paired else None
    return summary


def storm_summary_table(summary: list[dict]) -> str:
    rows = []
    for s in summary:
        rng = lambda r: "" if r is None else f" ({r[0]:.0f}–{r[1]:.0f})"  # noqa: E731
        rows.append([s["target"], s["auth"], str(s["rounds"]), f"{s['refused']} of {s['connections']:,}",
                     num(s["cpu_us_per_conn"], ".0f") + rng(s["cpu_us_range"]),
                     num(s["schedstat_us_per_conn"], ".0f") + rng(s["schedstat_us_range"]),
                     num(s["schedstat_vs_pgbouncer"], ".2f"),
                     num(s["paired_vs_pgbouncer"], ".2f")
                     + ("" if s["paired_range"] is None else f" ({s['paired_range'][0]:.2f}–{s['paired_range'][1]:.2f})"),
                     num(s["user_us_per_conn"], ".0f") + " + " + num(s["system_us_per_conn"], ".0f")])
    return markdown(["target", "auth", "rounds", "refused", "CPU µs/conn (stat), median (range)",
                     "CPU µs/conn (schedstat), median (range)", "schedstat / PgBouncer",
                     "per round / PgBouncer's, median (range)", "user + system µs/conn, all rounds"], rows)


# -- main ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10000,
                   help="clients of the burst, logged in first, then one SELECT 1 each at one moment (default 10000)")
    p.add_argument("--storm", type=int, default=2000,
                   help="clients of a login storm: connect, log in, SELECT 1, leave, all at once (default 2000)")
    p.add_argument("--storm-rounds", type=int, default=3, help="login storms per pooler and auth method (default 3)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated subset of pgsluice,pgbouncer")
    p.add_argument("--parts", default="burst,storm", help="comma-separated subset of burst,storm (default both)")
    p.add_argument("--binary", default=str(REPO_ROOT / "build" / "release" / "pgsluice"),
                   help="pgsluice binary (default: the release build, build/release/pgsluice)")
    p.add_argument("--compare", default="",
                   help="comma-separated further pgsluice binaries for the storms, run in the same rounds (each "
                        "target is then named pgsluice[<file name>]); e.g. a build before a change")
    p.add_argument("--workers", type=int, default=2, help="pgsluice `workers` threads (default 2)")
    p.add_argument("--pool-size", type=int, default=20,
                   help="server connections per pool: pgsluice max_connections = PgBouncer default_pool_size "
                        "(default 20)")
    p.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--login-concurrency", type=int, default=64,
                   help="logins in flight per client process while the burst's clients are opened (default 64)")
    p.add_argument("--login-timeout", type=float, default=300, help="seconds to open the burst's clients (default 300)")
    p.add_argument("--burst-timeout", type=float, default=30,
                   help="seconds after the sends that a burst reply may take (default 30)")
    p.add_argument("--storm-timeout", type=float, default=60, help="seconds a login storm may take (default 60)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds of quiet before a start reading and after a storm's last client (default 1)")
    p.add_argument("--connection-logs", choices=("on", "off"), default="on",
                   help="on: pgsluice log.level info (a line per login and close), PgBouncer log_connections and "
                        "log_disconnections 1 (both poolers' defaults); off: warn, and 0 (default on)")
    p.add_argument("--json", metavar="FILE", help="also write parameters, environment and results as JSON")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or any(t not in ALL_TARGETS for t in args.targets):
        p.error(f"--targets: choose from {', '.join(ALL_TARGETS)}")
    args.parts = [t.strip() for t in args.parts.split(",") if t.strip()]
    if not args.parts or any(t not in ("burst", "storm") for t in args.parts):
        p.error("--parts: choose from burst,storm")
    if min(args.clients, args.storm, args.storm_rounds, args.workers, args.pool_size, args.procs,
           args.login_concurrency) < 1:
        p.error("counts must be positive")
    args.binary = str(Path(args.binary).expanduser().absolute())
    args.compare = [str(Path(b.strip()).expanduser().absolute()) for b in args.compare.split(",") if b.strip()]
    if len({Path(b).name for b in [args.binary] + args.compare}) != 1 + len(args.compare):
        p.error("--compare: the binaries' file names must differ (they name the targets)")
    args.pool_mode = "transaction"  # what pgsluice_config reads from pgbench_compare's args
    args.pgsluice_log_level = "info"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for binary in [args.binary] + args.compare:
        if "pgsluice" in args.targets and not os.access(binary, os.X_OK):
            print(f"pgsluice binary {binary} not found", file=sys.stderr)
            return 2
    # Each pooler holds every client socket plus its server side; the client processes inherit
    # this limit too, pgsluice inherits it, PgBouncer gets it through prlimit.
    nofile = raise_nofile(max(args.clients, args.storm) + FD_MARGIN)
    args.nofile = nofile[0]
    env_info = {
        "host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "rlimit_nofile": list(nofile), "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "pgbouncer": version_of([PGBOUNCER, "--version"]) if "pgbouncer" in args.targets else None,
        "pgsluice": (f"{version_of([args.binary, '--version'])} ({Path(args.binary).resolve()})"
                     if "pgsluice" in args.targets else None),
        "pgsluice_binary": binary_identity(args.binary) if "pgsluice" in args.targets else None,
        "pgsluice_compare": [binary_identity(b) for b in args.compare],
    }
    print(f"burst {args.clients:,} clients, storms {args.storm:,} clients × {args.storm_rounds}; transaction mode, "
          f"pool size {args.pool_size}, pgsluice workers {args.workers}, {args.procs} client processes, "
          f"connection logs {args.connection_logs}; {os.cpu_count()} CPUs, load average "
          f"{' '.join(env_info['loadavg_start'])}; RLIMIT_NOFILE {nofile[0]}/{nofile[1]}", flush=True)

    bursts: list[dict] = []
    storm_results: list[dict] = []
    with LocalPostgres() as pg:
        env_info["postgres"] = pg.sql("SHOW server_version")[0][0]
        create_storm_roles(pg)
        print(f"postgres {env_info['postgres']} on port {pg.port}", flush=True)
        if "burst" in args.parts:
            for target in args.targets:
                bursts.append(burst(target, pg, args))
        if "storm" in args.parts:
            storm_results = storms(pg, args)
    env_info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    summary = storm_summary(storm_results)

    if bursts:
        print(f"\nBurst: {args.clients:,} logged-in clients (SCRAM), then one SELECT 1 each at one moment\n")
        print(burst_table(bursts))
        print("\nMemory (VmRSS) around the burst\n")
        print(memory_table(bursts))
    if storm_results:
        print(f"\nLogin storms: {args.storm:,} clients at once, each connect, log in, SELECT 1, leave\n")
        print(storm_rounds_table(storm_results))
        print()
        print(storm_summary_table(summary))
    print(f"\n(transaction mode, pool size {args.pool_size}, pgsluice workers {args.workers}; clients in {args.procs} "
          f"processes on this machine's {os.cpu_count()} CPUs, load average {' '.join(env_info['loadavg_start'])} "
          f"at the start and {' '.join(env_info['loadavg_end'])} at the end. Burst: 'sends done' is when the last "
          f"process had sent all its queries, reply times are from 'go'; not served = an ErrorResponse's SQLSTATE, "
          f"the connection closed or no reply in {args.burst_timeout:g} s. Memory: start = pool warm, no clients; "
          f"clients idle = all logged in, before the burst; peak = the largest of VmHWM and VmRSS read every 0.1 s; "
          f"after = 5 s / 10 s after the last client closed. Storms: CPU = the pooler's user+system time over "
          f"the storm and {args.settle:g} s after it, "
          f"/ clients started; stat = /proc/PID/stat ticks of {1e3 / CLK_TCK:g} ms, schedstat = "
          f"/proc/PID/task/*/schedstat in ns; connection logs {args.connection_logs})")

    if args.json:
        params = {k: v for k, v in vars(args).items() if k not in ("json",)}
        Path(args.json).write_text(json.dumps(
            {"parameters": params, "environment": env_info, "burst": bursts, "storms": storm_results,
             "storm_summary": summary, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        print(f"wrote {args.json}")
    ok = all(r.get("ok") for r in bursts) and all(r.get("ok") for r in storm_results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
