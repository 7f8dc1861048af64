#!/usr/bin/python3
"""Idle-client memory: what an idle, logged-in client costs pgsluice and PgBouncer, in one run.

    bench/idle_memory.py                                   # N = 0, 1000, 10000; pgsluice workers 1
    bench/idle_memory.py --counts 0,500,5000 --workers 1,2 --json idle.json

One run starts a throwaway Postgres, pgsluice (the release build) and PgBouncer (Debian's 1.18),
both in transaction mode with a pool of 10 server connections, set up as bench/pgbench_compare.py
sets them up (its code, imported). For each target and each N it opens N raw TCP clients that log
in with SCRAM-SHA-256 (tests/harness/pgwire.py's RawConnection), run `select 1` each and then stay
idle; after --settle seconds it reads the pooler process's VmRSS (/proc/PID/status) and its Pss and
private memory (/proc/PID/smaps_rollup), then closes the clients. Before N = 0 is read, a few
clients log in, query and leave, so that the pool's server connections exist in every reading and
the deltas are the clients' own.

bytes/client = (RSS at N - RSS at N=0) / N. Everything runs on this machine; memory, unlike
throughput, hardly depends on its load, but the login times do.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# pgbench_compare puts tests/harness on sys.path, so pgharness imports after it.
from pgbench_compare import (DATABASE, PGBOUNCER, REPO_ROOT, USER, PgBouncer, cpu_ticks,  # noqa: E402
                             pgsluice_config, tail, version_of)
from pgharness import LocalPostgres, Pgsluice, RawConnection, free_port, message, password_for, rows_of  # noqa: E402

ALL_TARGETS = ("pgsluice", "pgbouncer")
FD_MARGIN = 200  # descriptors beyond the clients: server connections, listeners, logs, Python's own


@dataclass
class Reading:
    target: str
    clients: int
    ok: bool
    rss_kib: int | None = None  # VmRSS with the N clients connected and idle
    pss_kib: int | None = None  # smaps_rollup Pss
    private_kib: int | None = None  # smaps_rollup Private_Clean + Private_Dirty
    anonymous_kib: int | None = None  # smaps_rollup Anonymous
    rss_after_close_kib: int | None = None  # VmRSS --settle seconds after the N clients left
    login_seconds: float | None = None  # wall time to open the N clients (connect, SCRAM, select 1)
    login_cpu_ms: float | None = None  # the pooler's user+system CPU per login, while they opened
    threads: int | None = None  # the pooler's thread count (/proc/PID/status Threads)
    error: str | None = None


# -- /proc ----------------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def kib(value: str | None) -> int | None:
    """'1234 kB' -> 1234."""
    return int(value.split()[0]) if value else None


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup (Linux ≥ 4.14), {} where it is missing."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0])
    return fields


def open_files_limit(pid: int) -> str | None:
    """The soft and hard 'Max open files' of a process, from /proc/PID/limits."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except OSError:
        pass
    return None


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raises this process's soft RLIMIT_NOFILE to min(hard limit, 65536), at least `needed`
    (pgsluice inherits it; PgBouncer gets the same through prlimit); SystemExit if the hard limit
    is lower than `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} descriptors needed for "
                         f"{needed - FD_MARGIN} clients: lower --counts or raise `ulimit -Hn`")
    wanted = max(needed, 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536))
    if soft == resource.RLIM_INFINITY or soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def binary_identity(path: str) -> dict | None:
    try:
        data = Path(path).read_bytes()
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    return {"sha256": hashlib.sha256(data).hexdigest(),
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(mtime))}


# -- clients --------------------------------------------------------------------------------------
def open_clients(port: int, count: int, threads: int, timeout: float = 60.0) -> tuple[list, str | None]:
    """`count` connections that log in (SCRAM) and run `select 1`, opened by `threads` threads
    (pbkdf2 releases the GIL, so they overlap). Returns the open connections and the first error."""
    conns: list[RawConnection] = []
    errors: list[str] = []
    lock = threading.Lock()
    numbers = itertools.count()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set() and next(numbers) < count:
            conn = None
            try:
                conn = RawConnection("127.0.0.1", port, timeout=timeout)
                conn.startup(USER, DATABASE, password_for(USER))
                rows = rows_of(conn.query("select 1"))
                if rows != [["1"]]:
                    raise ValueError(f"select 1 returned {rows!r}")
            except Exception as e:  # noqa: BLE001 - any failure ends the measurement, reported
                if conn is not None:
                    conn.close()
                with lock:
                    errors.append(f"client {len(conns) + len(errors) + 1}: {type(e).__name__}: {e}")
                stop.set()
                return
            with lock:
                conns.append(conn)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(threads, count)))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return conns, (errors[0] if errors else None)


def close_clients(conns: list[RawConnection]) -> None:
    """Terminate, then close, as a polite client leaves."""
    for conn in conns:
        try:
            conn.sock.sendall(message(b"X"))
        except OSError:
            pass
        conn.close()
    conns.clear()


# -- one target -----------------------------------------------------------------------------------
def measure(target: str, port: int, pid: int, counts: list[int], args) -> list[Reading]:
    """The readings of one pooler, N by N, each with a fresh set of clients."""
    readings = []
    # Warm-up: the pool's server connections and whatever the pooler allocates once are there
    # before N = 0 is read, so the deltas are the clients' own.
    conns, error = open_clients(port, min(2 * args.pool_size, 20), args.login_threads)
    close_clients(conns)
    if error:
        return [Reading(target, n, ok=False, error=f"warm-up: {error}") for n in counts]
    time.sleep(args.settle)
    for n in counts:
        reading = Reading(target, n, ok=False)
        readings.append(reading)
        print(f"{target}: {n} clients ...", end=" ", flush=True)
        conns: list[RawConnection] = []
        try:
            ticks_before = cpu_ticks(pid)
            started = time.monotonic()
            conns, error = open_clients(port, n, args.login_threads)
            reading.login_seconds = time.monotonic() - started
            ticks_after = cpu_ticks(pid)
            if error:
                reading.error = f"{len(conns)} of {n} clients logged in; {error}"
                print("FAILED", flush=True)
                continue
            if n and ticks_before and ticks_after:
                ticks = sum(ticks_after) - sum(ticks_before)
                reading.login_cpu_ms = ticks / os.sysconf("SC_CLK_TCK") * 1000 / n
            time.sleep(args.settle)
            status = proc_status(pid)
            if not status:
                reading.error = f"{target} (pid {pid}) is gone"
                print("FAILED", flush=True)
                break
            rollup = smaps_rollup(pid)
            reading.rss_kib = kib(status.get("VmRSS"))
            reading.threads = int(status["Threads"]) if "Threads" in status else None
            reading.pss_kib = rollup.get("Pss")
            if "Private_Clean" in rollup:
                reading.private_kib = rollup["Private_Clean"] + rollup.get("Private_Dirty", 0)
            reading.anonymous_kib = rollup.get("Anonymous")
            reading.ok = True
            rate = f", {n / reading.login_seconds:,.0f} logins/s" if n and reading.login_seconds else ""
            print(f"RSS {reading.rss_kib / 1024:.1f} MiB (logins {reading.login_seconds:.1f} s{rate})", flush=True)
        finally:
            close_clients(conns)
        time.sleep(args.settle)
        reading.rss_after_close_kib = kib(proc_status(pid).get("VmRSS"))
    return readings


# -- report ---------------------------------------------------------------------------------------
def derive(readings: list[Reading]) -> list[dict]:
    """Rows for the table and the JSON: each reading with its deltas to N=0 and ratios to PgBouncer."""
    base = {r.target: r for r in readings if r.clients == 0 and r.ok}
    rows = []
    for r in readings:
        row = asdict(r)
        b = base.get(r.target)
        for name in ("rss", "pss", "private", "anonymous"):
            value, ref = getattr(r, f"{name}_kib"), (getattr(b, f"{name}_kib") if b else None)
            delta = value - ref if value is not None and ref is not None else None
            row[f"{name}_delta_kib"] = delta
            row[f"{name}_bytes_per_client"] = delta * 1024 / r.clients if delta is not None and r.clients else None
        rows.append(row)
    bouncer = {row["clients"]: row for row in rows if row["target"] == "pgbouncer"}
    for row in rows:
        pb = bouncer.get(row["clients"]) if row["target"] != "pgbouncer" else None
        row["rss_vs_pgbouncer"] = ratio(row["rss_kib"], pb and pb["rss_kib"])
        row["bytes_per_client_vs_pgbouncer"] = ratio(row["rss_bytes_per_client"], pb and pb["rss_bytes_per_client"])
    return rows


def ratio(value, ref) -> float | None:
    return value / ref if value is not None and ref else None


def format_table(rows: list[dict]) -> str:
    headers = ["target", "N", "RSS MiB", "Δ RSS MiB", "bytes/client", "bytes/client / PgBouncer",
               "RSS / PgBouncer", "Pss MiB", "private MiB", "anon bytes/client", "login s (logins/s)",
               "pooler CPU ms/login", "RSS after close MiB"]

    def num(v, fmt, scale=1.0):
        return "-" if v is None else format(v * scale, fmt)

    cells = []
    for r in rows:
        login = "-"
        if r["login_seconds"] is not None and r["clients"]:
            login = f"{r['login_seconds']:.1f} ({r['clients'] / r['login_seconds']:,.0f})"
        cells.append([
            r["target"] + ("" if r["ok"] else " (FAILED)"), f"{r['clients']:,}",
            num(r["rss_kib"], ".1f", 1 / 1024), num(r["rss_delta_kib"], "+.1f", 1 / 1024),
            num(r["rss_bytes_per_client"], ",.0f"), num(r["bytes_per_client_vs_pgbouncer"], ".2f"),
            num(r["rss_vs_pgbouncer"], ".2f"),
            num(r["pss_kib"], ".1f", 1 / 1024), num(r["private_kib"], ".1f", 1 / 1024),
            num(r["anonymous_bytes_per_client"], ",.0f"), login, num(r["login_cpu_ms"], ".2f"),
            num(r["rss_after_close_kib"], ".1f", 1 / 1024),
        ])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda cs: "| " + " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), sep, *(line(c) for c in cells)])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="0,1000,10000",
                   help="idle client counts to measure, comma-separated (default 0,1000,10000; 0 is always "
                        "measured, the deltas are to it)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   help="comma-separated subset of pgsluice,pgbouncer (default: both)")
    p.add_argument("--workers", default="1",
                   help="pgsluice `workers` threads (default 1); a list such as 1,2 runs one pgsluice per "
                        "value (targets pgsluice-w1, pgsluice-w2)")
    p.add_argument("--binary", default=str(REPO_ROOT / "build" / "release" / "pgsluice"),
                   help="pgsluice binary (default: the release build, build/release/pgsluice)")
    p.add_argument("--pool-size", type=int, default=10,
                   help="server connections per pool, pgsluice max_connections = PgBouncer default_pool_size "
                        "(default 10)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the last login and the memory reading (default 2)")
    p.add_argument("--login-threads", type=int, default=8,
                   help="threads opening the clients in parallel (default 8)")
    p.add_argument("--pgsluice-log-level", default="info", help="pgsluice log.level during the run")
    p.add_argument("--json", metavar="FILE", help="also write parameters, environment and readings as JSON")
    args = p.parse_args(argv)
    try:
        args.counts = sorted({0, *(int(c) for c in args.counts.split(",") if c.strip())})
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--counts and --workers take comma-separated whole numbers")
    if min(args.counts) < 0:
        p.error("--counts must not be negative")
    if not args.workers or min(args.workers) < 1:
        p.error("--workers must be positive")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or any(t not in ALL_TARGETS for t in args.targets):
        p.error(f"--targets: choose from {', '.join(ALL_TARGETS)}")
    if args.pool_size < 1 or args.login_threads < 1 or args.settle < 0:
        p.error("--pool-size and --login-threads must be positive, --settle not negative")
    args.runs = []
    for target in args.targets:
        if target == "pgbouncer":
            args.runs.append((target, None))
        elif len(args.workers) == 1:
            args.runs.append(("pgsluice", args.workers[0]))
        else:
            args.runs.extend((f"pgsluice-w{w}", w) for w in args.workers)
    args.binary = str(Path(args.binary).expanduser().absolute())
    # What pgsluice_config reads from the args of pgbench_compare.
    args.pool_mode = "transaction"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if "pgsluice" in args.targets and not os.access(args.binary, os.X_OK):
        print(f"pgsluice binary {args.binary} not found: build it with "
              "`cmake --preset release && cmake --build --preset release`", file=sys.stderr)
        return 2
    # This script holds every client socket, each pooler as many again plus its server side.
    fds_needed = max(args.counts) + FD_MARGIN
    nofile = raise_nofile(fds_needed)

    env_info = {
        "host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "rlimit_nofile_script": list(nofile),
        "pgbouncer": version_of([PGBOUNCER, "--version"]) if "pgbouncer" in args.targets else None,
        "pgsluice": (f"{version_of([args.binary, '--version'])} ({Path(args.binary).resolve()})"
                     if "pgsluice" in args.targets else None),
        # The binary may be rebuilt while a run goes on: which one was measured.
        "pgsluice_binary": binary_identity(args.binary) if "pgsluice" in args.targets else None,
    }
    print(f"idle clients {', '.join(map(str, args.counts))}; transaction mode, pool size {args.pool_size}, "
          f"pgsluice workers {','.join(map(str, args.workers))}; SCRAM logins with {args.login_threads} "
          f"threads; {os.cpu_count()} CPUs; RLIMIT_NOFILE {nofile[0]}/{nofile[1]}", flush=True)

    readings: list[Reading] = []
    started: dict[str, object] = {}
    with LocalPostgres() as pg:
        env_info["postgres"] = pg.sql("SHOW server_version")[0][0]
        print(f"postgres {env_info['postgres']} on port {pg.port}", flush=True)
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        try:
            for target, workers in args.runs:
                try:
                    if target.startswith("pgsluice"):
                        config = pgsluice_config(pg, free_port(), args, workers)
                        config["max_client_connections"] = max(args.counts) + 100
                        px = Pgsluice(config, binary=args.binary)
                        started[target] = px
                        px.start()
                        ports[target], pids[target] = px.port, px.proc.pid
                    else:
                        bouncer = PgBouncer(pg, "transaction", args.pool_size, max(args.counts),
                                            nofile=nofile[0])
                        started[target] = bouncer
                        bouncer.start()
                        pid = bouncer.pid()
                        if pid is None:
                            raise RuntimeError("no pgbouncer.pid: cannot read its memory")
                        ports[target], pids[target] = bouncer.port, pid
                    env_info[f"rlimit_nofile_{target}"] = open_files_limit(pids[target])
                    print(f"{target}: pid {pids[target]}, port {ports[target]}, "
                          f"open files limit {env_info[f'rlimit_nofile_{target}']}", flush=True)
                except (RuntimeError, OSError) as e:
                    print(f"{target}: could not start: {e}", file=sys.stderr, flush=True)
                    readings.extend(Reading(target, n, ok=False, error=f"could not start: {e}")
                                    for n in args.counts)
            for target, _ in args.runs:
                if target in ports:
                    readings.extend(measure(target, ports[target], pids[target], args.counts, args))
        finally:
            failed = {r.target for r in readings if not r.ok}
            for target, proc in started.items():
                if target in failed and target in ports:
                    print(f"{target} log tail:\n{tail(proc.log_text())}", file=sys.stderr)
                proc.cleanup()

    rows = derive(readings)
    print()
    print(format_table(rows))
    for r in rows:
        if r["error"]:
            print(f"  {r['target']} N={r['clients']} failed: {r['error'].splitlines()[0]}")
    print(f"\n(N idle clients, each logged in with SCRAM-SHA-256 and ran `select 1`; transaction mode, pool "
          f"size {args.pool_size}; memory read {args.settle:g} s after the last login: RSS = VmRSS, Pss and "
          f"private from /proc/PID/smaps_rollup (they move when other processes sharing the pooler's pages "
          f"come and go), anon = its Anonymous memory; bytes/client = (RSS at N - RSS at 0) / N; the / PgBouncer "
          f"columns are pgsluice's figure divided by PgBouncer's at the same N, < 1 = less memory; login s = "
          f"wall time to open the N clients with {args.login_threads} threads, pooler CPU the pooler's own "
          f"per login; RSS after close {args.settle:g} s after the clients left)")

    if args.json:
        params = {k: v for k, v in vars(args).items() if k not in ("json", "runs")}
        params["targets"] = [name for name, _ in args.runs]
        Path(args.json).write_text(json.dumps(
            {"parameters": params, "environment": env_info, "results": rows,
             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(r.ok for r in readings) else 1


if __name__ == "__main__":
    sys.exit(main())
