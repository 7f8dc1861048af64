"""Fixtures for the integration tests: one throwaway Postgres per run, one pgsluice per module.

Run with Debian's interpreter: `PGSLUICE_BIN=build/asan/pgsluice /usr/bin/python3 -m pytest -q tests/integration`.

Environment:
  PGSLUICE_BIN          the binary to test (default: build/{asan,release,debug}/pgsluice)
  PGSLUICE_TEST_MODE    pool mode of the services under test (default: session)
  PGSLUICE_TEST_TARGET  `pgsluice` (default), or `direct` to run the same client-visible tests
                        straight against Postgres: a check of the tests themselves. Tests of
                        pgsluice-only behaviour are skipped there.
  PGSLUICE_TEST_TLS     `1`: clients reach pgsluice over TLS (issue 17). The pgsluice of make_config
                        gets `tls: {mode: require}` with a certificate of a test CA made once per
                        run, so a client that does not encrypt is refused; Target.dsn() and
                        Target.url() add sslmode=require, and the driver programs of
                        test_drivers_jvm_node.py get it in their URLs. Meant for the driver tests
                        (tests/run.sh: integration-tls); tests that speak the protocol by hand
                        (Target.raw) do not do TLS. Default `0`; ignored for TARGET=direct.

A module changes its pgsluice config by defining `pgsluice_config(config, pg)`, which edits the
dict from pgharness.base_config in place.
"""
from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))

import pgharness  # noqa: E402

TARGET = os.environ.get("PGSLUICE_TEST_TARGET", "pgsluice")
POOL_MODE = os.environ.get("PGSLUICE_TEST_MODE", "session")
assert TARGET in ("pgsluice", "direct"), f"PGSLUICE_TEST_TARGET={TARGET}"
assert POOL_MODE in ("session", "transaction", "statement"), f"PGSLUICE_TEST_MODE={POOL_MODE}"
TLS_SWITCH = os.environ.get("PGSLUICE_TEST_TLS", "0")
assert TLS_SWITCH in ("0", "1"), f"PGSLUICE_TEST_TLS={TLS_SWITCH}"
TLS = TLS_SWITCH == "1" and TARGET == "pgsluice"

# The driver programs of test_drivers_jvm_node.py and test_coalesce.py, and what they need.
DRIVERS = Path(__file__).resolve().parents[1] / "drivers"
JAVA_SOURCE = DRIVERS / "java" / "DriverCheck.java"
NODE_DIR = DRIVERS / "node"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
INSTALL_HINT = "run `bash tests/drivers/install.sh`"


@dataclass
class Login:
    user: str
    password: str | None
    database: str


@dataclass
class Target:
    """Where the clients of a test connect: pgsluice, or Postgres itself (TARGET=direct)."""

    kind: str
    host: str
    port: int
    mode: str
    logins: dict[str, Login]
    proxy: pgharness.Pgsluice | None = None
    pg: pgharness.LocalPostgres | None = None
    extra: dict = field(default_factory=dict)
    # pgsluice refuses plain-text clients (tls.mode require): dsn() and url() ask for TLS.
    tls: bool = False

    def login(self, name: str = "app") -> Login:
        return self.logins[name]

    def dsn(self, name: str = "app", password: str | None = ..., database: str | None = None, **params) -> str:
        login = self.logins[name]
        if self.tls:
            params.setdefault("sslmode", "require")
        dsn = pgharness.libpq_dsn(self.host, self.port, login.user,
                                  login.password if password is ... else password,
                                  login.database if database is None else database)
        return " ".join([dsn, *(f"{k}={v}" for k, v in params.items())])

    def url(self, name: str = "app") -> str:
        login = self.logins[name]
        auth = login.user if login.password is None else f"{login.user}:{login.password}"
        query = "?sslmode=require" if self.tls else ""
        return f"postgres://{auth}@{self.host}:{self.port}/{login.database}{query}"

    def raw(self, timeout: float = 10.0) -> pgharness.RawConnection:
        return pgharness.RawConnection(self.host, self.port, timeout)

    def log_text(self) -> str:
        return self.proxy.log_text() if self.proxy else ""


def pytest_configure(config):
    config.addinivalue_line("markers", "proxy_only: tests pgsluice's own behaviour; skipped for TARGET=direct")


def pytest_collection_modifyitems(config, items):
    if TARGET != "direct":
        return
    skip = pytest.mark.skip(reason="pgsluice-only behaviour (PGSLUICE_TEST_TARGET=direct)")
    for item in items:
        if item.get_closest_marker("proxy_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pg():
    with pgharness.LocalPostgres(max_connections=400) as pg:
        yield pg


def direct_target(pg: pgharness.LocalPostgres) -> Target:
    # The roles that play pgsluice's users when the tests talk to Postgres itself.
    logins = {
        "app": Login("app", "secret-app", "app"),
        "md5": Login("md5_user", "secret-md5_user", "postgres"),
        "trust": Login("trust_user", None, "postgres"),
    }
    for role in pgharness.ROLES:
        logins.setdefault(role, Login(role, pgharness.password_for(role), "postgres"))
    return Target("direct", pg.host, pg.port, POOL_MODE, logins, pg=pg)


@functools.cache
def client_certificate() -> tuple[Path, Path]:
    """pgsluice's (certificate, key) for localhost and 127.0.0.1, signed by a test CA; made once per
    run in a temp dir that is removed when the run ends."""
    directory = Path(tempfile.mkdtemp(prefix="pgsluice-test-tls-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = pgharness.make_ca(directory / "ca")
    return pgharness.make_certificate(directory / "pgsluice", "pgsluice", ca)


def make_config(pg: pgharness.LocalPostgres, module=None) -> dict:
    """pgharness.base_config on a free port, every service in POOL_MODE, TLS required of clients
    if PGSLUICE_TEST_TLS=1, then the module's changes."""
    config = pgharness.base_config(pg, pgharness.free_port(), mode=POOL_MODE)
    for service in config["services"].values():
        service["mode"] = POOL_MODE
    if TLS:
        cert, key = client_certificate()
        config["tls"] = {"mode": "require", "cert": str(cert), "key": str(key)}
    configure = getattr(module, "pgsluice_config", None)
    if configure is not None:
        configure(config, pg)
    return config


def start_pgsluice(pg: pgharness.LocalPostgres, config: dict, env: dict | None = None) -> Target:
    proxy = pgharness.Pgsluice(config, env=env).start()
    logins = {
        "app": Login("app", "secret-app", "app"),
        "md5": Login("md5client", "x", "app"),
        "trust": Login("trusty", None, "app"),
    }
    for name, user in config["users"].items():
        if name not in ("app", "md5client", "trusty"):
            service = next((s for s in config["services"].values() if s["match"]["user"] == name), None)
            logins[name] = Login(name, user.get("password"), service["match"]["database"] if service else "app")
    return Target("pgsluice", "127.0.0.1", proxy.port, POOL_MODE, logins, proxy=proxy, pg=pg,
                  tls=config.get("tls", {}).get("mode") == "require")


def small_quarantine_env() -> dict:
    """The environment for a pgsluice whose RSS tells what it holds: ASan's quarantine (freed
    memory kept for a while, 256 MB by default) made small."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS", "detect_leaks=1"), "quarantine_size_mb=1"]))
    return env


def stop_pgsluice(target: Target) -> None:
    """Stops pgsluice; fails the test run if it did not exit cleanly or a sanitizer reported."""
    proxy = target.proxy
    code = proxy.stop()
    reports = proxy.sanitizer_reports()
    tail = "\n".join(proxy.log_text().splitlines()[-60:])
    proxy.cleanup()
    assert not reports, "sanitizer reports in the pgsluice log:\n" + "\n".join(reports) + "\n--- log tail:\n" + tail
    assert code == 0, f"pgsluice exited with {code} on SIGTERM; log tail:\n{tail}"


@pytest.fixture(scope="module")
def target(request, pg):
    """The module's pgsluice (its config from pgharness.base_config + the module's pgsluice_config)."""
    if TARGET == "direct":
        yield direct_target(pg)
        return
    t = start_pgsluice(pg, make_config(pg, request.module))
    try:
        yield t
    finally:
        stop_pgsluice(t)


@pytest.fixture(scope="session")
def java_classes(tmp_path_factory) -> Path:
    """tests/drivers/java/DriverCheck.java compiled once per run against the Debian pgjdbc jar."""
    if not JDBC_JAR.is_file():
        pytest.fail(f"{JDBC_JAR} is missing (Debian package libpostgresql-jdbc-java): {INSTALL_HINT}")
    out = tmp_path_factory.mktemp("driver-check-java")
    proc = subprocess.run(["javac", "-encoding", "UTF-8", "-cp", str(JDBC_JAR), "-d", str(out), str(JAVA_SOURCE)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"javac failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The pinned npm packages in tests/drivers/node/node_modules, at the versions package.json pins."""
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        manifest = NODE_DIR / "node_modules" / name / "package.json"
        if not manifest.is_file():
            pytest.fail(f"npm package {name} is not installed in {NODE_DIR}: {INSTALL_HINT}")
        installed = json.loads(manifest.read_text())["version"]
        if installed != version:
            pytest.fail(f"npm package {name} is {installed}, package.json pins {version}: {INSTALL_HINT}")
    return NODE_DIR / "node_modules"
