"""The statement texts the generator draws from (sequences.py): texts shared by every client (they
only read diff_shared or constants), texts of one client (they write only its table diff_c<k>),
texts that fail, simple-query statements, and the settings SET and SHOW use.

Nothing here reads the clock, random(), a pid or an OID, and every query that returns several rows
orders them, so that a text gives the same rows alone and among other clients.
"""
from __future__ import annotations

from dataclasses import dataclass

# Templates whose parameter types the server infers to the kinds given when Parse names none.
INFERABLE = {"by_id", "range", "series", "name_lookup", "flag_count", "c_insert", "c_update", "c_delete",
             "c_returning", "c_above"}


@dataclass(frozen=True)
class Template:
    """A statement text. params: the kinds of its parameters; types: the OIDs sent in Parse (0: the
    server infers; shorter than params is allowed). rows: about how many rows it returns (-1: not a
    query that returns rows). error: where it fails if it always does ('parse', 'bind', 'execute')."""

    key: str
    sql: str
    params: tuple[str, ...] = ()
    types: tuple[int, ...] = ()
    rows: int = 1
    error: str = ""
    values: tuple = ()  # per parameter: (lo, hi) for numbers, a tuple of choices for text/bool/None


def shared_templates() -> list[Template]:
    return [
        Template("by_id", "SELECT id, name, val FROM diff_shared WHERE id = $1", ("int4",), (23,), 1, values=((1, 60),)),
        Template("range", "SELECT id, name FROM diff_shared WHERE id BETWEEN $1 AND $2 ORDER BY id",
                 ("int4", "int4"), (23, 23), 8, values=((1, 20), (10, 40))),
        Template("sum_infer", "SELECT $1::int + $2::int AS sum", ("int4", "int4"), (0, 0), 1,
                 values=((-50, 50), (0, 9))),
        Template("series", "SELECT n, n * n AS sq FROM generate_series(1, $1) AS n", ("int4",), (23,), 6,
                 values=((0, 9),)),
        Template("types", "SELECT name, val, f, flag, ts, tags FROM diff_shared ORDER BY id LIMIT $1",
                 ("int8",), (20,), 4, values=((0, 7),)),
        Template("echo_text", "SELECT $1::text AS t, length($1::text) AS len", ("text",), (25,), 1,
                 values=(("a", "hello", "ünïcode", "", "x y z", "tab\there"),)),
        Template("echo_int", "SELECT $1 AS v", ("int4",), (23,), 1, values=((-5, 5),)),
        Template("echo_txt", "SELECT $1 AS v", ("text",), (25,), 1, values=(("p", "q"),)),
        Template("flag_count", "SELECT count(*) AS c FROM diff_shared WHERE flag = $1", ("bool",), (16,), 1,
                 values=((True, False),)),
        Template("float", "SELECT $1::float8 * 3 AS f3, 1.0::float8 / 3 AS third", ("float8",), (701,), 1,
                 values=((0.1, 2.5, -1.75, 1e10),)),
        Template("values", "VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four')", (), (), 4),
        Template("one", "SELECT 1 AS one", (), (), 1),
        Template("name_lookup", "SELECT id FROM diff_shared WHERE name = $1", ("text",), (25,), 1,
                 values=(("name-3", "name-17", "nobody"),)),
        Template("nulls", "SELECT $1::int IS NULL AS isnull, coalesce($1::int, -1) AS v", ("int4",), (23,), 1,
                 values=((None, 4),)),
        Template("empty", "", (), (), -1),
        Template("settings", "SELECT current_setting('work_mem') AS wm, current_setting('TimeZone') AS tz, "
                             "current_setting('extra_float_digits') AS efd", (), (), 1),
        Template("numeric", "SELECT $1::numeric * 2 AS twice", ("numeric",), (1700,), 1,
                 values=(("1.5", "-0.25", "12345678901234567890.5"),)),
    ]


def client_templates(k: int) -> list[Template]:
    t = f"diff_c{k}"
    return [
        Template("c_insert", f"INSERT INTO {t} (id, note, n) VALUES ($1, $2, $3)", ("int4", "text", "int4"),
                 (23, 25, 23), -1, values=((1, 40), (f"c{k}-a", f"c{k}-b", "x"), (0, 99))),
        Template("c_update", f"UPDATE {t} SET n = n + $2 WHERE id = $1", ("int4", "int4"), (23, 23), -1,
                 values=((1, 40), (1, 5))),
        Template("c_delete", f"DELETE FROM {t} WHERE id = $1", ("int4",), (23,), -1, values=((1, 40),)),
        Template("c_all", f"SELECT id, note, n FROM {t} ORDER BY id", (), (), 6),
        Template("c_count", f"SELECT count(*) AS c, sum(n) AS s, {k} AS k FROM {t}", (), (), 1),
        Template("c_bulk", f"INSERT INTO {t} (id, note, n) SELECT g, 'bulk', g FROM generate_series($1::int, $1::int + 3) g",
                 ("int4",), (0,), -1, values=((41, 90),)),
        # RETURNING comes in heap order, which page pruning (and so other sessions) can change: sorted.
        Template("c_returning", f"WITH u AS (UPDATE {t} SET note = note || '+' WHERE id <= $1 RETURNING id, note) "
                                f"SELECT id, note FROM u ORDER BY id",
                 ("int4",), (23,), 3, values=((0, 8),)),
        Template("c_above", f"SELECT id FROM {t} WHERE n > $1 ORDER BY id", ("int4",), (23,), 4, values=((0, 30),)),
        Template("c_const", f"SELECT {k} AS client, $1::text AS tag", ("text",), (25,), 1, values=(("t1", "t2"),)),
    ]


ERROR_TEMPLATES = [
    # fails at Execute (22012); with a non-zero parameter it does not
    Template("div0", "SELECT 100 / $1::int AS q", ("int4",), (23,), 1, "", values=((0, 0),)),
    Template("missing", "SELECT * FROM diff_missing_table", (), (), 1, "parse"),
    Template("syntax", "SELEC 1", (), (), 1, "parse"),
    Template("const_div0", "SELECT 1 / 0 AS boom", (), (), 1, "execute"),
    Template("bad_cast", "SELECT 'x'::int AS bad", (), (), 1, "parse"),
]

# Simple-query statements of client k, each with whether it fails; joined with ";" into one Query.
def simple_statements(k: int) -> list[tuple[str, bool]]:
    t = f"diff_c{k}"
    return [
        ("SELECT id, name FROM diff_shared WHERE id < 4 ORDER BY id", False),
        ("SELECT count(*) FROM diff_shared", False),
        (f"SELECT id, note, n FROM {t} ORDER BY id", False),
        (f"INSERT INTO {t} (id, note, n) VALUES (100 + {k}, 'simple', 1) ON CONFLICT (id) DO UPDATE SET n = {t}.n + 1", False),
        (f"UPDATE {t} SET n = n * 2 WHERE id % 3 = 0", False),
        (f"DELETE FROM {t} WHERE id > 95", False),
        ("SELECT 'simple-' || 2 + 3", True),   # 42883: operator does not exist: text + integer
        ("SELECT 1 / 0", True),
        ("SELECT * FROM diff_missing_table", True),
        ("VALUES (1.5::float8 / 7, 'x')", False),
        ("SELECT f, ts, val FROM diff_shared WHERE id = 5", False),
        ("", False),  # an empty statement among others
    ]


SETTINGS = {
    # reported (ParameterStatus) settings
    "TimeZone": ["'UTC'", "'Asia/Tokyo'", "'America/New_York'"],
    "DateStyle": ["'ISO, MDY'", "'ISO, DMY'", "'SQL, DMY'", "'German'"],
    "IntervalStyle": ["'postgres'", "'iso_8601'", "'sql_standard'"],
    "application_name": ["'diff-app-{k}'", "'other-{k}'"],
    # not reported: the client learns them only by asking
    "work_mem": ["'{n}MB'"],
    "extra_float_digits": ["0", "1", "-2", "3"],
    "statement_timeout": ["'{n}00s'", "0"],
    "search_path": ["public", "pg_catalog, public", "\"$user\", public"],  # a list, not one quoted name
    "enable_seqscan": ["on", "off"],
    "lock_timeout": ["'{n}0s'", "0"],
}

SHOW_PROBES = [
    "SELECT f, ts, val, '1 day 02:03:04'::interval AS iv FROM diff_shared WHERE id = 7",
    "SELECT current_setting('work_mem'), current_setting('statement_timeout'), current_setting('search_path')",
    "SELECT current_setting('enable_seqscan'), current_setting('lock_timeout'), current_setting('application_name')",
]

STATEMENT_NAMES = ["s0", "s1", "s2", "stmt_A", "q"]
PORTAL_NAMES = ["p1", "p2"]
SQL_PREPARE_NAMES = ["sp1", "sp2", "sp3", "s1"]  # s1: the protocol and SQL share one namespace
