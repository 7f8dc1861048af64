"""Throwaway Postgres and pgsluice processes for the integration tests, the benchmarks and the demo.

Python 3 standard library + psycopg2 (Debian's python3-psycopg2), run by /usr/bin/python3.

    with LocalPostgres() as pg, Pgsluice(base_config(pg, free_port(), mode="session")) as px:
        psycopg2.connect(px.dsn("app", "secret-app", "app"))

LocalPostgres runs initdb into a fresh temporary directory, on a free port on 127.0.0.1, as the
`postgres` OS user when we are root; it never touches the machine's default cluster. It creates
one role per server-side authentication method the proxy must speak (DESIGN §2):

    role         pg_hba method    stored password         password
    scram_user   scram-sha-256    SCRAM-SHA-256 verifier  secret-scram_user
    md5_user     md5              md5 hash                secret-md5_user
    plain_user   password         SCRAM verifier          secret-plain_user  (sent in clear text)
    trust_user   trust            -                       secret-trust_user  (never asked)
    app          scram-sha-256    SCRAM-SHA-256 verifier  secret-app, owns database `app`
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg2

# The raw-socket protocol client lives in pgwire; tests reach it through this module too.
from pgwire import (  # noqa: F401
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_3_0, SSL_REQUEST_CODE, PgError, RawConnection,
    ScramClient, cancel_packet, errors_of, md5_password, message, parse_error_fields, rows_of,
    send_cancel, startup_packet,
)

__all__ = [
    "REPO_ROOT", "ROLES", "LocalPostgres", "Pgsluice", "base_config", "find_binary", "free_port", "libpq_dsn",
    "make_ca", "make_certificate", "rss_kib",
    "password_for", "port_is_free", "wait_for_port",
    # from pgwire
    "CANCEL_REQUEST_CODE", "GSSENC_REQUEST_CODE", "PROTOCOL_3_0", "SSL_REQUEST_CODE", "PgError", "RawConnection",
    "ScramClient", "cancel_packet", "errors_of", "md5_password", "message", "parse_error_fields", "rows_of",
    "send_cancel", "startup_packet",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("PGSLUICE_PG_BIN", "/usr/lib/postgresql/15/bin"))

ROLES = {
    # role: pg_hba.conf method for TCP connections from 127.0.0.1
    "scram_user": "scram-sha-256",
    "md5_user": "md5",
    "plain_user": "password",
    "trust_user": "trust",
    "app": "scram-sha-256",
}


def password_for(role: str) -> str:
    return f"secret-{role}"


def _openssl(*argv: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *argv], cwd=str(cwd), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(argv)} failed:\n{proc.stderr}")


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A throwaway certificate authority (P-256): (certificate, key) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN=pgsluice test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_certificate(directory: Path, name: str, ca: tuple[Path, Path], hosts=("localhost", "127.0.0.1"),
                     owner: str | None = None) -> tuple[Path, Path]:
    """A leaf certificate for `hosts` (DNS names and IP addresses) signed by `ca`: (certificate,
    key). `owner`: the key's owner (Postgres wants its key private to the user it runs as)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = ",".join(("IP:" if h.replace(".", "").isdigit() or ":" in h else "DNS:") + h for h in hosts)
    (directory / f"{name}.ext").write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={hosts[0]}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)
    key = directory / f"{name}.key"
    os.chmod(key, 0o600)
    if owner is not None and os.geteuid() == 0:
        pw = pwd.getpwnam(owner)
        os.chown(key, pw.pw_uid, pw.pw_gid)
        os.chown(directory / f"{name}.crt", pw.pw_uid, pw.pw_gid)
    return directory / f"{name}.crt", key


def rss_kib(pid: int) -> int:
    """A process's resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick, so no fixed ports in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, timeout: float, alive=lambda: True) -> bool:
    """True once host:port accepts TCP within timeout; False on timeout or when alive() is False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def find_binary() -> Path:
    """$PGSLUICE_BIN, else the first of build/{asan,release,debug}/pgsluice that exists."""
    env = os.environ.get("PGSLUICE_BIN")
    if env:
        path = Path(env)
        if not path.is_absolute():
            path = (Path.cwd() / path) if (Path.cwd() / path).exists() else REPO_ROOT / path
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"PGSLUICE_BIN={env} is not an executable file")
        return path.resolve()
    for preset in ("asan", "release", "debug"):
        path = REPO_ROOT / "build" / preset / "pgsluice"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "no pgsluice binary: set PGSLUICE_BIN or build one (cmake --preset asan && cmake --build --preset asan)"
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _temp_root() -> str:
    # The postgres OS user must be able to reach the directory, so not $TMPDIR under /root.
    return os.environ.get("PGSLUICE_TMP", "/tmp")


def libpq_dsn(host: str, port: int, user: str, password: str | None, dbname: str) -> str:
    """A key=value libpq connection string (quoting what needs it)."""

    def q(v) -> str:
        v = str(v)
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = [f"host={q(host)}", f"port={port}", f"user={q(user)}", f"dbname={q(dbname)}"]
    if password is not None:
        parts.append(f"password={q(password)}")
    return " ".join(parts)


class LocalPostgres:
    """A private Postgres 15 cluster in a temp dir, on a free port on 127.0.0.1."""

    host = "127.0.0.1"

    def __init__(self, max_connections: int = 400, extra_conf: dict | None = None):
        self.max_connections = max_connections
        self.extra_conf = dict(extra_conf or {})
        self.port: int | None = None
        self.root: Path | None = None
        self._started = False

    @classmethod
    def adopt(cls, root: str | os.PathLike) -> "LocalPostgres":
        """The cluster a previous process started in `root` (e.g. the demo's --background), to stop it."""
        pg = cls()
        pg.root = Path(root)
        conf_file = pg.datadir / "postgresql.auto.conf"
        conf = conf_file.read_text() if conf_file.exists() else ""
        for line in conf.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "port":
                pg.port = int(value.strip())
        pg._started = True
        return pg

    # -- paths ---------------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    # -- running commands as the cluster's owner --------------------------------------------------
    @staticmethod
    def _as_owner(argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        proc = subprocess.run(
            self._as_owner(argv), env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{_tail(self.logfile)}")
        return proc

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "LocalPostgres":
        self.root = Path(tempfile.mkdtemp(prefix="pgsluice-pg-", dir=_temp_root()))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        self._run([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-E", "UTF8",
                   "--locale=C", "--auth-local=trust", "--auth-host=reject", "--no-sync"])
        self._write_hba()
        last_error = None
        for _ in range(5):  # the port is free when picked but may be taken before we bind it
            self.port = free_port()
            self._write_conf()
            proc = self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                              "-w", "-t", "60", "start"], check=False)
            if proc.returncode == 0:
                break
            last_error = proc.stdout + "\n" + _tail(self.logfile)
        else:
            raise RuntimeError(f"postgres did not start:\n{last_error}")
        self._started = True
        self._create_roles()
        return self

    def _write_conf(self) -> None:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(self.max_connections),
            "shared_buffers": "'128MB'",
            # A throwaway cluster: durability costs time and proves nothing here.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_connections": "on",  # the log names the auth method used (tests check it)
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
            "lc_messages": "'C'",
        }
        conf.update({k: str(v) for k, v in self.extra_conf.items()})
        path = self.datadir / "postgresql.auto.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))

    def _write_hba(self) -> None:
        lines = ["# pgsluice test cluster", "local all postgres trust",
                 "host all postgres 127.0.0.1/32 trust"]
        lines += [f"host all {role} 127.0.0.1/32 {method}" for role, method in ROLES.items()]
        lines += ["host all all 127.0.0.1/32 scram-sha-256"]  # unknown roles fail as Postgres fails them
        (self.datadir / "pg_hba.conf").write_text("\n".join(lines) + "\n")

    def _create_roles(self) -> None:
        for role in ROLES:
            # md5_user's pg_authid entry must be an md5 hash, or Postgres would use SCRAM for it.
            encryption = "md5" if role == "md5_user" else "scram-sha-256"
            self.sql(f"SET password_encryption = '{encryption}'; "
                     f"CREATE ROLE {role} LOGIN PASSWORD '{password_for(role)}'")
        self.sql("CREATE DATABASE app OWNER app")

    def stop(self, mode: str = "fast") -> None:
        if self.root is None or not (self.datadir / "postmaster.pid").exists():
            return
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"],
                  check=False)

    def start_again(self) -> None:
        """Starts the same cluster (same port, same data) after stop() or kill()."""
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                   "-w", "-t", "60", "start"])

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        """The postmaster's pid followed by its children's (backends and auxiliary processes)."""
        master = self.postmaster_pid()
        if master is None or not Path(f"/proc/{master}").exists():
            return []
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == master:
                children.append(int(entry.name))
        return [master, *sorted(children)]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kills the postmaster and every backend at once, like a crash (default SIGKILL)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)

    def cleanup(self) -> None:
        if self.root is None:
            return
        if self._started:
            self.stop("immediate")
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self._started = False

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # -- clients ----------------------------------------------------------------------------------
    def dsn(self, user: str = "app", password: str | None = None, dbname: str = "app") -> str:
        """A libpq DSN straight to this Postgres over TCP 127.0.0.1 (as a client of the proxy would)."""
        if password is None and user in ROLES:
            password = password_for(user)
        return libpq_dsn(self.host, self.port, user, password, dbname)

    def url(self, user: str = "app", password: str | None = None, dbname: str = "app") -> str:
        password = password if password is not None else password_for(user)
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgres://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, user: str = "postgres", db: str = "postgres"):
        """A psycopg2 connection in autocommit; superuser over the unix socket, others over TCP."""
        if user == "postgres":
            conn = psycopg2.connect(host=str(self.socket_dir), port=self.port, user=user, dbname=db)
        else:
            conn = psycopg2.connect(self.dsn(user, None, db))
        conn.autocommit = True
        return conn

    def sql(self, query: str, user: str = "postgres", db: str = "postgres", params=None):
        """Runs query and returns its rows (list of tuples), or None for a statement without rows."""
        conn = self.connect(user, db)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def env(self, user: str = "postgres", db: str = "postgres") -> dict:
        """Environment for psql/pgbench straight to this Postgres (superuser via the socket)."""
        env = dict(os.environ)
        if user == "postgres":
            env.update(PGHOST=str(self.socket_dir), PGPORT=str(self.port), PGUSER=user, PGDATABASE=db)
        else:
            env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=user, PGDATABASE=db,
                       PGPASSWORD=password_for(user))
        return env


def base_config(pg: LocalPostgres, port: int, **service_overrides) -> dict:
    """A pgsluice config (a dict; YAML accepts JSON) listening on 127.0.0.1:port in front of pg.

    Client users: `app` (SCRAM, password secret-app), `md5client` (MD5, password "x"), `trusty`
    (trust). Each maps, for database `app`, to a service that logs in to Postgres as role `app`.
    service_overrides change the `app` service (e.g. mode="transaction", max_connections=20).
    """
    server = {"backend": "primary", "server_user": "app", "server_password": password_for("app"),
              "server_database": "app", "mode": "session", "min_connections": 0}
    app = {**server, "match": {"user": "app", "database": "app"}, "max_connections": 250}
    app.update(service_overrides)
    return {
        "listen": f"127.0.0.1:{port}",
        "workers": 2,
        "client_login_timeout": "5s",
        "log": {"level": os.environ.get("PGSLUICE_TEST_LOG_LEVEL", "info")},
        "metrics": {"enabled": False},
        "backends": {"primary": {"host": pg.host, "port": pg.port, "max_connections": pg.max_connections,
                                 "reserved_connections": 10}},
        "users": {
            "app": {"password": password_for("app")},
            "md5client": {"password": "x", "auth": "md5"},
            "trusty": {"auth": "trust"},
        },
        "services": {
            "app": app,
            "md5client": {**server, "match": {"user": "md5client", "database": "app"}, "max_connections": 20},
            "trusty": {**server, "match": {"user": "trusty", "database": "app"}, "max_connections": 20},
        },
    }


class Pgsluice:
    """A pgsluice process started with `--config FILE`, logging to a file, ready once it listens."""

    def __init__(self, config: dict, binary: str | os.PathLike | None = None, extra_args=(),
                 start_timeout: float = 15.0, env: dict | None = None):
        self.config = copy.deepcopy(config)
        self.binary = Path(binary) if binary else None
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.env = env
        self.host, port = self.config["listen"].rsplit(":", 1)
        self.port = int(port)
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def config_path(self) -> Path:
        return self.dir / "pgsluice.yaml"

    @property
    def log_path(self) -> Path:
        return self.dir / "pgsluice.log"

    def write_config(self, config: dict | None = None) -> None:
        """(Re)writes the config file, e.g. before a SIGHUP reload."""
        if config is not None:
            self.config = copy.deepcopy(config)
        self.config_path.write_text(json.dumps(self.config, indent=2) + "\n")

    def start(self) -> "Pgsluice":
        binary = self.binary or find_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="pgsluice-px-", dir=_temp_root()))
        self.write_config()
        env = dict(os.environ if self.env is None else self.env)
        # Sanitizer reports go to the log file like everything else.
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(binary), "--config", str(self.config_path), *self.extra_args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(self.dir),
                                         start_new_session=True)  # a terminal's Ctrl-C is ours to handle
        if not wait_for_port(self._client_host(), self.port, self.start_timeout, alive=self.alive):
            rc = self.proc.poll()
            self.stop()
            state = f"exited with {rc}" if rc is not None else f"not listening after {self.start_timeout:.0f} s"
            raise RuntimeError(f"pgsluice {state} on {self.config['listen']}; log tail:\n{_tail(self.log_path)}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        """Waits up to timeout for the process to exit on its own (no signal), then SIGKILL."""
        if self.proc is None:
            return self.returncode
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit code (negative = signal)."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # its own process group (start_new_session)
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def sanitizer_reports(self) -> list[str]:
        """Lines of the log where ASan/UBSan/LSan reported a problem."""
        markers = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "SUMMARY: UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")
        return [line for line in self.log_text().splitlines() if any(m in line for m in markers)]

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None and not os.environ.get("PGSLUICE_KEEP_LOGS"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Pgsluice":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _password_of(self, user: str) -> str | None:
        """The plain password the config gives `user` (None for trust users or ${ENV} secrets)."""
        password = self.config.get("users", {}).get(user, {}).get("password")
        return None if password is None or password.startswith(("${", "file:")) else password

    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "*", "") else self.host

    def dsn(self, user: str = "app", password: str | None = None, db: str = "app") -> str:
        """A libpq DSN to this pgsluice; the password defaults to the one in the config."""
        return libpq_dsn(self._client_host(), self.port, user,
                         password if password is not None else self._password_of(user), db)

    def url(self, user: str = "app", password: str | None = None, db: str = "app") -> str:
        password = password if password is not None else self._password_of(user)
        auth = quote(user, safe="") if password is None else f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgres://{auth}@{self._client_host()}:{self.port}/{quote(db, safe='')}"
