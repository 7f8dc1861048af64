"""The differential test with coalescing on (DESIGN §4, issue 15): `tests/differential/run.sh --coalesce`.

Many clients (100 by default) send the statements of corpus.py through a pgsluice whose service has
`coalesce: {enabled: true}` over a small pool (6), in rounds: in each round the clients wait at a
barrier, then all send a request of the same corpus entry at once (or, in a mixed round, of one of a
few entries) and read the replies, so that requests with the same statement and the same or different
parameter values are in flight together and batches form. Every client's replies are compared, message
by message, with the replies to the same requests sent on its own direct connection to Postgres.

    tests/differential/run.sh --coalesce                  # 100 clients, pool 6, seed 1, 2 passes over the corpus
    tests/differential/run.sh --coalesce --long           # minutes: seeds, max_batch/window/pool mode varied
    tests/differential/run.sh --coalesce --seed 3 --only-rounds 17,18   # the rounds a failure named
    tests/differential/run.sh --coalesce --self-check     # the premise, on Postgres alone
    tests/differential/run.sh --coalesce --coalescer-off  # the same rounds with coalesce.enabled false
    tests/differential/run.sh --coalesce --list-corpus

A request of a round is built (rounds.py) from the round's choices, which most clients share (so their requests
have the same coalescing key) and some change: the protocol form (a named statement, parsed once per
session and then only bound; the unnamed statement, parsed each time or bound again without a Parse;
a simple Query with the values as literals; and ineligible forms: inside BEGIN/COMMIT, Execute with a
row limit, two groups before one Sync, Flush then Sync), Describe S and/or P, Parse with the parameter
types declared, left to the server, or declared as another type (int8 for an int4 key), parameters in
text, binary or mixed formats, result formats none/all text/all binary/per column. Values come from a
pool of 1 to all-clients distinct tuples per round (identical requests and different ones; the same key
twice in one batch); in a quarter of the rounds the pool also holds invalid values. The clients differ in
their startup parameters (corpus.STARTUP: DateStyle, TimeZone, extra_float_digits, application_name), and
SET rounds change them on the way.

Compared as the harness compares every sequence (replies.py: BackendKeyData, ParameterStatus order,
error positions and source locations are not compared), plus two rules of the corpus: the rows of a
statement without ORDER BY are compared as a multiset, and masked columns (nextval) only for NULL.

The direct run is checked too (a corpus problem exits 2, not 1): an error no entry expects (a typo in a
statement, a wrong column count), a RowDescription with another column count than the entry says.

Python 3 standard library only (plus tests/harness).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import struct
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import corpus
import pgharness
from corpus import CORPUS
from replies import Client, Entry as Reply, Recording, Session, first_difference, show_difference, signature
from rounds import ELIGIBLE_FORMS, ClientPlan, Round, Scenario, plan
from sequences import epilogue

USER, PASSWORD, DATABASE = "app", pgharness.password_for("app"), "app"

# -- running ----------------------------------------------------------------------------------------

class Runner:
    """Runs the plans on direct connections to Postgres and through a fresh pgsluice."""

    def __init__(self, pg: pgharness.LocalPostgres, binary: str | None = None):
        self.pg = pg
        self.binary = binary
        self.tamper = None  # (client, round, steps) -> steps sent through pgsluice (the test of the test)
        self.metrics: dict[str, float] = {}
        self.scans: dict[str, int] = {}  # "direct"/"pgsluice" -> scans of the corpus's tables on the server

    def setup(self) -> None:
        corpus.setup(self.pg, USER, DATABASE)

    def _run(self, host: str, port: int, scenario: Scenario, plans: dict[int, ClientPlan], barrier: bool,
             reply_timeout: float, tamper=None) -> dict[int, Recording]:
        corpus.reset(self.pg, scenario.clients, USER, DATABASE)
        results: dict[int, Recording] = {}
        gate = threading.Barrier(len(plans)) if barrier and plans else None
        opened = threading.Barrier(len(plans)) if plans else None

        def one(k: int, cp: ClientPlan) -> None:
            steps_by_round = {r: req.steps for r, req in cp.requests.items()}
            if tamper is not None:
                steps_by_round = {r: tamper(k, r, steps) for r, steps in steps_by_round.items()}
            session = Session(Client(host, port, USER, PASSWORD, DATABASE, cp.params, reply_timeout, 60.0))
            session.open()
            with contextlib.suppress(threading.BrokenBarrierError):
                opened.wait(timeout=120)
            index = 0
            together = gate is not None
            for r in range(scenario.round_count):
                if together:
                    try:
                        gate.wait(timeout=reply_timeout * 4)
                    except threading.BrokenBarrierError:
                        together = False
                for step in steps_by_round.get(r, []):
                    session.step(index, step, sleeps=False)
                    index += 1
            for step in epilogue():
                session.step(index, step, sleeps=False)
                index += 1
            results[k] = session.close()

        threads = [threading.Thread(target=one, args=(k, cp), name=f"coalesce-client-{k}", daemon=True)
                   for k, cp in plans.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def server_scans(self) -> int:
        """How many times the server scanned the corpus's tables so far (sequential and index scans), once the
        sessions of the last run have ended (a backend's counts reach the statistics when it exits)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            left = self.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                               params=(USER,), db=DATABASE)[0][0]
            if left == 0:
                break
            time.sleep(0.05)
        return int(self.pg.sql("SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0) "
                               "FROM pg_stat_user_tables WHERE relname LIKE 'coal\\_%'", db=DATABASE)[0][0])

    def direct(self, scenario: Scenario, plans: dict[int, ClientPlan], together: bool = False) -> dict[int, Recording]:
        before = self.server_scans()
        results = self._run(self.pg.host, self.pg.port, scenario, plans, barrier=together, reply_timeout=60.0)
        self.scans["direct"] = self.server_scans() - before
        return results

    def proxied(self, scenario: Scenario, plans: dict[int, ClientPlan]) -> tuple[dict[int, Recording], str]:
        config = pgharness.base_config(self.pg, pgharness.free_port(), mode=scenario.mode,
                                       max_connections=scenario.pool, acquire_timeout="300s", min_connections=0)
        config["services"]["app"]["coalesce"] = {"enabled": scenario.enabled, "max_batch": scenario.max_batch,
                                                 "window": scenario.window}
        config["log"]["level"] = os.environ.get("PGSLUICE_TEST_LOG_LEVEL", "warn")
        metrics_port = pgharness.free_port()
        config["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
        before = self.server_scans()
        proxy = pgharness.Pgsluice(config, binary=self.binary).start()
        problem = ""
        try:
            results = self._run("127.0.0.1", proxy.port, scenario, plans, barrier=True, reply_timeout=60.0,
                                tamper=self.tamper)
            self.metrics = scrape_coalescer_metrics(metrics_port)
        finally:
            code = proxy.stop(timeout=30)
            reports = proxy.sanitizer_reports()
            if reports or code != 0:
                tail = "\n".join(proxy.log_text().splitlines()[-40:])
                problem = f"pgsluice exited with {code}; sanitizer reports: {reports[:5]}\n  log tail:\n{tail}"
            target = os.environ.get("PGSLUICE_KEEP_LOG")
            if target:
                with contextlib.suppress(OSError):
                    os.replace(proxy.log_path, target)
            proxy.cleanup()
        self.scans["pgsluice"] = self.server_scans() - before
        return results, problem


def scrape_coalescer_metrics(port: int) -> dict[str, float]:
    """The coalescer's metric families (pgsluice_coalesce*), each summed over its labels; {} if none."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode(errors="replace")
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("pgsluice_coalesc"):
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name.endswith("_bucket"):
            continue
        with contextlib.suppress(ValueError, IndexError):
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


# -- comparing ----------------------------------------------------------------------------------------

def _mask_row(payload: bytes, masked: frozenset) -> bytes:
    """A DataRow with the masked columns' values replaced by '*' (NULL stays NULL)."""
    (count,) = struct.unpack("!H", payload[:2])
    out, pos = [payload[:2]], 2
    for i in range(count):
        (length,) = struct.unpack("!i", payload[pos:pos + 4])
        pos += 4
        value = b"" if length < 0 else payload[pos:pos + length]
        pos += max(length, 0)
        if length >= 0 and i in masked:
            value, length = b"*", 1
        out.append(struct.pack("!i", length) + value)
    return b"".join(out)


def normalized(rec: Recording, rules: list) -> Recording:
    """The recording with the corpus's rules applied: per step (rules[step] = (ordered, masked) or
    None), rows of an unordered statement sorted within each run of DataRows, masked columns replaced."""
    out: list[Reply] = []
    run: list[Reply] = []

    def end_run() -> None:
        out.extend(sorted(run, key=lambda e: e.data))
        run.clear()

    for e in rec.entries:
        rule = rules[e.step] if 0 <= e.step < len(rules) else None
        if e.kind == "D" and rule is not None:
            ordered, masked = rule
            if masked:
                e = Reply(e.step, e.kind, _mask_row(e.data, masked))
            if not ordered:
                if run and run[-1].step != e.step:
                    end_run()
                run.append(e)
                continue
        end_run()
        out.append(e)
    end_run()
    return dataclasses.replace(rec, entries=out)


@dataclass
class Difference:
    client: int
    text: str
    signature: tuple | None = None
    where: str = ""  # the request of the first difference: entry and form, or "startup"


@dataclass
class Outcome:
    scenario: Scenario
    requests: int = 0
    eligible: int = 0
    messages: int = 0
    differences: list[Difference] = field(default_factory=list)
    differing_requests: Counter = field(default_factory=Counter)  # (entry as form, kind) -> requests
    examples: dict = field(default_factory=dict)                   # (entry as form, kind) -> one, shown
    corpus_problems: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    scans: dict = field(default_factory=dict)
    seconds: float = 0.0
    entries_seen: Counter = field(default_factory=Counter)

    def report(self) -> str:
        lines = [f"differential {self.scenario.describe()}: {self.requests} requests ({self.eligible} eligible), "
                 f"{self.messages} client messages compared, {len(self.differences)} client(s) with differences "
                 f"({self.seconds:.1f} s)"]
        if self.metrics:
            lines.append("  coalescer metrics: " + ", ".join(f"{k}={v:g}" for k, v in sorted(self.metrics.items())))
        else:
            lines.append("  coalescer metrics: none exported (pgsluice_coalesce*)")
        if self.scans.get("direct"):
            lines.append(f"  scans of the corpus's tables on the server: {self.scans['direct']} for the direct run, "
                         f"{self.scans.get('pgsluice', 0)} through pgsluice "
                         f"({self.scans.get('pgsluice', 0) / self.scans['direct']:.0%}; shared and batched executions "
                         f"scan once for many requests)")
        if self.differing_requests:
            lines.append(f"  {sum(self.differing_requests.values())} request(s) differ, by statement, form and the "
                         f"first differing reply (expected -> actual):")
            lines += [f"    {n:5} x {where}: {kind}" for (where, kind), n in self.differing_requests.most_common(25)]
            if len(self.differing_requests) > 25:
                lines.append(f"    ... and {len(self.differing_requests) - 25} more kinds")
            for (where, kind), text in list(self.examples.items())[:8]:
                lines.append(f"--- an example of {where}: {kind}\n{text}")
        for p in self.corpus_problems[:10]:
            lines.append(f"--- corpus problem (the direct run): {p}")
        for d in self.differences[:5]:
            who = "pgsluice" if d.client < 0 else f"client {d.client}"
            lines.append(f"--- seed {self.scenario.seed}, {who}: first difference\n{d.text}")
        if len(self.differences) > 5:
            lines.append(f"--- and {len(self.differences) - 5} more client(s)")
        return "\n".join(lines)


def _show_signature(sig: tuple | None) -> str:
    if not sig:
        return "?"
    return " -> ".join("/".join(str(x) for x in side) for side in sig)


def check_direct(plans: dict[int, ClientPlan], direct: dict[int, Recording]) -> list[str]:
    """What the direct run says about the corpus itself: errors no entry expects, wrong column counts."""
    problems = []
    for k, cp in plans.items():
        steps, info = cp.flat()
        rec = direct[k]
        if rec.aborted:
            problems.append(f"client {k}: the direct run stopped early: {rec.aborted}")
            continue
        for e in rec.entries:
            if not 0 <= e.step < len(info):
                continue
            req, rule = info[e.step]
            if e.kind == "E":
                code = dict(e.data).get("C")
                if code not in corpus.VALUE_ERRORS | req.entry.errors:
                    problems.append(f"client {k}, {req.describe()}: unexpected {code} {dict(e.data).get('M')!r} "
                                    f"(step: {steps[e.step].describe()})")
            elif e.kind in ("DESYNC", "TIMEOUT", "CLOSED", "ERROR"):
                problems.append(f"client {k}, {req.describe()}: {e.kind} {e.data}")
            elif e.kind == "T" and rule is not None and req.entry.cols:
                (count,) = struct.unpack("!H", e.data[:2])
                if count != req.entry.cols:
                    problems.append(f"{req.entry.key}: {count} columns, the corpus says {req.entry.cols}")
    return sorted(set(problems))


def compare(plans: dict[int, ClientPlan], rounds: list[Round], direct: dict[int, Recording],
            proxied: dict[int, Recording]) -> list[Difference]:
    differences = []
    for k in sorted(proxied):
        steps, info = plans[k].flat()
        rules = [rule for _, rule in info]
        a, b = normalized(direct[k], rules), normalized(proxied[k], rules)
        index = first_difference(a, b)
        if index is None:
            continue
        text = show_difference(a, b, index, steps)
        step = min((rec.entries[index].step for rec in (a, b) if index < len(rec.entries)), default=-1)
        where = "startup" if step < 0 else "after the last request"
        if 0 <= step < len(info):
            req = info[step][0]
            rnd = rounds[req.round]
            same = sum(1 for j, p in plans.items() if req.round in p.requests and
                       p.requests[req.round].entry.key == req.entry.key and
                       p.requests[req.round].values == req.values)
            text += (f"\n  request: {req.describe()}; {same - 1} other client(s) sent this statement with the same "
                     f"values in that round\n  {rnd.summary()}"
                     f"\n  rule: {'rows as a multiset' if not req.entry.ordered else 'rows in order'}"
                     f"{', masked columns ' + str(sorted(req.entry.masked)) if req.entry.masked else ''}")
            where = f"{req.entry.key} as {req.form}"
        differences.append(Difference(k, text, signature(a, b), where))
    return differences


def differing_requests(plans: dict[int, ClientPlan], direct: dict[int, Recording],
                       proxied: dict[int, Recording], examples: dict | None = None) -> Counter:
    """Every request whose replies differ, not only each client's first: a request's replies are all
    read during its own steps (each ends with a Sync or a Query; a Flush's Sync is the next step of the
    same request), so they can be compared request by request. A client whose run stopped early counts
    its requests from there on as differing."""
    found: Counter = Counter()
    for k in sorted(proxied):
        steps, info = plans[k].flat()
        rules = [rule for _, rule in info]
        by_step: list[dict] = []
        for rec in (normalized(direct[k], rules), normalized(proxied[k], rules)):
            grouped: dict[int, list] = {}
            for e in rec.entries:
                grouped.setdefault(e.step, []).append(e)
            by_step.append(grouped)
        seen = set()
        for step in sorted(set(by_step[0]) | set(by_step[1])):
            req = info[step][0] if 0 <= step < len(info) else None
            a, b = by_step[0].get(step, []), by_step[1].get(step, [])
            if id(req) in seen or [e.key() for e in a] == [e.key() for e in b]:
                continue
            seen.add(id(req))
            where = f"{req.entry.key} as {req.form}" if req else "startup" if step < 0 else "epilogue"
            kind = (where, _show_signature(signature(Recording(a), Recording(b))))
            found[kind] += 1
            if examples is not None and kind not in examples:
                own = [i for i, (r, _) in enumerate(info) if r is req] or [step]
                lines = [f"  client {k}, round {req.round if req else '-'}, "
                         f"{req.describe() if req else where}:"]
                lines += [f"    {'>' if i == step else ' '} step {i}: {steps[i].describe()}"
                          for i in own if i < len(steps)]
                for title, entries in (("expected", a), ("actual", b)):
                    lines.append(f"    {title}:")
                    lines += [f"      {e.show()}" for e in entries[:12]]
                    if len(entries) > 12:
                        lines.append(f"      ... {len(entries) - 12} more")
                examples[kind] = "\n".join(lines)
    return found


def run_scenario(runner: Runner, scenario: Scenario) -> Outcome:
    started = time.monotonic()
    runner.setup()
    rounds, plans = plan(scenario)
    outcome = Outcome(scenario)
    for cp in plans.values():
        for req in cp.requests.values():
            outcome.requests += 1
            outcome.eligible += req.entry.eligible and req.form in ELIGIBLE_FORMS
            outcome.entries_seen[req.entry.key] += 1
    direct = runner.direct(scenario, plans)
    outcome.corpus_problems = check_direct(plans, direct)
    proxied, problem = runner.proxied(scenario, plans)
    outcome.metrics = runner.metrics
    outcome.scans = dict(runner.scans)
    outcome.messages = sum(r.sent for r in proxied.values())
    outcome.differences = compare(plans, rounds, direct, proxied)
    outcome.differing_requests = differing_requests(plans, direct, proxied, outcome.examples)
    if problem:
        outcome.differences.append(Difference(-1, problem))
    outcome.seconds = time.monotonic() - started
    return outcome


def self_check(runner: Runner, scenario: Scenario) -> list[str]:
    """The premise on Postgres alone: every client's requests give the same replies (under the corpus's
    rules) sent alone and sent in rounds together with all the others."""
    runner.setup()
    rounds, plans = plan(scenario)
    alone = runner.direct(scenario, plans)
    together = runner.direct(scenario, plans, together=True)
    problems = check_direct(plans, alone)
    problems += [f"client {d.client} differs alone vs together on Postgres itself:\n{d.text}"
                 for d in compare(plans, rounds, alone, together)]
    return problems


def list_corpus() -> str:
    lines = [f"{len(CORPUS)} statements ({sum(e.eligible for e in CORPUS)} eligible by the contract):"]
    for e in CORPUS:
        flags = [] if e.eligible else ["INELIGIBLE"]
        flags += [] if e.ordered else ["unordered"]
        flags += [f"masked {sorted(e.masked)}"] if e.masked else []
        flags += [f"shape {e.shape}"] if e.shape != "select" else []
        flags += [f"<= {e.max_clients} clients"] if e.max_clients else []
        params = ", ".join(e.params) + (f" (or {', '.join(e.alt)})" if e.alt else "")
        lines.append(f"  {e.key:28} [{params}] {' '.join(flags)}")
        if e.sql:
            lines.append(f"      {e.sql}")
        if e.note:
            lines.append(f"      ({e.note})")
    return "\n".join(lines)


def save_failure(outcome: Outcome, path) -> str:
    """The command lines that rerun the failing rounds, as JSON next to the other reproductions."""
    data = {"scenario": outcome.scenario.describe(), "differences": []}
    for d in outcome.differences:
        m = re.search(r"round (\d+):", d.text)
        data["differences"].append({"client": d.client, "round": int(m.group(1)) if m else None,
                                    "text": d.text.splitlines()[:60]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return str(path)
