"""pgsluice in front of a throwaway local Postgres, for trying it out (run by deploy/local/demo.sh).

    demo.py                 start both, print DATABASE_URL, run until Ctrl-C/SIGTERM, clean up
    demo.py --background    start both, print DATABASE_URL (also to build/demo/env), return
    demo.py --stop          stop what --background started and remove its files

DATABASE_URL goes to stdout, everything else to stderr, so `eval` or `>> .env` work.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "harness"))

import pgharness  # noqa: E402

DEMO_DIR = ROOT / "build" / "demo"
STATE_FILE = DEMO_DIR / "state.json"
ENV_FILE = DEMO_DIR / "env"
DEFAULT_PORT = 6432


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def pid_is_pgsluice(pid: int) -> bool:
    try:
        return b"pgsluice" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def release_binary() -> Path:
    path = ROOT / "build" / "release" / "pgsluice"
    if os.environ.get("PGSLUICE_BIN"):
        return pgharness.find_binary()
    if not path.exists():
        sys.exit(f"demo: {path} is missing; run deploy/local/demo.sh (it builds it)")
    return path


def start(args) -> tuple[pgharness.LocalPostgres, pgharness.Pgsluice, str]:
    binary = release_binary()
    port = args.port if pgharness.port_is_free(args.port) else pgharness.free_port()
    if port != args.port:
        say(f"demo: port {args.port} is taken, using {port}")
    say("demo: starting a throwaway Postgres 15 ...")
    pg = pgharness.LocalPostgres(max_connections=100).start()
    try:
        config = pgharness.base_config(pg, port, max_connections=20)
        for service in config["services"].values():
            service["mode"] = args.mode
            # The coalescer (docs/coalescing.md): in the pooled modes, concurrent identical or
            # same-shaped lookups share executions.
            service["coalesce"] = {"enabled": args.mode != "session", "max_batch": 256}
        # Observability: /metrics on 127.0.0.1 and the admin console (user admin, DEMO_ADMIN_PASSWORD).
        metrics_port = 9187 if pgharness.port_is_free(9187) else pgharness.free_port()
        config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
        config["users"]["admin"] = {"password": DEMO_ADMIN_PASSWORD}
        config["admin"] = {"users": ["admin"]}
        say(f"demo: starting {binary} ...")
        proxy = pgharness.Pgsluice(config, binary=binary).start()
    except BaseException:
        pg.cleanup()
        raise
    url = proxy.url("app", "secret-app", "app")
    return pg, proxy, url


DEMO_ADMIN_PASSWORD = "admin-demo"


def metrics_listen(proxy) -> str:
    return proxy.config["metrics"]["listen"]


def announce(pg, proxy, url, mode: str) -> None:
    say("")
    say(f"pgsluice listens on 127.0.0.1:{proxy.port} ({mode} mode) in front of Postgres on "
        f"127.0.0.1:{pg.port} (data in {pg.root})")
    say(f"pgsluice log: {proxy.log_path}")
    print(f"DATABASE_URL={url}", flush=True)
    say(f"try:  psql \"{url}\" -c 'select 1'   (or: export DATABASE_URL=...; psql \"$DATABASE_URL\" -c 'select 1')")
    say(f"metrics:  curl -s http://{metrics_listen(proxy)}/metrics   (/healthz, /readyz)")
    say(f"admin console:  PGPASSWORD={DEMO_ADMIN_PASSWORD} psql -h 127.0.0.1 -p {proxy.port} -U admin pgsluice "
        "-c 'SHOW POOLS'   (SHOW STATS | CLIENTS | SERVERS | BREAKERS | STATEMENTS | CONFIG, PAUSE, RESUME, "
        "RELOAD)")
    if mode != "session":
        say("coalescing is on: 100 clients looking up random keys, then what the database ran for them:")
        say(f"  pgbench -i -s 10 \"{url}\" && pgbench -n -S -M extended -c 100 -j 2 -T 10 \"{url}\"")
        say(f"  PGPASSWORD={DEMO_ADMIN_PASSWORD} psql -h 127.0.0.1 -p {proxy.port} -U admin pgsluice -c 'SHOW STATEMENTS'"
            "   (calls vs executions)")
        say(f"  curl -s http://{metrics_listen(proxy)}/metrics | grep pgsluice_coalesce")


def run_foreground(args) -> int:
    pg, proxy, url = start(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        announce(pg, proxy, url, args.mode)
        say("Ctrl-C stops pgsluice and removes the Postgres.")
        while not stop.wait(0.5):
            if not proxy.alive():
                say(f"demo: pgsluice exited with {proxy.proc.returncode}; log tail:")
                say("\n".join(proxy.log_text().splitlines()[-20:]))
                return 1
        return 0
    finally:
        say("demo: stopping ...")
        code = proxy.stop()
        proxy.cleanup()
        pg.cleanup()
        say(f"demo: stopped (pgsluice exit code {code})")


def run_background(args) -> int:
    if STATE_FILE.exists():
        state = json.loads(STATE_FILE.read_text())
        if pid_is_pgsluice(state.get("pgsluice_pid", -1)):
            say("demo: already running in the background (deploy/local/demo.sh --stop stops it)")
            if ENV_FILE.exists():
                sys.stdout.write(ENV_FILE.read_text())
            return 0
        stop_background()
    pg, proxy, url = start(args)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({
        "pgsluice_pid": proxy.pid, "pgsluice_dir": str(proxy.dir), "postgres_root": str(pg.root),
        "database_url": url,
    }, indent=2) + "\n")
    ENV_FILE.write_text(f"DATABASE_URL={url}\n")
    announce(pg, proxy, url, args.mode)
    say(f"demo: left running; {ENV_FILE.relative_to(ROOT)} holds DATABASE_URL; "
        "deploy/local/demo.sh --stop stops it.")
    return 0


def stop_background() -> int:
    if not STATE_FILE.exists():
        say("demo: nothing is running in the background")
        return 0
    state = json.loads(STATE_FILE.read_text())
    pid = state.get("pgsluice_pid")
    if pid and pid_is_pgsluice(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pid_is_pgsluice(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_is_pgsluice(pid):
            os.kill(pid, signal.SIGKILL)
        say(f"demo: stopped pgsluice (pid {pid})")
    if state.get("postgres_root") and Path(state["postgres_root"]).exists():
        pgharness.LocalPostgres.adopt(state["postgres_root"]).cleanup()
        say(f"demo: stopped Postgres and removed {state['postgres_root']}")
    if state.get("pgsluice_dir"):
        shutil.rmtree(state["pgsluice_dir"], ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)
    ENV_FILE.unlink(missing_ok=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", action="store_true", help="leave pgsluice and Postgres running")
    parser.add_argument("--stop", action="store_true", help="stop what --background started")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="pgsluice's port (default 6432, "
                        "or a free one if taken)")
    parser.add_argument("--mode", choices=["session", "transaction"], default="transaction",
                        help="pool mode of the `app` service (default: transaction, with coalescing on)")
    args = parser.parse_args()
    if args.stop:
        return stop_background()
    if args.background:
        return run_background(args)
    return run_foreground(args)


if __name__ == "__main__":
    sys.exit(main())
