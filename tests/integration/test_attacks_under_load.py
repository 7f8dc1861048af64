"""Every attack of issue 17's bad-input list at once, while pgbench runs through pgsluice (DESIGN §8):
each attacker gets its error or is closed, pgbench sees no error, pgsluice stays up and its RSS
comes back to within 10 % of where it was before the attacks.

The attackers are threads, each repeating one attack until the attack phase ends: oversized and
lying startup packets, garbage, a login at one byte a second and a silent client (both closed by
client_login_timeout), malformed SCRAM messages, wrong passwords and unknown users (the same
28P01 message), an unknown message type, a message over max_message_size, a Bind whose counts
disagree with its bytes, a CopyData outside COPY, a client vanishing mid-message, a client that
pipelines queries and reads nothing, cancel requests with wrong keys. Then a connection flood
fills max_client_connections: the next client gets 53300 while pgbench's connections go on.

The module runs in the transaction pass only (the attacks are on the client side, the same in
both modes), against a pgsluice of its own whose ASan quarantine is small, so that its RSS tells
what it holds.

    PGSLUICE_TEST_MODE=transaction /usr/bin/python3 -m pytest -q tests/integration/test_attacks_under_load.py
"""
from __future__ import annotations

import os
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from contextlib import closing

import pytest

import pgharness
from conftest import POOL_MODE, TARGET, make_config, small_quarantine_env, start_pgsluice, stop_pgsluice

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("pgsluice's own limits", allow_module_level=True)
if POOL_MODE != "transaction":
    pytest.skip("runs once, in the transaction pass", allow_module_level=True)

PGBENCH_CLIENTS = 8
MAX_CLIENTS = 60           # max_client_connections: pgbench's 8, the attackers' few, and the flood
ATTACK_SECONDS = 12
MAX_MESSAGE_SIZE = 1024 * 1024

PGBENCH_SCRIPT = """\\set k random(1, 100000)
SELECT :k;
BEGIN;
SELECT :k + 1;
SELECT current_setting('application_name');
COMMIT;
"""


@pytest.fixture(scope="module")
def proxy(pg):
    config = make_config(pg)
    for service in config["services"].values():
        service["mode"] = "transaction"
    config["services"]["app"]["max_connections"] = 10
    config["client_login_timeout"] = "1s"
    config["max_message_size"] = "1MB"
    config["max_client_connections"] = MAX_CLIENTS
    target = start_pgsluice(pg, config, env=small_quarantine_env())
    try:
        yield target
    finally:
        stop_pgsluice(target)


# -- the attacks -----------------------------------------------------------------------------------
# Each returns the name of its outcome; an outcome that is not a refusal raises AssertionError.

def rejected(raw: pgharness.RawConnection, sqlstates: tuple[str, ...], within: float = 5.0) -> str:
    """The connection ends with one of `sqlstates` (or with no error at all) within `within` s."""
    fields = raw.expect_rejected(within)
    if fields is None:
        return "closed"
    assert fields.get("C") in sqlstates, fields
    return fields["C"]


def login(proxy, name: str) -> pgharness.RawConnection:
    who = proxy.login(name)
    raw = proxy.raw()
    raw.startup(who.user, who.database, who.password)
    return raw


def oversized_startup(proxy, rng):
    packet = pgharness.startup_packet({"user": "app", "database": "app", "application_name": "a" * 10100})
    with closing(proxy.raw()) as raw:
        raw.send(packet)
        return rejected(raw, ("08P01",))


def lying_startup_length(proxy, rng):
    with closing(proxy.raw()) as raw:
        raw.send(struct.pack("!II", rng.choice([0x7FFFFFFF, 10_100, 3]), pgharness.PROTOCOL_3_0))
        return rejected(raw, ("08P01",))


def garbage(proxy, rng):
    with closing(proxy.raw()) as raw:
        try:
            raw.send(rng.randbytes(rng.randint(1, 65536)))
        except (BrokenPipeError, ConnectionResetError):
            return "closed while sending"
        return rejected(raw, ("08P01", "0A000"))


def one_byte_a_second(proxy, rng):
    """A login trickled at a byte a second: client_login_timeout (1 s) closes it."""
    packet = pgharness.startup_packet({"user": "app", "database": "app"})
    with closing(proxy.raw()) as raw:
        started = time.monotonic()
        for byte in packet:
            try:
                raw.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(1.0)
            if time.monotonic() - started > 6:
                raise AssertionError("a one-byte-a-second login was still open after 6 s")
        outcome = rejected(raw, ("08P01",))
        assert time.monotonic() - started < 6
        return f"slow login {outcome}"


def silent(proxy, rng):
    with closing(proxy.raw()) as raw:
        return "silent " + rejected(raw, ("08P01",), within=4)


def wrong_password_or_unknown_user(proxy, rng):
    user = rng.choice(["app", "md5client", "nobody-" + str(rng.randint(0, 10**6))])
    with closing(proxy.raw()) as raw:
        try:
            raw.startup(user, "app", "wrong-" + str(rng.random()))
        except pgharness.PgError as e:
            assert e.sqlstate == "28P01", e.fields
            assert e.message == f'password authentication failed for user "{user}"', e.fields
            return "28P01"
    raise AssertionError(f"user {user} logged in with a wrong password")


def malformed_scram(proxy, rng):
    with closing(proxy.raw()) as raw:
        raw.send(pgharness.startup_packet({"user": "app", "database": "app"}))
        msg_type, payload = raw.read_message()
        assert msg_type == b"R" and struct.unpack("!I", payload[:4])[0] == 10
        if rng.random() < 0.5:
            first = rng.choice([b"", b"x,,n=,r=abc", b"n,,n=,r=", b"p=tls-server-end-point,,n=,r=abc",
                                b"n,,n=,r=" + b"\xff" * 64, b"n,,n=,r=abc,\xfe\xff"])
            raw.send(pgharness.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        else:
            first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL"
            raw.send(pgharness.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
            assert raw.read_message()[0] == b"R"
            raw.send(pgharness.message(b"p", rng.choice([b"", b"c=biws", b"c=biws,r=wrong,p=AAAA", rng.randbytes(40)])))
        return "scram " + rejected(raw, ("08P01", "28P01", "28000"))


def unknown_message_type(proxy, rng):
    with closing(login(proxy, "trust")) as raw:
        raw.send(pgharness.message(rng.choice([b"z", b"\x00", b"\xff", b"A"]), b"abc"))
        return rejected(raw, ("08P01",))


def over_max_message_size(proxy, rng):
    with closing(login(proxy, "trust")) as raw:
        raw.send(b"Q" + struct.pack("!I", 2 * MAX_MESSAGE_SIZE + 4) + b"select '" + b"x" * 1000)
        return rejected(raw, ("08P01",))


def bad_bind(proxy, rng):
    payload = rng.choice([
        b"\0\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", 400) + b"abc" + struct.pack("!h", 0),
        b"\0\0" + struct.pack("!hhhh", 2, 0, 0, 1) + struct.pack("!i", 1) + b"1" + struct.pack("!h", 0),
        b"\0\0" + struct.pack("!h", -1),
    ])
    with closing(login(proxy, "app")) as raw:
        raw.send(pgharness.message(b"P", b"\0SELECT $1::text\0\0\0") + pgharness.message(b"B", payload) +
                 pgharness.message(b"E", b"\0\0\0\0\0") + pgharness.message(b"S"))
        messages = raw.read_until_closed(10)
        errors = [pgharness.parse_error_fields(p) for t, p in messages if t == b"E"]
        assert errors and errors[-1].get("C") == "08P01", messages
        return "bind 08P01"


def copy_data_outside_copy(proxy, rng):
    """Postgres ignores a CopyData outside COPY (so that a client still sending after a COPY failed
    is not cut off), and pgsluice relays it: the attacker gets nothing from it, and its next
    query is answered as its own (docs/operations.md, Limits)."""
    with closing(login(proxy, "trust")) as raw:
        raw.send(pgharness.message(b"d", rng.randbytes(100)) + pgharness.message(b"c"))
        messages = raw.query("select 'after copydata'", timeout=10)
        assert pgharness.rows_of(messages) == [["after copydata"]], messages
        return "copydata ignored"


def vanishing_mid_message(proxy, rng):
    raw = login(proxy, "trust")
    raw.send(b"Q" + struct.pack("!I", 1000) + b"select 1")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    raw.close()
    return "vanished"


def pipelines_and_never_reads(proxy, rng):
    """SELECTs sent for 2 s without reading a reply, then gone."""
    query = pgharness.message(b"Q", b"select repeat('x', 1000)\0")
    chunk = query * 500
    raw = login(proxy, "app")
    raw.sock.setblocking(False)
    deadline = time.monotonic() + 2
    sent = 0
    while time.monotonic() < deadline:
        try:
            sent += raw.sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.02)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    return "never read"


def wrong_cancel_key(proxy, rng):
    with closing(proxy.raw()) as raw:
        raw.send(pgharness.cancel_packet(rng.getrandbits(31), rng.getrandbits(32)))
        assert raw.read_until_closed(5) == [] and raw.buffer == b""
        return "cancel ignored"


ATTACKS = [oversized_startup, lying_startup_length, garbage, one_byte_a_second, silent,
           wrong_password_or_unknown_user, malformed_scram, unknown_message_type, over_max_message_size,
           bad_bind, copy_data_outside_copy, vanishing_mid_message, pipelines_and_never_reads, wrong_cancel_key]


class Attacker(threading.Thread):
    def __init__(self, proxy, attack, stop: threading.Event, seed: int):
        super().__init__(name=attack.__name__, daemon=True)
        self.proxy, self.attack, self.stop, self.rng = proxy, attack, stop, random.Random(seed)
        self.outcomes: Counter = Counter()
        self.failure: str | None = None

    def run(self):
        while not self.stop.is_set() and self.failure is None:
            try:
                self.outcomes[self.attack(self.proxy, self.rng)] += 1
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.failure = f"{type(e).__name__}: {e}"


# -- the load --------------------------------------------------------------------------------------

def start_pgbench(proxy, tmp_path, seconds: int) -> subprocess.Popen:
    script = tmp_path / "load.sql"
    script.write_text(PGBENCH_SCRIPT)
    who = proxy.login("app")
    env = dict(os.environ, PGPASSWORD=who.password, PGCONNECT_TIMEOUT="10", PGAPPNAME="under-attack")
    argv = ["pgbench", "-h", proxy.host, "-p", str(proxy.port), "-U", who.user, "-n", "-c", str(PGBENCH_CLIENTS),
            "-j", "2", "-T", str(seconds), "-M", "extended", "-f", str(script), who.database]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def settled_rss(pid: int, seconds: float = 3.0) -> int:
    """The lowest RSS seen over `seconds` (what is held, not a moment's working buffers)."""
    lowest = pgharness.rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        lowest = min(lowest, pgharness.rss_kib(pid))
    return lowest


def flood_to_the_limit(proxy) -> int:
    """Logged-in clients opened until pgsluice refuses one with 53300; returns how many got in."""
    opened = []
    try:
        for _ in range(MAX_CLIENTS + 10):
            try:
                opened.append(login(proxy, "trust"))
            except pgharness.PgError as e:
                assert e.sqlstate == "53300", e.fields
                assert f"max_client_connections {MAX_CLIENTS}" in e.message, e.fields
                return len(opened)
        raise AssertionError(f"{len(opened)} clients got in past max_client_connections {MAX_CLIENTS}")
    finally:
        for raw in opened:
            raw.close()


def test_every_attack_at_once_under_pgbench_load(proxy, tmp_path):
    pid = proxy.proxy.proc.pid
    bench = start_pgbench(proxy, tmp_path, seconds=ATTACK_SECONDS + 20)
    try:
        time.sleep(3)  # pgbench's connections in, the pool warm
        assert bench.poll() is None, bench.communicate()[0]
        before = settled_rss(pid)

        stop = threading.Event()
        attackers = [Attacker(proxy, attack, stop, seed) for seed, attack in enumerate(ATTACKS)]
        for attacker in attackers:
            attacker.start()
        time.sleep(ATTACK_SECONDS)
        stop.set()
        for attacker in attackers:
            attacker.join(30)
        stuck = [a.name for a in attackers if a.is_alive()]
        assert not stuck, f"attackers still running: {stuck}"
        failures = {a.name: a.failure for a in attackers if a.failure}
        assert not failures, f"attacks that were not refused as they should be: {failures}"
        outcomes = {a.name: dict(a.outcomes) for a in attackers}
        assert all(sum(o.values()) > 0 for o in outcomes.values()), outcomes

        admitted = flood_to_the_limit(proxy)
        # pgbench's clients hold their places: the flood got the rest, give or take the clients
        # that were still leaving when it began.
        assert MAX_CLIENTS - PGBENCH_CLIENTS - 5 <= admitted <= MAX_CLIENTS - PGBENCH_CLIENTS, admitted

        time.sleep(2)  # closed clients leave, the daemon's periodic work runs
        after = settled_rss(pid)
        assert bench.poll() is None, "pgbench ended before the attacks did"
        print(f"RSS before {before} KiB, after {after} KiB; outcomes {outcomes}")
        assert after <= before * 1.10, (f"pgsluice's RSS went from {before} KiB to {after} KiB "
                                        f"(more than 10 %) after the attacks; outcomes {outcomes}")
    finally:
        output = bench.communicate(timeout=ATTACK_SECONDS + 120)[0]
    assert bench.returncode == 0, output
    assert "aborted" not in output, output
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", output, re.M), output
    processed = int(re.search(r"^number of transactions actually processed: (\d+)$", output, re.M).group(1))
    assert processed > 0, output
    assert proxy.proxy.alive()
    with closing(login(proxy, "app")) as raw:
        assert pgharness.rows_of(raw.query("select 'still serving'")) == [["still serving"]]
