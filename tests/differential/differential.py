#!/usr/bin/env python3
"""The differential test of pgsluice (DESIGN §9, issue 14 item 6)
==================================================================

Many clients run seeded random protocol sequences through pgsluice, over a pool smaller than the
client count, at the same time; every client's replies are compared, message by message, with the
replies to the same sequence run on its own direct connection to Postgres. Example tests show that a
feature works; this shows that no client ever gets an answer that is not its own.

Run it
------
    tests/differential/run.sh                       # 30 clients, pool 6, transaction mode, seed 1
    tests/differential/run.sh --mode session --seed 7 --clients 40 --pool 5 --messages 300
    tests/differential/run.sh --features all,-listen     # or a list: --features named,flush,errors
    tests/differential/run.sh --features default,+after_error --rounds 5   # the CI set and one more
    tests/differential/run.sh --long                # minutes, >= 200 000 client messages, both modes
    tests/differential/run.sh --replay build/differential/repro-....json   # a saved reproduction
    tests/differential/run.sh --known-issues        # the reproductions of what it found (known_issues.py)
    tests/differential/run.sh --list-features       # which features CI runs in which pool mode, and why not
    tests/differential/run.sh --coalesce            # coalescing on: 100 clients, pool 6, the corpus in rounds
    tests/differential/run.sh --coalesce --long     # minutes: seeds, max_batch/window, transaction and statement mode
    tests/differential/run.sh --coalesce --list-corpus

The binary is $PGSLUICE_BIN or build/asan/pgsluice (then release, debug). It starts its own Postgres
(tests/harness/pgharness.py: initdb in a temp dir, a free port) and a fresh pgsluice for every
concurrent run. It prints how many client messages were compared and how many differences were found,
and exits 1 on any difference (2 on a usage or set-up error). In CI it runs through
tests/integration/test_differential.py (a short version, a few fixed seeds, in the pool mode of
PGSLUICE_TEST_MODE, plus the fixed known issues as regression scripts, plus one coalescing run in the
transaction pass).

The modules: frontend.py (the messages a client sends), statements.py (the statement texts),
sequences.py (the features and the generator), replies.py (running a sequence on a connection,
recording and normalizing the replies, comparing), shrink.py (delta debugging), known_issues.py
(what it found, as deterministic scripts), corpus.py, rounds.py and coalesce.py (the coalescing mode,
below), and this one (tables, runs, scenarios, the command line).

With coalescing on (--coalesce; DESIGN §4, issue 15)
----------------------------------------------------
The service gets `coalesce: {enabled: true, max_batch: 256, window: 0}` (--max-batch, --window), 100
clients by default share a pool of 6, and instead of random sequences they send the statements of
corpus.py (lookups by int4/int8/text/uuid/numeric/date keys, an ICU case-insensitive collation, joins,
ORDER BY, LIMIT/OFFSET, aggregates over no rows, 10 000 rows, NULL and invalid parameters, and
ineligible statements: a view, FOR UPDATE/SHARE, nextval, volatile functions, a data-modifying CTE,
TABLESAMPLE, SELECT INTO) in rounds: all clients wait at a barrier, then send a request of the same
statement at once, with the same or different values, so batches form. coalesce.py's docstring has the
details and the two comparison rules it adds (rows of a statement without ORDER BY as a multiset,
nextval's column only for NULL). No shrinking there: a failure names the seed, the round and the
request, and `--only-rounds N` reruns that round alone. The feature `coalesce` (opt-in) turns
coalescing on for the random sequences too; --coalesce --long runs both.

What a run does
---------------
1. sequences.py makes each client's sequence from (seed, client index, features, message budget):
   named and unnamed Parse (texts per client and texts shared between clients, the same text with
   other parameter types), Bind with text and binary parameters and text/binary/mixed result formats,
   Describe S/P, Execute with row limits and PortalSuspended then more Executes, Close S/P, Sync,
   Flush (pipelines ending in Flush, read at once, the Sync later), several groups and Syncs in one
   write, errors mid-pipeline, multi-statement simple queries, transactions over several Syncs,
   42P05, DEALLOCATE, DISCARD ALL, SET/RESET/SHOW, SQL PREPARE/EXECUTE, COPY, LISTEN, temp tables,
   advisory locks, WITH HOLD cursors, short sleeps. Every client writes only its own table diff_c<k>;
   shared texts only read diff_shared or constants; nothing reads the clock or a pid.
2. The tables are reset; each client runs its sequence on its own direct connection to Postgres (all
   at once: they cannot see each other, so alone or together gives the same replies — --self-check
   verifies this) and every reply is recorded.
3. The tables are reset again; a fresh pgsluice starts; all clients run at once through it, with the
   sleeps; every reply is recorded. pgsluice must then exit cleanly with no sanitizer report.
4. The recordings are compared per client (replies.py says what is normalized and why: only
   BackendKeyData, the order and repetition of ParameterStatus, error positions and source locations,
   the authentication exchange). A reply that does not come in time (a Flush not relayed, a hang) is a
   difference too: "<TIMEOUT>" instead of the message.
5. On a difference: the seed, the client, the first differing reply with context, then a shrunk
   sequence: delta debugging drops steps, then single messages, of the failing client while it still
   fails (the same difference: the same message kinds and SQLSTATEs), re-running the whole scenario
   (the other clients keep their sequences; if the failure reproduces with the client alone through
   pgsluice, alone). Bounded by --shrink-seconds and --shrink-attempts. The reproduction is saved as
   JSON under build/differential/ for --replay. A hang shrinks with 5 s reply timeouts.

Features are switched with --features (sequences.FEATURES lists them). DEFAULT_FEATURES below are the
ones CI runs, per pool mode: those that pass against the current build. Each one left out names the
known_issues.py reproductions (small deterministic scripts, with expected and actual replies) of the
differences it shows. A new finding: shrink it, write its script into known_issues.py (a fixed
interleaving of a few clients if it needs others, see run_script), leave its feature out; when it is
fixed, mark it FIXED there (it then runs in CI as a regression script) and turn the feature back on.

Limits worth knowing: the generator's model of the session is rough, so with `errors` some failures
it did not plan are followed by more messages before the Sync (what `after_error` does on purpose);
sequences are fixed before they run, so nothing depends on timing except what pgsluice does with the
interleaving; and the direct runs cannot show cross-client effects of features that are shared on
purpose (NOTIFY between clients), so every client only talks to itself.

Python 3 standard library only (plus tests/harness).
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "harness"))

import pgharness  # noqa: E402
from replies import Client, Recording, Session, first_difference, show_difference, signature  # noqa: E402
from shrink import Shrinker, ShrinkResult  # noqa: E402
from sequences import FEATURES, Step, epilogue, generate, parse_features  # noqa: E402

# The features CI runs, per pool mode: every feature that passes against the current build. Each one
# left out names the known_issues.py reproductions of what it shows; turn it back on when they are fixed.
ALL_FEATURES = frozenset(FEATURES)
KNOWN_FAILING: dict[str, dict[str, str]] = {
    "session": {
        "reset_all": "reset_all_loses_startup_application_name, reset_application_name_loses_startup_value",
        "discard": "discard_all_loses_startup_application_name",
    },
    "transaction": {
        "introspect": "prepared_statements_view_shows_other_clients",
        "suspended_writes": "injected_parse_makes_suspended_writes_visible",
    },
}
# Features that change pgsluice's configuration rather than the sequences, run only when asked for
# (--features default,+coalesce; --coalesce --long runs them too).
OPT_IN = {"coalesce": "opt-in: the corpus rounds of --coalesce are the coalescer's differential test"}
DEFAULT_FEATURES = {mode: ALL_FEATURES - set(failing) - set(OPT_IN) for mode, failing in KNOWN_FAILING.items()}

USER, PASSWORD, DATABASE = "app", pgharness.password_for("app"), "app"
REPORT_DIR = pgharness.REPO_ROOT / "build" / "differential"


@dataclass(frozen=True)
class Scenario:
    seed: int
    clients: int = 30
    pool: int = 6
    mode: str = "transaction"
    messages: int = 150            # client messages per client (about)
    features: frozenset = ALL_FEATURES

    def sequences(self) -> dict[int, list[Step]]:
        return {k: generate(self.seed, k, self.features, self.messages) for k in range(self.clients)}

    def describe(self) -> str:
        default = DEFAULT_FEATURES.get(self.mode, ALL_FEATURES)
        if self.features == default:
            feats = "default"
        else:
            missing = sorted(ALL_FEATURES - self.features)
            feats = "all" + "".join(f",-{f}" for f in missing) if len(missing) < len(ALL_FEATURES) / 2 else \
                ",".join(sorted(self.features))
        return (f"--seed {self.seed} --clients {self.clients} --pool {self.pool} --mode {self.mode} "
                f"--messages {self.messages} --features {feats}")


@dataclass
class Difference:
    client: int
    text: str                    # first differing reply with context
    signature: tuple | None = None
    shrunk: str = ""             # the shrunk sequence and its replies, when shrinking ran
    repro_file: str = ""


@dataclass
class Outcome:
    scenario: Scenario
    messages: int = 0
    differences: list[Difference] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"differential {self.scenario.describe()}: {self.messages} client messages compared, "
                 f"{len(self.differences)} client(s) with differences ({self.seconds:.1f} s)"]
        for d in self.differences:
            who = "pgsluice" if d.client < 0 else f"client {d.client}"
            lines.append(f"--- seed {self.scenario.seed}, {who}: first difference\n{d.text}")
            if d.shrunk:
                lines.append(d.shrunk)
            if d.repro_file:
                lines.append(f"  saved: {d.repro_file} (tests/differential/run.sh --replay {d.repro_file})")
        return "\n".join(lines)


class Lab:
    """A Postgres with the differential tables, and the way to run sequences directly and through pgsluice."""

    def __init__(self, pg: pgharness.LocalPostgres, binary: str | None = None, log=print):
        self.pg = pg
        self.binary = binary
        self.log = log
        self.tables = 0
        self.reply_timeout = 20.0  # through pgsluice: longer than any wait for a pool connection here
        self.tamper = None  # (client, steps) -> steps, applied to the sequences sent through pgsluice (self-test)
        # The pooled modes' notifications come from pgsluice's listener connection (replies.py): set
        # by each run for its pool mode, for the direct runs as well.
        self.async_notifications = False

    # -- the database ---------------------------------------------------------------------------------
    def setup(self, clients: int) -> None:
        if clients <= self.tables:
            return
        statements = [
            "CREATE TABLE IF NOT EXISTS diff_shared (id int PRIMARY KEY, name text NOT NULL, val numeric(10,2), "
            "f float8, flag bool, ts timestamptz, tags int[])",
            "INSERT INTO diff_shared SELECT g, 'name-' || g, g * 1.25, g / 3.0::float8, g % 3 = 0, "
            "timestamptz '2024-01-01 00:00:00+00' + g * interval '7 hours', ARRAY[g, g * 2] "
            "FROM generate_series(1, 50) g ON CONFLICT DO NOTHING",
        ]
        statements += [f"CREATE TABLE IF NOT EXISTS diff_c{k} (id int PRIMARY KEY, note text, n int)"
                       for k in range(self.tables, clients)]
        self.pg.sql("; ".join(statements), user=USER, db=DATABASE)
        self.tables = clients

    def reset(self, clients: int) -> None:
        self.setup(clients)
        self.wait_idle()
        names = ", ".join(f"diff_c{k}" for k in range(clients))
        inserts = "; ".join(f"INSERT INTO diff_c{k} SELECT g, 'init-{k}-' || g, g * {k + 1} FROM generate_series(1, 5) g"
                            for k in range(clients))
        self.pg.sql(f"TRUNCATE {names}; {inserts}", user=USER, db=DATABASE)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the sessions of earlier runs are gone (their locks, temp tables, listeners with them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app' "
                               "AND pid <> pg_backend_pid()", db=DATABASE)[0][0]
            if left == 0:
                return
            time.sleep(0.05)

    # -- runs ---------------------------------------------------------------------------------------
    def _run_clients(self, host: str, port: int, sequences: dict[int, list[Step]], sleeps: bool,
                     reply_timeout: float, first_reply_timeout: float,
                     startup: dict[int, dict] | None = None) -> dict[int, Recording]:
        results: dict[int, Recording] = {}
        barrier = threading.Barrier(len(sequences)) if sequences else None

        def one(k: int, steps: list[Step]) -> None:
            client = Client(host, port, USER, PASSWORD, DATABASE, startup_parameters(k, startup),
                            reply_timeout, first_reply_timeout, self.async_notifications)
            try:
                barrier.wait(timeout=60)
            except threading.BrokenBarrierError:
                pass
            results[k] = client.run(steps, sleeps)

        threads = [threading.Thread(target=one, args=(k, s), name=f"diff-client-{k}", daemon=True)
                   for k, s in sequences.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def direct(self, sequences: dict[int, list[Step]], clients: int,
               startup: dict[int, dict] | None = None) -> dict[int, Recording]:
        """Each sequence on its own direct connection to Postgres (at once: they cannot see each other)."""
        self.reset(clients)
        return self._run_clients(self.pg.host, self.pg.port, sequences, sleeps=False,
                                 reply_timeout=30.0, first_reply_timeout=30.0, startup=startup)

    def proxied(self, scenario: Scenario, sequences: dict[int, list[Step]]) -> tuple[dict[int, Recording], str]:
        """All sequences at once through a fresh pgsluice. Returns the recordings and a problem of pgsluice
        itself ("" if it exited cleanly with no sanitizer report)."""
        if self.tamper is not None:
            sequences = {k: self.tamper(k, steps) for k, steps in sequences.items()}
        self.reset(scenario.clients)
        config = pgharness.base_config(self.pg, pgharness.free_port(), mode=scenario.mode,
                                       max_connections=scenario.pool, acquire_timeout="300s", min_connections=0)
        config["log"]["level"] = os.environ.get("PGSLUICE_TEST_LOG_LEVEL", "warn")
        if "coalesce" in scenario.features:
            config["services"]["app"]["coalesce"] = {"enabled": True, "max_batch": 256, "window": 0}
        proxy = pgharness.Pgsluice(config, binary=self.binary).start()
        problem = ""
        try:
            # In session mode a client waits for a whole earlier session to end before its first reply.
            first = 320.0 if scenario.mode == "session" else 60.0
            results = self._run_clients("127.0.0.1", proxy.port, sequences, sleeps=True,
                                        reply_timeout=self.reply_timeout, first_reply_timeout=first)
        finally:
            code = proxy.stop(timeout=30)
            reports = proxy.sanitizer_reports()
            if reports or code != 0:
                tail = "\n".join(proxy.log_text().splitlines()[-40:])
                problem = (f"pgsluice exited with {code}; sanitizer reports: {reports[:5]}\n"
                           f"  log tail:\n{tail}")
            keep_log(proxy)
            proxy.cleanup()
        return results, problem


def keep_log(proxy) -> None:
    """With PGSLUICE_KEEP_LOG=FILE (and PGSLUICE_TEST_LOG_LEVEL=trace, say), pgsluice's log is kept there."""
    target = os.environ.get("PGSLUICE_KEEP_LOG")
    if target:
        shutil.copyfile(proxy.log_path, target)


def startup_parameters(k: int, startup: dict[int, dict] | None = None) -> dict:
    """Client k's startup packet parameters: application_name diff<k>, and what a script adds."""
    return {"application_name": f"diff{k}", **((startup or {}).get(k, {}))}


def run_script(lab: Lab, mode: str, pool: int, script: list[tuple[int, Step]], reply_timeout: float = 5.0,
               startup: dict[int, dict] | None = None) -> tuple[dict[int, Recording], dict[int, Recording], str]:
    """A fixed interleaving, for reproductions that need other clients (known_issues.py): the steps run
    in the script's order from one thread, each client on its own connection through a fresh pgsluice
    (all connections opened first, in client order). Each client's steps also run on their own direct
    connection. Returns the direct and the proxied recordings and pgsluice's own problem, if any."""
    lab.async_notifications = mode != "session"
    clients = sorted({k for k, _ in script})
    per_client = {k: [step for c, step in script if c == k] for k in clients}
    table_count = max(clients) + 1
    direct = lab.direct(per_client, table_count, startup)
    lab.reset(table_count)
    config = pgharness.base_config(lab.pg, pgharness.free_port(), mode=mode, max_connections=pool,
                                   acquire_timeout="300s", min_connections=0)
    config["log"]["level"] = os.environ.get("PGSLUICE_TEST_LOG_LEVEL", "warn")
    proxy = pgharness.Pgsluice(config, binary=lab.binary).start()
    problem = ""
    try:
        sessions = {k: Session(Client("127.0.0.1", proxy.port, USER, PASSWORD, DATABASE,
                                      startup_parameters(k, startup), reply_timeout, reply_timeout,
                                      lab.async_notifications))
                    for k in clients}
        for k in clients:
            sessions[k].open()
        done = {k: 0 for k in clients}
        for k, step in script:
            sessions[k].step(done[k], step, sleeps=True)
            done[k] += 1
        for k in clients:
            for step in epilogue():
                sessions[k].step(done[k], step, sleeps=True)
                done[k] += 1
        proxied = {k: sessions[k].close() for k in clients}
    finally:
        code = proxy.stop(timeout=30)
        if proxy.sanitizer_reports() or code != 0:
            problem = f"pgsluice exited with {code}; sanitizer reports: {proxy.sanitizer_reports()[:5]}"
        keep_log(proxy)
        proxy.cleanup()
    return direct, proxied, problem


def compare(direct: dict[int, Recording], proxied: dict[int, Recording],
            sequences: dict[int, list[Step]]) -> list[Difference]:
    differences = []
    for k in sorted(proxied):
        if direct[k].aborted:
            # The expectation itself is incomplete (a generator or harness problem, not pgsluice's).
            differences.append(Difference(k, f"  the direct run on Postgres stopped early: {direct[k].aborted}"))
            continue
        index = first_difference(direct[k], proxied[k])
        if index is not None:
            differences.append(Difference(k, show_difference(direct[k], proxied[k], index, sequences[k]),
                                          signature(direct[k], proxied[k])))
    return differences


def run_scenario(lab: Lab, scenario: Scenario, shrink: bool = True, shrink_seconds: float = 300,
                 shrink_attempts: int = 150, save: bool = True) -> Outcome:
    started = time.monotonic()
    lab.async_notifications = scenario.mode != "session"
    sequences = scenario.sequences()
    direct = lab.direct(sequences, scenario.clients)
    proxied, problem = lab.proxied(scenario, sequences)
    outcome = Outcome(scenario, messages=sum(r.sent for r in proxied.values()))
    outcome.differences = compare(direct, proxied, sequences)
    if problem:
        outcome.differences.append(Difference(-1, problem))
    if shrink:
        shrink_deadline = time.monotonic() + shrink_seconds
        for d in [d for d in outcome.differences if d.client >= 0][:2]:  # the first two failing clients
            if time.monotonic() >= shrink_deadline:
                break
            result = Shrinker(lab, scenario, sequences, d.client, shrink_deadline, shrink_attempts,
                              d.signature).run()
            d.shrunk = result.text
            if save and result.steps is not None:
                d.repro_file = save_repro(scenario, d.client, result)
    outcome.seconds = time.monotonic() - started
    return outcome


def save_repro(scenario: Scenario, client: int, result: ShrinkResult) -> str:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = REPORT_DIR / f"repro-{scenario.mode}-seed{scenario.seed}-c{client}.json"
    path.write_text(json.dumps({
        "scenario": {"seed": scenario.seed, "clients": scenario.clients, "pool": scenario.pool, "mode": scenario.mode,
                     "messages": scenario.messages, "features": sorted(scenario.features)},
        "client": client, "alone": result.alone,
        "steps": [s.to_json() for s in result.steps],
        "readable": [s.describe() for s in result.steps],
        "expected": result.expected, "actual": result.actual,
    }, indent=1) + "\n")
    return str(path)


def replay(lab: Lab, path: str) -> int:
    data = json.loads(Path(path).read_text())
    sc = data["scenario"]
    scenario = Scenario(sc["seed"], sc["clients"], sc["pool"], sc["mode"], sc["messages"], frozenset(sc["features"]))
    k = data["client"]
    steps = [Step.from_json(s) for s in data["steps"]]
    lab.async_notifications = scenario.mode != "session"
    others = {} if data["alone"] else {j: s for j, s in scenario.sequences().items() if j != k}
    direct = lab.direct({k: steps}, scenario.clients)[k]
    proxied, problem = lab.proxied(scenario, {**others, k: steps})
    print(f"replay of client {k} ({len(steps)} steps, {'alone' if data['alone'] else 'with the others'}), "
          f"{scenario.describe()}")
    for i, s in enumerate(steps):
        print(f"  step {i}: {s.describe()}")
    index = first_difference(direct, proxied[k])
    if index is None and not problem:
        print("no difference")
        return 0
    if index is not None:
        print(show_difference(direct, proxied[k], index, steps, context=50))
    if problem:
        print(problem)
    return 1


# -- command line --------------------------------------------------------------------------------------

def known_issues_report(lab: Lab, keys: list[str]) -> int:
    import known_issues

    issues = [i for i in known_issues.ISSUES if not keys or i.key in keys]
    unknown = set(keys) - {i.key for i in known_issues.ISSUES}
    if unknown:
        print(f"unknown issue(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    shown = gone = 0
    for issue in issues:
        for mode in issue.modes:
            difference = known_issues.check(lab, issue, mode)
            status = "REPRODUCED" if difference else "no longer reproduces"
            status += " (marked fixed)" if known_issues.is_fixed(issue, mode) else " (open)"
            shown += bool(difference)
            gone += not difference
            print(f"=== {issue.key} [{mode} mode, pool {issue.pool}, feature {issue.feature}]: {status}")
            print(f"  {issue.title}")
            print(known_issues.describe_script(issue))
            if difference:
                print(difference)
    print(f"known issues: {shown} reproduced, {gone} no longer reproduce")
    return 0


def self_check(lab: Lab, scenario: Scenario) -> list[str]:
    """The test's own premise: each sequence gives the same replies run alone and among the others."""
    sequences = scenario.sequences()
    lab.async_notifications = scenario.mode != "session"
    together = lab.direct(sequences, scenario.clients)
    problems = []
    for k in sorted(sequences)[:5]:
        alone = lab.direct({k: sequences[k]}, scenario.clients)[k]
        index = first_difference(alone, together[k])
        if index is not None:
            problems.append(f"client {k} differs alone vs together on Postgres itself:\n"
                            + show_difference(alone, together[k], index, sequences[k]))
    return problems


def coalesce_main(args) -> int:
    """--coalesce: the corpus rounds of coalesce.py; with --long also random sequences with the coalesce
    feature, for minutes, varying max_batch, window and the pool mode."""
    import coalesce

    if args.list_corpus:
        print(coalesce.list_corpus())
        return 0
    clients = args.clients or 100
    mode = args.mode or ("both" if args.long else "transaction")
    modes = ["transaction", "statement"] if mode == "both" else [mode]
    if "session" in modes:
        print("note: coalescing is active only in transaction and statement mode; in session mode every "
              "request passes through", file=sys.stderr)
    only = frozenset(int(r) for r in args.only_rounds.split(",") if r.strip())
    binary = str(pgharness.find_binary())
    print(f"pgsluice: {binary}")
    started = time.monotonic()
    total_messages, failures, problems, runs = 0, 0, 0, 0
    batches = [(args.max_batch, args.window)] if not args.long else [(args.max_batch, args.window), (16, "0"),
                                                                       (256, "2ms"), (2, "0")]
    with pgharness.LocalPostgres(max_connections=max(100, clients * 2 + 60)) as pg:
        runner = coalesce.Runner(pg, binary)
        if args.self_check:
            found = coalesce.self_check(runner, coalesce.Scenario(args.seed, clients, args.pool, modes[0],
                                                                  args.coalesce_rounds, only_rounds=only))
            if found:
                print("\n".join(found[:20]))
                return 2
            print("self-check: the requests give the same replies alone and in rounds together on Postgres")
        lab = Lab(pg, binary) if args.long else None
        seed = args.seed
        while True:
            for m in modes:
                max_batch, window = batches[runs % len(batches)]
                scenario = coalesce.Scenario(seed, clients, args.pool, m, args.coalesce_rounds, max_batch, window, only,
                                             enabled=not args.coalescer_off)
                outcome = coalesce.run_scenario(runner, scenario)
                runs += 1
                total_messages += outcome.messages
                failures += len(outcome.differences)
                problems += len(outcome.corpus_problems)
                print(outcome.report(), flush=True)
                if outcome.differences:
                    path = coalesce.save_failure(outcome, REPORT_DIR / f"coalesce-{m}-seed{seed}.json")
                    print(f"  saved: {path}; rerun: tests/differential/run.sh {scenario.describe()}")
                if lab is not None and m == "transaction":
                    # The random sequences too, with the eligible reads among them coalesced.
                    features = DEFAULT_FEATURES[m] | {"coalesce"}
                    sequence_run = run_scenario(lab, Scenario(seed, 40, args.pool, m, 400, features),
                                                shrink=not args.no_shrink, shrink_seconds=args.shrink_seconds,
                                                shrink_attempts=args.shrink_attempts)
                    total_messages += sequence_run.messages
                    failures += len(sequence_run.differences)
                    print(sequence_run.report(), flush=True)
            seed += 1
            if args.long:
                if total_messages >= args.min_messages and time.monotonic() - started >= args.min_seconds:
                    break
            elif seed - args.seed >= args.rounds:
                break
    print(f"TOTAL: {total_messages} client messages compared in {runs} coalescing run(s) "
          f"({time.monotonic() - started:.0f} s), {failures} difference(s), {problems} corpus problem(s)")
    return 1 if failures else 2 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients (default 30; 40 with --long)")
    parser.add_argument("--pool", type=int, default=6, help="server connections of the service (default 6)")
    parser.add_argument("--mode", choices=["transaction", "session", "statement", "both"], default=None,
                        help="pool mode (default transaction; both with --long; with --coalesce, both = "
                             "transaction and statement)")
    parser.add_argument("--messages", type=int, default=None, help="client messages per client (default 150; 400 with --long)")
    parser.add_argument("--features", default=None,
                        help="'all', 'default', a list; '-name' removes (e.g. all,-listen). See --list-features")
    parser.add_argument("--rounds", type=int, default=1, help="scenarios to run, seeds seed, seed+1, ...")
    parser.add_argument("--long", action="store_true", help="run for minutes and at least 200 000 client messages")
    parser.add_argument("--min-messages", type=int, default=200_000, help="with --long (default 200000)")
    parser.add_argument("--min-seconds", type=float, default=180, help="with --long (default 180)")
    parser.add_argument("--no-shrink", action="store_true")
    parser.add_argument("--shrink-seconds", type=float, default=300)
    parser.add_argument("--shrink-attempts", type=int, default=150)
    parser.add_argument("--self-check", action="store_true",
                        help="first check on Postgres alone that sequences give the same replies alone and together")
    parser.add_argument("--replay", metavar="FILE", help="run a reproduction saved by an earlier failure")
    parser.add_argument("--list-features", action="store_true")
    parser.add_argument("--known-issues", nargs="*", metavar="KEY",
                        help="run the reproductions of known_issues.py (all, or those named) and say which still show")
    group = parser.add_argument_group("coalescing (coalesce.py)")
    group.add_argument("--coalesce", action="store_true",
                       help="the corpus rounds through a service with coalescing on (default 100 clients, pool 6)")
    group.add_argument("--coalesce-rounds", type=int, default=0,
                       help="rounds of requests per scenario (default: two passes over the corpus, and every "
                            "fifth round a mixed one)")
    group.add_argument("--max-batch", type=int, default=256, help="coalesce.max_batch (default 256)")
    group.add_argument("--window", default="0", help="coalesce.window (default 0)")
    group.add_argument("--only-rounds", default="", metavar="LIST",
                       help="only these rounds (comma list), as a failure report names them")
    group.add_argument("--list-corpus", action="store_true", help="print the corpus and exit")
    group.add_argument("--coalescer-off", action="store_true",
                       help="the same rounds with coalesce.enabled false: a baseline of pgsluice without the coalescer")
    args = parser.parse_args(argv)
    # A SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the throwaway Postgres and pgsluice are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.list_features:
        print("feature          (s = on in CI in session mode, t = in transaction mode)")
        for name, text in FEATURES.items():
            marks = "".join(m[0] if name in DEFAULT_FEATURES[m] else "-" for m in ("session", "transaction"))
            print(f"  {marks} {name:17} {text}")
            for m in ("session", "transaction"):
                if name in KNOWN_FAILING[m]:
                    print(f"       off in {m} mode: {KNOWN_FAILING[m][name]}")
            if name in OPT_IN:
                print(f"       {OPT_IN[name]}")
        return 0
    if args.coalesce or args.list_corpus:
        return coalesce_main(args)
    if args.mode == "statement":
        parser.error("--mode statement is for --coalesce (the sequences use transaction blocks)")
    clients = args.clients or (40 if args.long else 30)
    messages = args.messages or (400 if args.long else 150)
    mode = args.mode or ("both" if args.long else "transaction")
    if args.pool >= clients:
        print(f"note: --pool {args.pool} is not smaller than --clients {clients}", file=sys.stderr)
    modes = ["transaction", "session"] if mode == "both" else [mode]
    try:
        features = {m: parse_features(args.features, DEFAULT_FEATURES[m]) for m in modes}
    except ValueError as e:
        parser.error(str(e))

    binary = str(pgharness.find_binary())
    print(f"pgsluice: {binary}")
    total_messages, failures, rounds = 0, 0, 0
    started = time.monotonic()
    with pgharness.LocalPostgres(max_connections=max(100, clients * 2 + 20)) as pg:
        lab = Lab(pg, binary)
        if args.replay:
            return replay(lab, args.replay)
        if args.known_issues is not None:
            return known_issues_report(lab, args.known_issues)
        if args.self_check:
            problems = self_check(lab, Scenario(args.seed, clients, args.pool, modes[0], messages, features[modes[0]]))
            if problems:
                print("\n".join(problems))
                return 2
            print("self-check: sequences give the same replies alone and together on Postgres")
        seed = args.seed
        while True:
            for m in modes:
                scenario = Scenario(seed, clients, args.pool, m, messages, features[m])
                outcome = run_scenario(lab, scenario, shrink=not args.no_shrink, shrink_seconds=args.shrink_seconds,
                                       shrink_attempts=args.shrink_attempts)
                total_messages += outcome.messages
                failures += len(outcome.differences)
                print(outcome.report(), flush=True)
            rounds += 1
            seed += 1
            if args.long:
                if total_messages >= args.min_messages and time.monotonic() - started >= args.min_seconds:
                    break
            elif rounds >= args.rounds:
                break
    print(f"TOTAL: {total_messages} client messages compared in {rounds} round(s) "
          f"({time.monotonic() - started:.0f} s), {failures} difference(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
