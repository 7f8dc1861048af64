"""The requests of the coalescing differential test (coalesce.py): its scenario, its rounds, and each
client's request in each round, built from corpus.py. A round is one corpus statement (every fifth, a
mix of three) that the clients send at once; most of them take the round's choices of protocol form,
Describes, parameter types and formats and result formats, so their requests have the same coalescing
key, the others choose their own. The same scenario gives the same plan; each round, and each client's
request in it, has its own random stream, so --only-rounds keeps a round as it was.

Python 3 standard library only.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import corpus
from corpus import CORPUS, Bad, Entry, Text
from frontend import Msg, Step, bind, describe, encode, execute, flush, parse, query, sync

# Protocol forms. The first four are eligible by the contract; the others must pass through.
FORMS = {
    "named": 30, "unnamed": 26, "rebind": 10, "simple": 12,
    "tx": 5, "max_rows": 5, "pipeline": 4, "flush": 4,
}
ELIGIBLE_FORMS = {"named", "unnamed", "rebind", "simple"}
DESCRIBES = {"": 40, "S": 20, "P": 25, "SP": 15}


def weighted(rng: random.Random, table: dict) -> str:
    return rng.choices(list(table), weights=list(table.values()))[0]


# -- scenario and plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    seed: int = 1
    clients: int = 100
    pool: int = 6
    mode: str = "transaction"
    rounds: int = 0                  # 0: two passes over the corpus (plus mixed rounds)
    max_batch: int = 256
    window: str = "0"
    only_rounds: frozenset = frozenset()  # empty: all
    enabled: bool = True             # False: the same rounds with coalescing off (a baseline)

    @property
    def round_count(self) -> int:
        return self.rounds or 2 * len(CORPUS) * 5 // 4

    def describe(self) -> str:
        only = f" --only-rounds {','.join(map(str, sorted(self.only_rounds)))}" if self.only_rounds else ""
        off = "" if self.enabled else " --coalescer-off"
        return (f"--coalesce --seed {self.seed} --clients {self.clients} --pool {self.pool} --mode {self.mode} "
                f"--coalesce-rounds {self.round_count} --max-batch {self.max_batch} --window {self.window}{only}{off}")


@dataclass
class Round:
    index: int
    entries: list[Entry]
    participants: list[int]
    bad: bool
    pools: dict[str, list[tuple]]    # entry key -> the round's distinct value tuples
    form: str
    describes: str                   # "", "S", "P", "SP": which Describes the request has
    typing: str                      # declared | inferred | alt
    param_formats: str               # text | binary | mixed
    result_formats: dict[str, list[int]]

    def summary(self) -> str:
        keys = ",".join(e.key for e in self.entries)
        sizes = ",".join(str(len(p)) for p in self.pools.values())
        return (f"round {self.index}: {keys} ({len(self.participants)} clients, {sizes} distinct value tuple(s), "
                f"mostly {self.form}{'+D' + self.describes if self.describes else ''}, {self.typing} types, "
                f"{self.param_formats} parameters{', invalid values' if self.bad else ''})")


@dataclass
class Request:
    """One client's request of one round: the steps sent and how their replies are compared."""

    round: int
    entry: Entry
    form: str
    values: tuple
    steps: list[Step]
    rules: list[tuple[bool, frozenset] | None]  # per step: (ordered, masked) for the corpus statement, or exact

    def describe(self) -> str:
        return f"{self.entry.key} as {self.form} with {_show_values(self.values)}"


@dataclass
class ClientPlan:
    k: int
    params: dict
    requests: dict[int, Request] = field(default_factory=dict)  # by round

    def flat(self) -> tuple[list[Step], list[tuple[Request, tuple | None]]]:
        """Every step in order, and for each the request it belongs to and its comparison rule."""
        steps, info = [], []
        for r in sorted(self.requests):
            req = self.requests[r]
            for step, rule in zip(req.steps, req.rules):
                steps.append(step)
                info.append((req, rule))
        return steps, info


def _show_values(values: tuple) -> str:
    def one(v) -> str:
        if isinstance(v, Text):
            return f"text:{v.text!r}"
        if isinstance(v, Bad):
            return f"bad:{v.text!r}"
        return repr(v)
    return "(" + ", ".join(one(v) for v in values) + ")"


class _State:
    """What one client's session has: its named statements, its unnamed statement."""

    def __init__(self):
        self.named: set[str] = set()
        self.unnamed: tuple | None = None


def plan(scenario: Scenario) -> tuple[list[Round], dict[int, ClientPlan]]:
    """Every round and every client's requests; the same scenario gives the same plan. Each round and
    each client's request of it has its own random stream, so --only-rounds keeps a round as it was."""
    clients = list(range(scenario.clients))
    plans = {k: ClientPlan(k, corpus.startup_params(k)) for k in clients}
    states = {k: _State() for k in clients}
    order_rng = random.Random(f"pgsluice-coalesce/{scenario.seed}/order")
    stream: list[Entry] = []
    rounds = []
    for r in range(scenario.round_count):
        rng = random.Random(f"pgsluice-coalesce/{scenario.seed}/round/{r}")
        if r % 5 == 4:
            entries = rng.sample([e for e in CORPUS if e.eligible and e.shape == "select" and not e.max_clients], 3)
        else:
            if not stream:
                stream = list(CORPUS)
                order_rng.shuffle(stream)
            entries = [stream.pop()]
        rnd = _make_round(rng, r, entries, clients, scenario)
        rounds.append(rnd)
        if scenario.only_rounds and r not in scenario.only_rounds:
            continue
        for k in rnd.participants:
            crng = random.Random(f"pgsluice-coalesce/{scenario.seed}/round/{r}/client/{k}")
            plans[k].requests[r] = _make_request(crng, rnd, k, states[k], scenario.mode)
    return rounds, plans


def _make_round(rng: random.Random, r: int, entries: list[Entry], clients: list[int], scenario: Scenario) -> Round:
    entry = entries[0]
    if entry.max_clients:
        participants = sorted(rng.sample(clients, min(entry.max_clients, len(clients))))
    elif len(entries) == 1 and rng.random() < 0.15:
        participants = sorted(rng.sample(clients, max(1, len(clients) // 2)))
    else:
        participants = list(clients)
    bad = rng.random() < 0.25
    pools = {}
    for e in entries:
        distinct = rng.choice([1, 2, 3, 5, 10, 30, len(participants)])
        pools[e.key] = [tuple(g(rng, bad) for g in e.gens) for _ in range(max(1, distinct))]
    form = weighted(rng, FORMS)
    if scenario.mode == "statement" and form == "tx":
        form = "unnamed"  # statement mode refuses transaction blocks
    result_formats = {e.key: _result_formats(rng, e.cols) for e in entries}
    return Round(r, entries, participants, bad, pools, form, weighted(rng, DESCRIBES),
                 rng.choice(["declared", "declared", "inferred", "alt"]), rng.choice(["text", "binary", "mixed"]),
                 result_formats)


def _result_formats(rng: random.Random, cols: int) -> list[int]:
    roll = rng.random()
    if roll < 0.3:
        return []
    if roll < 0.4:
        return [0]
    if roll < 0.7:
        return [1]
    return [rng.choice([0, 1]) for _ in range(cols)] if cols > 1 else [rng.choice([0, 1])]


def _make_request(rng: random.Random, rnd: Round, k: int, state: _State, mode: str) -> Request:
    entry = rng.choice(rnd.entries)
    shared = rng.random() < 0.75  # most clients take the round's choices, so their keys match
    values = rng.choice(rnd.pools[entry.key])
    if entry.shape == "rw":
        values = (k,)
    form = rnd.form if shared else weighted(rng, FORMS)
    if mode == "statement" and form == "tx":
        form = "unnamed"
    desc = rnd.describes if shared else weighted(rng, DESCRIBES)
    typing = rnd.typing if shared else rng.choice(["declared", "inferred", "alt"])
    pformats = rnd.param_formats if shared else rng.choice(["text", "binary", "mixed"])
    rformats = rnd.result_formats[entry.key] if shared else _result_formats(rng, entry.cols)
    rule = (entry.ordered, entry.masked)

    if entry.shape == "set":
        sql = rng.choice(corpus.SETTINGS)
        state.unnamed = None
        return Request(rnd.index, entry, "simple", (sql,), [Step([query(sql)])], [None])
    before, before_rules = [], []
    if entry.shape == "rw":
        # The client's own write (a simple Query, which drops the unnamed statement), then its read,
        # batched with the others' reads of their own rows: it must see its write.
        before, before_rules = [Step([query(f"UPDATE coal_rw SET v = v + 1 WHERE client = {k} RETURNING v")])], [None]
        state.unnamed = None
    if form == "simple" and not entry.simple:
        form = "unnamed"
    text = entry.sql.replace("{client}", str(k))
    if form == "simple":
        state.unnamed = None
        steps, rules = [Step([query(_interpolate(text, values))])], [rule]
    else:
        steps, rules = _extended(rng, entry, text, values, form, desc, typing, pformats, rformats, state, rule)
    steps, rules = before + steps, before_rules + rules
    if entry.shape == "into":
        steps = steps + [Step([query(f"DROP TABLE IF EXISTS coal_into_{k}")])]
        rules = rules + [None]
        state.unnamed = None
    return Request(rnd.index, entry, form, values, steps, rules)


def _interpolate(sql: str, values: tuple) -> str:
    def literal(value) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, (Text, Bad)):
            text = value.text
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        return "'" + text.replace("'", "''") + "'"
    return re.sub(r"\$(\d+)", lambda m: literal(values[int(m.group(1)) - 1]), sql)


def _extended(rng, entry: Entry, text: str, values: tuple, form: str, desc: str, typing: str, pformats: str,
              rformats: list[int], state: _State, rule) -> tuple[list[Step], list]:
    kinds = entry.params
    if typing == "alt" and entry.alt:
        kinds = entry.alt + entry.params[len(entry.alt):]
        types = entry.oids(kinds)
    elif typing == "inferred":
        types = rng.choice([(), (0,) * len(kinds)])
        kinds = entry.params
    else:
        types = entry.oids(kinds) if kinds else ()
    parse_fails = "42703" in entry.errors
    inner = {"tx": rng.choice(["named", "unnamed"]), "max_rows": rng.choice(["named", "unnamed"]),
             "pipeline": rng.choice(["named", "unnamed"]), "flush": rng.choice(["named", "unnamed"])}.get(form, form)
    name = f"co_{entry.key}_{'a' if kinds != entry.params else 'n'}" if inner == "named" else ""

    prepare: list[Step] = []  # a Parse/Describe S/Sync of its own before the request (as many drivers do)

    def group(max_rows: int = 0) -> list[Msg]:
        msgs = []
        if inner == "named":
            needed = name not in state.named
        elif inner == "rebind":
            needed = state.unnamed != (text, tuple(kinds))
        else:
            needed = True
        if needed:
            separate = inner == "rebind" or (inner == "named" and form == "named" and rng.random() < 0.4)
            if separate and not parse_fails:
                # The request itself then has no Parse: Bind/Describe?/Execute/Sync.
                prepare.append(Step([parse(name, text, types), describe("S", name), sync()]))
            else:
                msgs.append(parse(name, text, types))
            if inner == "named" and not parse_fails:
                state.named.add(name)
            elif not name:
                state.unnamed = None if parse_fails else (text, tuple(kinds))
        if "S" in desc:
            msgs.append(describe("S", name))
        msgs.append(_bind(rng, name, kinds, values, pformats, rformats, entry.extra_param))
        if "P" in desc:
            msgs.append(describe("P", ""))
        msgs.append(execute("", max_rows))
        return msgs

    if form == "tx":
        state.unnamed = None  # BEGIN and COMMIT are simple queries: each drops the unnamed statement
        msgs = group()
        state.unnamed = None
        return [Step([query("BEGIN")]), Step(msgs + [sync()]), Step([query("COMMIT")])], [None, rule, None]
    if form == "max_rows":
        return [Step(group(rng.choice([1, 2])) + [sync()])], [rule]
    if form == "pipeline":
        return [Step(group() + group() + [sync()])], [rule]
    if form == "flush":
        return [Step(group() + [flush()]), Step([sync()])], [rule, rule]
    request = Step(group() + [sync()])
    return prepare + [request], [None] * len(prepare) + [rule]


def _bind(rng, name: str, kinds: tuple[str, ...], values: tuple, pformats: str, rformats: list[int],
          extra: bool) -> Msg:
    formats = []
    params = []
    for kind, value in zip(kinds, values):
        fmt = {"text": 0, "binary": 1}.get(pformats, rng.choice([0, 1]))
        if isinstance(value, Text):
            fmt = 0
        formats.append(fmt)
        if value is None:
            params.append((fmt, None))
        elif isinstance(value, Text):
            params.append((0, value.text.encode()))
        elif isinstance(value, Bad):
            params.append((fmt, value.binary if fmt else value.text.encode()))
        else:
            params.append((fmt, encode(kind, value if kind not in ("numeric", "uuid", "date") else str(value), fmt)))
    if extra:
        params.append((0, b"1"))
        formats.append(0)
    if not formats or all(f == 0 for f in formats):
        codes = rng.choice([[], [0]]) if formats else []
    elif len(set(formats)) == 1 and rng.random() < 0.5:
        codes = [formats[0]]
    else:
        codes = formats
    return bind("", name, params, codes, rformats)
