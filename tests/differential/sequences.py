"""Seeded random protocol sequences for the differential test (the README is differential.py's docstring).

A client's sequence is a list of Steps; a Step is a run of frontend messages sent with one write (then
the replies that must come are read, see replies.py), or a short sleep. The generator keeps a rough
model of the session (which statements, portals, settings exist) only to make sequences that do
interesting things; it need not be exact: whatever Postgres answers on a direct connection is the
expectation, the model only steers.

Determinism rules the generator keeps, so that a sequence gets the same replies alone on Postgres and
among others through pgsluice: a client writes only its own table diff_c<k> (and its own temp table,
channel, advisory lock key, cursor); texts shared between clients only read diff_shared or constants;
nothing reads the clock, random(), a backend pid or a relation's OID (expression columns only, never
a temp table's columns, since a RowDescription names the table's OID).

Python 3 standard library only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from frontend import (  # noqa: F401 - Msg, Step and the builders are this module's vocabulary too
    BINARY_KINDS, Msg, Step, bind, close, copy_data, copy_done, copy_fail, describe, encode, execute, flush, parse,
    query, sync,
)
from statements import (
    ERROR_TEMPLATES, INFERABLE, PORTAL_NAMES, SETTINGS, SHOW_PROBES, SQL_PREPARE_NAMES, STATEMENT_NAMES, Template,
    client_templates, shared_templates, simple_statements,
)

# -- features ------------------------------------------------------------------------------------

FEATURES = {
    "named": "named Parse/Bind (statement texts per client and shared between clients)",
    "unnamed": "the unnamed statement, also bound again after a Sync without a new Parse",
    "binary": "binary parameters and binary/mixed result formats",
    "describe": "Describe S and Describe P",
    "portals": "Execute with row limits (PortalSuspended), further Executes, named portals",
    "suspended_writes": "with portals: row limits on a data-modifying statement (WITH ... UPDATE ... RETURNING)",
    "close": "Close S / Close P",
    "flush": "pipelines ending in Flush, read at once, then later a Sync",
    "pipeline": "several groups before one Sync, several Syncs in one write",
    "errors": "errors mid-pipeline: division by zero, missing table, bad parameters, duplicate keys ...; the "
              "pipeline's Sync follows the failing message (see after_error), a failed transaction is ended next",
    "after_error": "with errors: more messages after the failing one before the Sync (the server skips them), "
                   "Flush then more, and statements inside a failed transaction (25P02)",
    "bind_errors": "with errors: Bind with the wrong number of parameters or of result formats (08P01)",
    "simple": "simple queries, several statements in one",
    "transactions": "BEGIN/COMMIT/ROLLBACK/SAVEPOINT spanning several Syncs, portals kept across Syncs",
    "start_transaction": "with transactions: START TRANSACTION as well as BEGIN to open a transaction block",
    "extended_commit": "with transactions: COMMIT/ROLLBACK/END/ABORT through the extended protocol too (as drivers "
                       "send them), not only as simple queries",
    "reparse": "Parse of a live statement name (42P05)",
    "deallocate": "DEALLOCATE name / ALL, simple and through the extended protocol",
    "discard": "DISCARD ALL, simple and extended",
    "set": "SET/RESET/SHOW/SET LOCAL of reported and unreported settings, and queries that show them",
    "reset_all": "RESET ALL, and RESET of a setting the client gave in its startup packet (application_name)",
    "sql_prepare": "SQL PREPARE / EXECUTE / DEALLOCATE",
    "sleep": "short sleeps between steps (only through pgsluice) to force interleaving",
    "copy": "COPY TO STDOUT and COPY FROM STDIN (data, CopyFail, bad data)",
    "listen": "LISTEN / NOTIFY / UNLISTEN on the client's own channel",
    "temp_tables": "a temporary table kept across transactions",
    "advisory_locks": "session advisory locks (pg_try_advisory_lock / unlock)",
    "pins_in_transactions": "with listen or advisory_locks: LISTEN and session advisory locks inside transaction blocks "
                            "too (temporary tables and WITH HOLD cursors are always made outside them)",
    "hold_cursors": "WITH HOLD cursors used across transactions",
    "introspect": "pg_prepared_statements (which statement names the session has)",
    "coalesce": "not a kind of message: the service coalesces (coalesce.enabled, DESIGN §4), so the eligible "
                "reads among the sequences may share executions or be batched (opt-in; --coalesce runs the "
                "corpus rounds of coalesce.py)",
}


def parse_features(spec: str | None, default: frozenset[str]) -> frozenset[str]:
    """'all', 'default', a comma list, and '-name' to remove: 'all,-listen', 'default,+copy', 'named,flush'."""
    if not spec:
        return default
    chosen: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item == "all":
            chosen |= set(FEATURES)
        elif item == "default":
            chosen |= set(default)
        elif item.startswith("-"):
            name = item[1:]
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
            chosen.discard(name)
        else:
            name = item.lstrip("+")
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
            chosen.add(name)
    return frozenset(chosen)


# -- the generator ----------------------------------------------------------------------------------

@dataclass
class _Model:
    named: dict = field(default_factory=dict)        # statement name -> Template; "sql" if made by PREPARE
    savepoint: bool = False
    unnamed: Template | None = None
    in_tx: bool = False
    tx_failed: bool = False
    tx_steps: int = 0
    portals: dict = field(default_factory=dict)      # named portal -> Template, kept in a transaction
    open_portals: set = field(default_factory=set)   # named portals that exist until the transaction ends
    next_id: int = 1000                              # fresh primary keys, so that inserts never collide
    unsynced: int = 0                                # Flush-ended steps since the last Sync
    poisoned: bool = False                           # an error is pending before the next Sync
    listening: bool = False
    temp_table: bool = False
    cursor: bool = False
    notify_n: int = 0


class Generator:
    """The sequence of client k for a scenario seed: the same (seed, k, features, messages) gives the
    same steps."""

    def __init__(self, seed: int, k: int, features: frozenset[str], messages: int):
        self.rng = random.Random(f"pgsluice-differential/{seed}/{k}")
        self.k = k
        self.f = features
        self.budget = messages
        self.m = _Model()
        self.steps: list[Step] = []
        self.pending: list[Msg] = []   # the step being built
        self.shared = shared_templates()
        self.own = client_templates(k)
        self.simple = simple_statements(k)

    # -- helpers ----------------------------------------------------------------------------------
    def has(self, feature: str) -> bool:
        return feature in self.f

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def sent(self) -> int:
        return sum(len(s.msgs) for s in self.steps) + len(self.pending)

    def emit(self, *msgs: Msg) -> None:
        self.pending.extend(msgs)

    def end_step(self) -> None:
        if self.pending:
            self.steps.append(Step(self.pending))
            self.pending = []

    def sleep(self) -> None:
        if self.has("sleep"):
            self.end_step()
            self.steps.append(Step([], self.rng.choice([0.001, 0.002, 0.005, 0.01, 0.02])))

    def fresh_id(self, width: int = 1) -> int:
        self.m.next_id += width
        return self.m.next_id - width

    def fill(self, template: Template) -> list:
        values = []
        for kind, spec in zip(template.params, template.values or [None] * len(template.params)):
            if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                     for x in spec):
                values.append(self.rng.randint(*spec))
            elif isinstance(spec, tuple):
                values.append(self.rng.choice(spec))
            else:
                values.append(self.rng.randint(1, 9))
        if template.key == "c_insert":
            values[0] = self.fresh_id()
        elif template.key == "c_bulk":
            values[0] = self.fresh_id(4)
        return values

    def pick_template(self) -> Template:
        roll = self.rng.random()
        if roll < 0.45:
            return self.rng.choice(self.shared)
        return self.rng.choice(self.own)

    def bind_msg(self, portal: str, statement: str, template: Template, values: list | None = None,
                 corrupt: str = "") -> tuple[Msg, bool]:
        """The Bind of template's statement, and whether a corruption (an error at Bind) was applied."""
        values = self.fill(template) if values is None else values
        kinds = list(template.params)
        formats = [1 if kind in BINARY_KINDS and self.has("binary") and self.chance(0.4) else 0 for kind in kinds]
        params = [(fmt, encode(kind, v, fmt)) for kind, v, fmt in zip(kinds, values, formats)]
        applied = False
        if corrupt == "count":
            # 08P01: one parameter more than the statement has
            params = [(0, encode(kind, v, 0)) for kind, v in zip(kinds, values)] + [(0, b"1")]
            return bind(portal, statement, params, [], self.result_formats(template)), True
        numeric = [i for i, kind in enumerate(kinds) if kind in ("int4", "int8", "float8", "bool", "numeric")]
        if corrupt == "text" and numeric:
            i = self.rng.choice(numeric)
            params[i] = (0, b"not-a-number")  # 22P02
            formats[i] = 0
            applied = True
        fixed = [i for i, kind in enumerate(kinds) if kind in ("int4", "int8", "float8")]
        if corrupt == "binary" and fixed:
            i = self.rng.choice(fixed)
            params[i] = (1, b"\x00\x01")  # too short for the type: 22P03
            formats[i] = 1
            applied = True
        # The format codes as sent: none (all text), one for all, or one per parameter.
        if all(f == 0 for f in formats) and self.chance(0.6):
            codes: list[int] = []
        elif formats and len(set(formats)) == 1 and self.chance(0.5):
            codes = [formats[0]]
        else:
            codes = formats
        return bind(portal, statement, params, codes, self.result_formats(template)), applied

    def result_formats(self, template: Template) -> list[int]:
        if not self.has("binary") or self.chance(0.5):
            return []
        if self.chance(0.5):
            return [self.rng.choice([0, 1])]
        columns = {"by_id": 3, "range": 2, "sum_infer": 1, "series": 2, "types": 6, "echo_text": 2, "echo_int": 1,
                   "echo_txt": 1, "flag_count": 1, "float": 2, "values": 2, "one": 1, "name_lookup": 1, "nulls": 2,
                   "settings": 3, "numeric": 1, "c_all": 3, "c_count": 3, "c_returning": 2, "c_above": 1,
                   "c_const": 2, "div0": 1}.get(template.key)
        if columns is None:
            return [self.rng.choice([0, 1])]
        if self.has("errors") and self.has("bind_errors") and not self.m.poisoned and self.chance(0.05):
            columns += 1  # 08P01: more result formats than columns
            self.m.poisoned = True
        return [self.rng.choice([0, 1]) for _ in range(columns)]

    # -- extended-protocol groups -----------------------------------------------------------------------
    def fresh_name(self) -> str:
        free = [n for n in STATEMENT_NAMES if n not in self.m.named]
        if free:
            return self.rng.choice(free)
        name = self.rng.choice(STATEMENT_NAMES)
        self.emit(close("S", name))  # make room: the name is free again after the Close
        self.m.named.pop(name, None)
        return name

    def group(self) -> None:
        """Parse? Describe S? Bind, Describe P?, Execute (row limits?), Close? — one use of a statement."""
        named_ok, unnamed_ok = self.has("named"), self.has("unnamed")
        if not (named_ok or unnamed_ok):
            return
        use_named = named_ok and (not unnamed_ok or self.chance(0.6))
        error = self.has("errors") and not self.m.poisoned and self.chance(0.12)
        kinds = ["div0", "parse", "bad_text", "bad_binary", "nostmt", "noportal", "dupkey", "const_div0"]
        if self.has("bind_errors"):
            kinds.append("count")
        error_kind = self.rng.choice(kinds) if error else ""
        # Without after_error the pipeline ends with its Sync right after the failing message.
        stop_at_error = not self.has("after_error")
        template: Template
        statement: str
        if error_kind == "parse":
            template = self.rng.choice([t for t in ERROR_TEMPLATES if t.error == "parse"])
        elif error_kind in ("div0", "const_div0"):
            template = next(t for t in ERROR_TEMPLATES if t.key == error_kind)
        elif error_kind == "dupkey":
            template = self.own[0]
        else:
            template = self.pick_template()

        if use_named:
            reuse = [n for n, t in self.m.named.items() if isinstance(t, Template)]
            if reuse and error_kind not in ("parse", "div0", "const_div0", "dupkey") and self.chance(0.55):
                statement = self.rng.choice(reuse)
                template = self.m.named[statement]
            else:
                if self.has("reparse") and self.m.named and not self.m.poisoned and self.chance(0.08):
                    statement = self.rng.choice(list(self.m.named))
                    self.emit(parse(statement, template.sql, template.types))  # 42P05
                    self.m.poisoned = True
                    return
                statement = self.fresh_name()
                types = template.types
                if template.key in INFERABLE and self.chance(0.25):
                    types = ()  # the server infers them from the text
                self.emit(parse(statement, template.sql, types))
                if not self.m.poisoned:
                    self.m.named[statement] = None if template.error == "parse" else template
        else:
            statement = ""
            if self.m.unnamed is not None and not error_kind and self.chance(0.35):
                template = self.m.unnamed  # bound again, maybe after a Sync on another server connection
            else:
                self.emit(parse("", template.sql, template.types))
                if not self.m.poisoned:
                    self.m.unnamed = None if template.error == "parse" else template
        if template.error == "parse":
            self.m.poisoned = True
            if stop_at_error:
                return
            # the rest of the group is skipped by the server; send it anyway
        if self.has("describe") and self.chance(0.3):
            self.emit(describe("S", statement))
        portal = ""
        if self.has("portals") and self.chance(0.3):
            portal = self.rng.choice(PORTAL_NAMES)
            if portal in self.m.open_portals:
                # A named portal lives until the transaction ends: bind it again only after closing it
                # (42P03 otherwise, which only the errors feature means to cause).
                if self.has("close") and not self.m.poisoned:
                    self.emit(close("P", portal))
                    self.m.open_portals.discard(portal)
                    self.m.portals.pop(portal, None)
                elif not self.has("errors"):
                    portal = ""
            if portal and not self.m.poisoned:
                self.m.open_portals.add(portal)
        if error_kind == "nostmt":
            self.emit(bind(portal, "no_such_statement", [], [], []))
            self.m.poisoned = True
            if stop_at_error:
                return
        else:
            values = None
            if error_kind == "dupkey":
                values = [self.rng.randint(1, 5), "dup", 1]  # ids 1..5 exist from the start (unless deleted)
            corrupt = {"bad_text": "text", "bad_binary": "binary", "count": "count"}.get(error_kind, "")
            msg, applied = self.bind_msg(portal, statement, template, values, corrupt)
            self.emit(msg)
            if applied:
                self.m.poisoned = True
            if self.m.poisoned and stop_at_error:
                return  # a corrupt parameter, or result formats for more columns than there are
        if self.has("describe") and self.chance(0.25):
            self.emit(describe("P", portal))
        if error_kind == "noportal":
            self.emit(execute("no_such_portal", 0))
            self.m.poisoned = True
            return
        if error_kind and stop_at_error:
            self.emit(execute(portal, 0))  # it fails here (or, if the row it needs is gone, it does not)
            self.m.poisoned = True
            return
        writes = template.key == "c_returning"
        if self.has("portals") and template.rows > 1 and (not writes or self.has("suspended_writes")) and \
                self.chance(0.5):
            limit = self.rng.randint(1, 3)
            self.emit(execute(portal, limit))
            for _ in range(self.rng.randint(0, 2)):
                if self.has("flush") and self.chance(0.3):
                    self.emit(flush())
                    self.end_step()
                    if self.chance(0.3):
                        self.sleep()
                self.emit(execute(portal, self.rng.choice([0, 1, 2])))
            if portal and self.m.in_tx and not self.m.poisoned and self.chance(0.5):
                self.m.portals[portal] = template  # continued after a Sync (transactions)
        else:
            self.emit(execute(portal, 0))
        if error_kind in ("div0", "const_div0", "dupkey"):
            self.m.poisoned = True
        if self.has("close") and self.chance(0.15):
            if portal and self.chance(0.5):
                self.emit(close("P", portal))
                self.m.portals.pop(portal, None)
                if not self.m.poisoned:
                    self.m.open_portals.discard(portal)
            elif statement and self.chance(0.7):
                self.emit(close("S", statement))
                if not self.m.poisoned:
                    self.m.named.pop(statement, None)
            else:
                self.emit(close("S", ""))
                if not self.m.poisoned:
                    self.m.unnamed = None

    def continue_portal(self) -> None:
        """Execute again a portal left suspended before an earlier Sync (inside a transaction)."""
        portal = self.rng.choice(list(self.m.portals))
        self.emit(execute(portal, self.rng.choice([0, 1, 2])))
        if self.chance(0.3):
            self.m.portals.pop(portal)

    def extended(self) -> None:
        """One or more groups, then Sync, or Flush (the Sync comes in a later step)."""
        groups = self.rng.randint(2, 4) if self.has("pipeline") and self.chance(0.35) else 1
        for i in range(groups):
            if self.m.portals and self.chance(0.3):
                self.continue_portal()
            else:
                self.group()
            if self.m.poisoned and not self.has("after_error"):
                break
            if i + 1 < groups and self.has("pipeline") and self.chance(0.25):
                self.sync_now(end=False)  # several Syncs in one write
        if self.has("flush") and self.m.unsynced < 3 and self.chance(0.3) and \
                not (self.m.poisoned and not self.has("after_error")):
            self.emit(flush())
            self.m.unsynced += 1
            self.end_step()
        else:
            self.sync_now()

    def sync_now(self, end: bool = True) -> None:
        self.emit(sync())
        self.m.unsynced = 0
        if self.m.poisoned and self.m.in_tx:
            self.m.tx_failed = True
        self.m.poisoned = False
        if not self.m.in_tx:
            self.m.portals.clear()
            self.m.open_portals.clear()
        if end:
            self.end_step()

    def sync_pending(self) -> None:
        """Before a simple query (or the end): an extended batch left open by a Flush gets its Sync."""
        if self.m.unsynced or self.pending:
            self.sync_now()

    # -- simple queries and session state ---------------------------------------------------------------
    def simple_query(self, sql: str, error: bool = False) -> None:
        self.sync_pending()
        self.emit(query(sql))
        self.end_step()
        self.m.unnamed = None  # a simple query drops the unnamed statement
        if error and self.m.in_tx:
            self.m.tx_failed = True

    def extended_statement(self, sql: str, error: bool = False) -> None:
        """A statement through the unnamed statement: Parse/Bind/Execute/Sync (the way drivers send SQL)."""
        self.sync_pending()
        self.emit(parse("", sql), bind("", "", [], [], []))
        if self.has("describe") and self.chance(0.3):
            self.emit(describe("P", ""))
        self.emit(execute("", 0))
        if error:
            self.m.poisoned = True
        self.sync_now()
        self.m.unnamed = None

    def statement(self, sql: str, error: bool = False) -> None:
        """sql as a simple query or through the extended protocol."""
        use_simple = self.has("simple") or not (self.has("unnamed") or self.has("named"))
        if use_simple and (not self.has("unnamed") or self.chance(0.5)):
            self.simple_query(sql, error)
        else:
            self.extended_statement(sql, error)

    def simple_multi(self) -> None:
        parts = self.rng.sample(self.simple, self.rng.randint(1, 3))
        if not self.has("errors"):
            parts = [p for p in parts if not p[1]] or [self.simple[0]]
        error = any(p[1] for p in parts)
        if self.m.in_tx or not self.has("transactions") or self.chance(0.7):
            sql = "; ".join(p[0] for p in parts)
            self.simple_query(sql, error=error)
        else:
            # An error stops the query string before its COMMIT: the transaction block stays, failed.
            self.simple_query("BEGIN; " + "; ".join(p[0] for p in parts) + "; COMMIT")
            if error:
                self.m.in_tx, self.m.tx_failed, self.m.tx_steps, self.m.savepoint = True, True, 0, False

    def transaction_control(self) -> None:
        if not self.m.in_tx:
            opening = ["BEGIN", "BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ"]
            if self.has("start_transaction"):
                opening.append("START TRANSACTION")
            self.statement(self.rng.choice(opening))
            self.m.in_tx, self.m.tx_failed, self.m.tx_steps, self.m.savepoint = True, False, 0, False
            return
        if self.m.tx_failed or self.m.tx_steps > 6 or self.chance(0.3):
            ends = ["COMMIT", "ROLLBACK", "END", "ABORT"] if not self.m.tx_failed else ["ROLLBACK", "COMMIT"]
            if self.m.tx_failed and (self.m.savepoint or (self.has("after_error") and self.chance(0.2))):
                ends.append("ROLLBACK TO SAVEPOINT diff_sp")
            end = self.rng.choice(ends)
            if end.startswith("ROLLBACK TO"):
                self.statement(end, error=not self.m.savepoint)
                self.m.tx_failed = not self.m.savepoint
                return  # the transaction goes on (or, with no such savepoint, stays failed): it ends later
            if self.has("extended_commit"):
                self.statement(end)
            else:
                self.simple_query(end)
            self.m.in_tx, self.m.tx_failed = False, False
            self.m.portals.clear()
            self.m.open_portals.clear()
            return
        if self.m.savepoint or (self.has("after_error") and self.chance(0.2)):
            sql = self.rng.choice(["SAVEPOINT diff_sp", "RELEASE SAVEPOINT diff_sp", "ROLLBACK TO SAVEPOINT diff_sp"])
        else:
            sql = "SAVEPOINT diff_sp"
        error = sql != "SAVEPOINT diff_sp" and not self.m.savepoint
        self.statement(sql, error=error)
        if not error and not self.m.tx_failed:
            self.m.savepoint = sql != "RELEASE SAVEPOINT diff_sp"

    def settings(self) -> None:
        k, n = self.k, self.rng.randint(1, 64)
        roll = self.rng.random()
        name = self.rng.choice(list(SETTINGS))
        value = self.rng.choice(SETTINGS[name]).format(k=k, n=n)
        if roll < 0.35:
            local = "LOCAL " if self.m.in_tx and self.chance(0.3) else ""
            self.statement(f"SET {local}{name} = {value}")
        elif roll < 0.45:
            if name == "application_name" and not self.has("reset_all"):
                name = "work_mem"  # its reset value is the startup packet's: that is reset_all's
            self.statement(f"RESET {name}")
        elif roll < 0.5:
            if self.has("reset_all"):
                self.statement("RESET ALL")
        elif roll < 0.75:
            self.statement(f"SHOW {name}")
        else:
            self.statement(self.rng.choice(SHOW_PROBES))

    def deallocate(self) -> None:
        names = list(self.m.named)
        roll = self.rng.random()
        if roll < 0.2 or not names:
            sql = self.rng.choice(["DEALLOCATE ALL", "DEALLOCATE PREPARE ALL"])
            self.m.named.clear()
        elif roll < 0.3 and self.has("errors"):
            sql = "DEALLOCATE no_such_statement"  # 26000
        else:
            name = self.rng.choice(names)
            quoted = f'"{name}"' if name != name.lower() or self.chance(0.3) else name
            sql = self.rng.choice([f"DEALLOCATE {quoted}", f"DEALLOCATE PREPARE {quoted}"])
            self.m.named.pop(name, None)
        self.statement(sql)

    def discard(self) -> None:
        if self.m.in_tx and not self.has("errors"):
            return  # 25001 inside a transaction block
        self.statement("DISCARD ALL", error=self.m.in_tx)
        if not self.m.in_tx:
            self.m.named.clear()
            self.m.unnamed = None
            self.m.listening = self.m.temp_table = self.m.cursor = False

    def sql_prepare(self) -> None:
        k = self.k
        name = self.rng.choice(SQL_PREPARE_NAMES)
        roll = self.rng.random()
        bodies = {
            "sp1": f"PREPARE {name} (int) AS SELECT $1 + {k} AS v",
            "sp2": f"PREPARE {name} AS SELECT count(*) AS c FROM diff_c{k}",
            "sp3": f"PREPARE {name} (int, text) AS INSERT INTO diff_c{k} (id, note, n) VALUES ($1, $2, 0)",
            "s1": f"PREPARE {name} (text) AS SELECT upper($1) AS u",
        }
        executes = {
            "sp1": f"EXECUTE {name}({self.rng.randint(1, 9)})",
            "sp2": f"EXECUTE {name}",
            "sp3": f"EXECUTE {name}({self.rng.randint(50, 70)}, 'prep')",
            "s1": f"EXECUTE {name}('abc')",
        }
        exists = self.m.named.get(name)
        if not self.has("errors"):
            # without errors: PREPARE a free name, EXECUTE and DEALLOCATE only what PREPARE made
            roll = 0.0 if exists is None else 0.5 if roll < 0.35 else roll
            if exists is not None and exists != "sql":
                return
        if roll < 0.35:
            self.statement(bodies[name], error=exists is not None)
            self.m.named.setdefault(name, "sql")
        elif roll < 0.8:
            self.statement(executes[name], error=exists != "sql")
        else:
            self.statement(f"DEALLOCATE {name}", error=exists is None)
            self.m.named.pop(name, None)

    def copy(self) -> None:
        k = self.k
        self.sync_pending()
        roll = self.rng.random()
        if roll < 0.4:
            self.simple_query(f"COPY (SELECT id, note, n FROM diff_c{k} ORDER BY id) TO STDOUT")
            return
        base = self.fresh_id(3)
        rows = b"".join(f"{base + i}\tcopy\t{i}\n".encode() for i in range(self.rng.randint(1, 3)))
        self.emit(query(f"COPY diff_c{k} (id, note, n) FROM STDIN"))
        if roll < 0.75 or not self.has("errors"):
            self.emit(copy_data(rows), copy_done())
        elif roll < 0.9:
            self.emit(copy_data(rows), copy_fail("client gave up"))
        else:
            self.emit(copy_data(b"oops\tnot\tanumber\n"), copy_done())
        self.end_step()
        self.m.unnamed = None

    def listen(self) -> None:
        if self.m.in_tx and not self.has("pins_in_transactions"):
            return
        k = self.k
        roll = self.rng.random()
        if not self.m.listening or roll < 0.15:
            self.statement(f"LISTEN diff_ch{k}")
            self.m.listening = True
        elif roll < 0.75:
            self.m.notify_n += 1
            sql = self.rng.choice([f"NOTIFY diff_ch{k}, 'm{self.m.notify_n}'",
                                   f"SELECT pg_notify('diff_ch{k}', 'n{self.m.notify_n}')"])
            self.statement(sql)
        else:
            self.statement(self.rng.choice([f"UNLISTEN diff_ch{k}", "UNLISTEN *"]))
            self.m.listening = False

    def temp_table(self) -> None:
        k = self.k
        if self.m.in_tx and (not self.m.temp_table or self.chance(0.1)):
            return  # made and dropped outside transactions, so that a rollback cannot undo them
        if not self.m.temp_table or self.chance(0.1):
            self.statement(f"CREATE TEMP TABLE IF NOT EXISTS diff_t{k} (x int)")
            self.m.temp_table = True
            return
        roll = self.rng.random()
        if roll < 0.45:
            self.statement(f"INSERT INTO diff_t{k} VALUES ({self.rng.randint(1, 9)})")
        elif roll < 0.9:
            self.statement(f"SELECT count(*) AS c, sum(x) AS s FROM diff_t{k}")
        elif not self.m.in_tx:
            self.statement(f"DROP TABLE IF EXISTS diff_t{k}")
            self.m.temp_table = False

    def advisory_lock(self) -> None:
        if self.m.in_tx and not self.has("pins_in_transactions"):
            return
        key = 7000 + self.k
        self.statement(self.rng.choice([f"SELECT pg_try_advisory_lock({key}) AS got",
                                        f"SELECT pg_advisory_unlock({key}) AS released",
                                        f"SELECT pg_try_advisory_lock({key}) AS got"]))

    def hold_cursor(self) -> None:
        k = self.k
        if not self.m.cursor:
            if self.m.in_tx:
                return
            self.statement(f"DECLARE diff_cur{k} CURSOR WITH HOLD FOR SELECT id, note FROM diff_c{k} ORDER BY id")
            self.m.cursor = True
        elif self.chance(0.75):
            self.statement(f"FETCH {self.rng.randint(1, 3)} FROM diff_cur{k}")
        elif not self.m.in_tx:
            self.statement(f"CLOSE diff_cur{k}")
            self.m.cursor = False

    def introspect(self) -> None:
        self.statement("SELECT name, statement, parameter_types::text, from_sql FROM pg_prepared_statements ORDER BY name")

    # -- the whole sequence -------------------------------------------------------------------------------
    def actions(self) -> list[tuple[float, callable]]:
        if self.m.tx_failed and self.has("transactions") and not self.has("after_error"):
            return [(1.0, self.transaction_control)]  # every statement would fail with 25P02: end it
        table = []
        if self.has("named") or self.has("unnamed"):
            table.append((10.0, self.extended))
        if self.m.unsynced:
            return table or [(1.0, self.sync_pending)]
        if self.has("simple"):
            table.append((2.5, self.simple_multi))
        if self.has("transactions"):
            table.append((2.0 if not self.m.in_tx else 3.0, self.transaction_control))
        if self.has("set"):
            table.append((1.5, self.settings))
        if self.has("deallocate"):
            table.append((0.8, self.deallocate))
        if self.has("discard"):
            table.append((0.25, self.discard))
        if self.has("sql_prepare"):
            table.append((1.2, self.sql_prepare))
        if self.has("copy"):
            table.append((0.6, self.copy))
        if self.has("listen"):
            table.append((0.8, self.listen))
        if self.has("temp_tables"):
            table.append((0.8, self.temp_table))
        if self.has("advisory_locks"):
            table.append((0.5, self.advisory_lock))
        if self.has("hold_cursors"):
            table.append((0.6, self.hold_cursor))
        if self.has("introspect"):
            table.append((0.4, self.introspect))
        if not table:
            table.append((1.0, lambda: self.simple_query("SELECT 1")))
        return table

    def generate(self) -> list[Step]:
        while self.sent() < self.budget:
            table = self.actions()
            total = sum(w for w, _ in table)
            roll = self.rng.random() * total
            for weight, action in table:
                roll -= weight
                if roll <= 0:
                    break
            action()
            if self.m.in_tx:
                self.m.tx_steps += 1
            if self.chance(0.2):
                self.sleep()
        self.sync_pending()
        self.end_step()
        return self.steps


def generate(seed: int, k: int, features: frozenset[str], messages: int) -> list[Step]:
    return Generator(seed, k, features, messages).generate()


def epilogue() -> list[Step]:
    """Sent after every (possibly shrunk) sequence: a Sync for anything left open, and one simple query
    so that whatever is still due (a notification, a ParameterStatus) has been read."""
    return [Step([sync()]), Step([query("SELECT 'end' AS fin")])]
