"""The statements of the coalescing differential test (coalesce.py; DESIGN §4, issue 15): the schema
they read, set up once in the test Postgres, and the corpus — each statement with its parameter kinds,
a generator of parameter values (keys that exist, that do not, NULL, other spellings of the same key,
invalid values), how many columns it returns, and how its rows are compared.

Rows are compared exactly when the statement has an ORDER BY on a total order (or returns at most one
row), and as a multiset when it has no ORDER BY (`ordered=False`): no order is defined there, and a
batched execution may return them in another one. Columns whose values differ from run to run by
nature (nextval) are masked (`masked`): only whether they are NULL is compared. Nothing else is
relaxed.

The data is static (no statement of the corpus changes what another reads) except coal_rw, where each
client only writes and reads its own row, so a request gives the same reply alone on Postgres and among
the others through pgsluice.

Python 3 standard library only.
"""
from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from typing import Callable

from frontend import OID

ITEMS = 3000          # coal_item ids 1..ITEMS; category = id % 97; owner_id = OWNER0 + id % 211
CATEGORIES = 97
OWNER0 = 3_000_000_000  # int8 keys beyond the int4 range
ACCOUNTS = 251          # coal_account ids OWNER0 .. OWNER0 + 250 (211.. own no items)
USERS = 500             # coal_user handle_1 .. handle_500
DOCS = 1000             # coal_doc ids md5('doc' || g)::uuid
TAGGED = 1000           # coal_tag: item i (<= 1000) has i % 4 tags
BIG = 20_000            # coal_big: bucket 0 and 1 have 10 000 rows each

SCHEMA_VERSION = "coalesce-corpus-1"

SCHEMA = [
    # A case-insensitive (accent-sensitive) ICU collation: 'Handle_7' = 'handle_7', 'Straße' = 'STRASSE',
    # 'café' <> 'cafe'. Rows must be routed by what Postgres compares equal, never by the bytes sent.
    "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    """CREATE TABLE coal_item (id int4 PRIMARY KEY, name text NOT NULL, category int4 NOT NULL,
        price numeric(8,2) NOT NULL, owner_id int8 NOT NULL, created date NOT NULL, note text,
        color text COLLATE ci NOT NULL)""",
    f"""INSERT INTO coal_item SELECT g, 'Item ' || g, g % {CATEGORIES}, ((g * 37) % 400) * 1.25,
        {OWNER0} + g % 211, date '2024-01-01' + g % 60,
        CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g % 5 END,
        (ARRAY['Red', 'red', 'RED', 'Blue', 'blue', 'green'])[g % 6 + 1]
        FROM generate_series(1, {ITEMS}) g""",
    "CREATE INDEX ON coal_item (category)",
    "CREATE INDEX ON coal_item (owner_id)",
    "CREATE INDEX ON coal_item (name)",
    "CREATE INDEX ON coal_item (created)",
    "CREATE TABLE coal_account (id int8 PRIMARY KEY, email text NOT NULL, balance numeric(12,2), region text)",
    f"""INSERT INTO coal_account SELECT {OWNER0} + g, 'user' || g || '@example.com', g * 10.5,
        (ARRAY['eu', 'us', 'apac'])[g % 3 + 1] FROM generate_series(0, {ACCOUNTS - 1}) g""",
    "CREATE TABLE coal_user (handle text COLLATE ci PRIMARY KEY, display text NOT NULL, uid uuid NOT NULL UNIQUE)",
    f"""INSERT INTO coal_user SELECT 'handle_' || g, 'Display ' || g, md5('user' || g)::uuid
        FROM generate_series(1, {USERS}) g""",
    """INSERT INTO coal_user VALUES ('café', 'Accented', md5('cafe1')::uuid), ('cafe', 'Plain', md5('cafe2')::uuid),
        ('Straße', 'Eszett', md5('strasse')::uuid), ('Mixed_Case', 'Mixed', md5('mixed')::uuid)""",
    "CREATE TABLE coal_doc (id uuid PRIMARY KEY, title text NOT NULL, item_id int4 NOT NULL)",
    f"""INSERT INTO coal_doc SELECT md5('doc' || g)::uuid, 'Doc ' || g, (g * 3) % {ITEMS} + 1
        FROM generate_series(1, {DOCS}) g""",
    "CREATE TABLE coal_price (sku text PRIMARY KEY, price numeric(8,2) NOT NULL)",
    "INSERT INTO coal_price SELECT 'SKU-' || lpad(g::text, 4, '0'), (g % 40) * 1.25 FROM generate_series(1, 800) g",
    "CREATE INDEX ON coal_price (price)",
    "CREATE TABLE coal_tag (item_id int4 NOT NULL, tag text NOT NULL, PRIMARY KEY (item_id, tag))",
    f"INSERT INTO coal_tag SELECT i, 'tag-' || t FROM generate_series(1, {TAGGED}) i, generate_series(1, i % 4) t",
    "CREATE TABLE coal_big (id int4 PRIMARY KEY, bucket int4 NOT NULL, payload text NOT NULL)",
    f"INSERT INTO coal_big SELECT g, g % 2, 'payload-' || g FROM generate_series(1, {BIG}) g",
    "CREATE INDEX ON coal_big (bucket)",
    "CREATE TABLE coal_part (id int4 PRIMARY KEY, v text NOT NULL) PARTITION BY RANGE (id)",
    "CREATE TABLE coal_part_1 PARTITION OF coal_part FOR VALUES FROM (1) TO (1001)",
    "CREATE TABLE coal_part_2 PARTITION OF coal_part FOR VALUES FROM (1001) TO (2001)",
    "INSERT INTO coal_part SELECT g, 'part-' || g FROM generate_series(1, 2000) g",
    """CREATE MATERIALIZED VIEW coal_item_stats AS
        SELECT category, count(*) AS n, sum(price) AS total FROM coal_item GROUP BY category""",
    "CREATE UNIQUE INDEX ON coal_item_stats (category)",
    "CREATE VIEW coal_item_view AS SELECT id, name, category FROM coal_item",
    "CREATE SEQUENCE coal_seq",
    # Volatile by declaration, deterministic in fact: its replies can be compared exactly.
    "CREATE FUNCTION coal_double(int) RETURNS int LANGUAGE sql VOLATILE AS 'SELECT $1 * 2'",
    "CREATE FUNCTION coal_label(int) RETURNS text LANGUAGE sql STABLE AS $$SELECT 'label-' || $1$$",
    "CREATE TABLE coal_rw (client int4 PRIMARY KEY, v int4 NOT NULL)",
    "CREATE TABLE coal_log (k int4)",
    f"CREATE TABLE coal_schema_version (v text); INSERT INTO coal_schema_version VALUES ('{SCHEMA_VERSION}')",
    "ANALYZE",
]


def setup(pg, user: str = "app", db: str = "app") -> None:
    """Creates the corpus's tables once per Postgres (a second call sees them and does nothing)."""
    exists = pg.sql("SELECT to_regclass('coal_schema_version') IS NOT NULL", user=user, db=db)[0][0]
    if exists:
        return
    pg.sql(";\n".join(SCHEMA), user=user, db=db)


def reset(pg, clients: int, user: str = "app", db: str = "app") -> None:
    """What the corpus writes, back to its start: each client's coal_rw row, coal_log, coal_into_<k>."""
    into = ", ".join(f"coal_into_{k}" for k in range(clients))
    pg.sql(f"TRUNCATE coal_rw, coal_log; INSERT INTO coal_rw SELECT g, 0 FROM generate_series(0, {clients - 1}) g; "
           f"DROP TABLE IF EXISTS {into}", user=user, db=db)


# -- parameter values ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Text:
    """A value always sent in text format, spelled exactly so: another spelling of a valid key
    ('042', 'Handle_7', an upper-case uuid, '7.5000') or an invalid value ('abc')."""

    text: str


@dataclass(frozen=True)
class Bad:
    """An invalid value in either format: `text` when sent as text, `binary` when sent as binary."""

    text: str
    binary: bytes


def doc_uuid(g: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"doc{g}".encode()).hexdigest()))


def user_uuid(g: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"user{g}".encode()).hexdigest()))


Gen = Callable[[random.Random, bool], object]  # (rng, invalid values allowed) -> one value


def _roll(rng: random.Random, bad: bool, hit: Callable[[], object], miss: Callable[[], object],
          spelled: Callable[[], object] | None, invalid: Callable[[], object] | None,
          null: float = 0.06) -> object:
    r = rng.random()
    if bad and invalid is not None and r < 0.12:
        return invalid()
    r = rng.random()
    if r < null:
        return None
    if r < 0.18 and spelled is not None:
        return spelled()
    if r < 0.30:
        return miss()
    return hit()


def item_id(rng: random.Random, bad: bool) -> object:
    return _roll(rng, bad, lambda: rng.randint(1, ITEMS),
                 lambda: rng.choice([0, -1, ITEMS + 1, 99_999, 2_147_483_647]),
                 lambda: Text(rng.choice(["0{}", "+{}", " {}", "{} ", "00{}"]).format(rng.randint(1, 60))),
                 lambda: rng.choice([Bad("abc", b"\x00\x00\x00\x01\x02"), Text("3000000000"), Text("4.5"),
                                     Text(""), Bad("1e3", b"\x01")]))


def tagged_item(rng: random.Random, bad: bool) -> object:
    return _roll(rng, bad, lambda: rng.randint(1, 40), lambda: rng.choice([0, 4, 8, TAGGED + 5]),
                 lambda: Text(f"0{rng.randint(1, 40)}"), lambda: Text("x1"))


def category(rng: random.Random, bad: bool) -> object:
    # 97 .. 120 match no row: count(*) must still answer 0.
    return _roll(rng, bad, lambda: rng.randint(0, CATEGORIES - 1), lambda: rng.randint(CATEGORIES, 120),
                 lambda: Text(f"+{rng.randint(0, 20)}"), lambda: Bad("seven", b"\x07"))


def owner(rng: random.Random, bad: bool) -> object:
    return _roll(rng, bad, lambda: OWNER0 + rng.randint(0, 210),
                 lambda: rng.choice([OWNER0 + rng.randint(211, 300), 7, -OWNER0]),
                 lambda: Text(f"0{OWNER0 + rng.randint(0, 30)}"),
                 lambda: Bad("9223372036854775808", b"\x00\x01"))


def account(rng: random.Random, bad: bool) -> object:
    return _roll(rng, bad, lambda: OWNER0 + rng.randint(0, ACCOUNTS - 1),
                 lambda: rng.choice([OWNER0 - 1, OWNER0 + 10_000, 1]),
                 lambda: Text(f" {OWNER0 + rng.randint(0, 20)}"), lambda: Text("3e9"))


def handle(rng: random.Random, bad: bool) -> object:
    def spelled() -> object:
        n = rng.randint(1, 25)
        return rng.choice([f"Handle_{n}", f"HANDLE_{n}", f"hAnDlE_{n}", "CAFÉ", "Café", "STRASSE", "strasse",
                           "straße", "mixed_case", "MIXED_CASE"])
    return _roll(rng, bad, lambda: f"handle_{rng.randint(1, 25)}",
                 lambda: rng.choice(["nobody", "handle_0", "handle_7 ", " handle_7", "cafe\u0301x", "handle"]),
                 spelled, None)


def item_name(rng: random.Random, bad: bool) -> object:
    # Deterministic collation "C": 'item 7' is not 'Item 7'.
    n = rng.randint(1, 40)
    return _roll(rng, bad, lambda: f"Item {n}", lambda: rng.choice([f"Item {n} ", "Item", "Item 0", "nothing"]),
                 lambda: rng.choice([f"item {n}", f"ITEM {n}"]), None)


def color(rng: random.Random, bad: bool) -> object:
    return _roll(rng, bad, lambda: rng.choice(["red", "blue", "green"]), lambda: rng.choice(["purple", "re d"]),
                 lambda: rng.choice(["Red", "RED", "rEd", "BLUE", "Green"]), None)


def doc(rng: random.Random, bad: bool) -> object:
    def spelled() -> object:
        u = doc_uuid(rng.randint(1, 30))
        return Text(rng.choice([u.upper(), "{" + u + "}", u.replace("-", ""), u.upper().replace("-", "")]))
    return _roll(rng, bad, lambda: doc_uuid(rng.randint(1, 30)),
                 lambda: rng.choice([str(uuid.UUID(int=rng.getrandbits(128))), "00000000-0000-0000-0000-000000000000"]),
                 spelled, lambda: rng.choice([Bad("not-a-uuid", b"\x01\x02\x03"), Text("")]))


def user_uid(rng: random.Random, bad: bool) -> object:
    return _roll(rng, bad, lambda: user_uuid(rng.randint(1, 25)), lambda: user_uuid(USERS + 7),
                 lambda: Text(user_uuid(rng.randint(1, 25)).upper()), None)


def price(rng: random.Random, bad: bool) -> object:
    # coal_price.price is (g % 40) * 1.25: 7.50 is there, and the same value spelled 7.5 and 7.5000.
    def spelled() -> object:
        return rng.choice(["7.5", "7.5000", "7.50", "12.5", "1.25e1", "0", "-0", "0.00", "48.750"])
    return _roll(rng, bad, lambda: f"{rng.randint(0, 39) * 1.25:.2f}",
                 lambda: rng.choice(["7.501", "7.500000001", "100", "-1.25", "NaN", "0.01"]),
                 spelled, lambda: rng.choice([Bad("abc", b"\x00\x01"), Text("1,25"), Text("")]))


def big_bucket(rng: random.Random, bad: bool) -> object:
    return rng.choice([0, 1, 1, 0, 2])


def limit(rng: random.Random, bad: bool) -> object:
    if bad and rng.random() < 0.2:
        return -1  # 2201W
    return rng.choice([0, 1, 2, 3, 5, 100, None])  # LIMIT NULL is no limit


def offset(rng: random.Random, bad: bool) -> object:
    if bad and rng.random() < 0.2:
        return -2  # 2201X
    return rng.choice([0, 1, 3, 10, 40, None])


def divisor(rng: random.Random, bad: bool) -> object:
    return rng.choice([1, 2, 7, -3, 0] if bad else [1, 2, 7, -3, None])


def note(rng: random.Random, bad: bool) -> object:
    return rng.choice([None, None, "note 1", "note 4", "none", ""])


def day(rng: random.Random, bad: bool) -> object:
    # Under DateStyle DMY '02/01/2024' is the 2nd of January, under MDY the 1st of February: the
    # same bytes are another key for clients with other session settings.
    d = rng.randint(1, 28)
    return _roll(rng, bad, lambda: f"2024-01-{d:02d}", lambda: rng.choice(["2023-12-31", "2025-01-01"]),
                 lambda: Text(rng.choice([f"2024-1-{d}", f"01/{d:02d}/2024", "02/01/2024", f"Jan {d} 2024",
                                          f"2024{1:02d}{d:02d}"])),
                 lambda: rng.choice([Text("2024-02-30"), Bad("yesterday-ish", b"\x00")]))


def flag(rng: random.Random, bad: bool) -> object:
    return rng.choice([True, False, None, Text("yes"), Text("0")] + ([Text("maybe")] if bad else []))


def small_int(rng: random.Random, bad: bool) -> object:
    return rng.choice([1, 2, 3, 42, -7, None] + ([Text("2147483648")] if bad else []))


def rw_value(rng: random.Random, bad: bool) -> object:
    return None  # filled with the client's own number (coalesce.py)


def log_value(rng: random.Random, bad: bool) -> object:
    return rng.randint(1, 1000)


def scale_value(rng: random.Random, bad: bool) -> object:
    # numeric(6,2): 1234.5678 rounds to 1234.57; 12345.6 overflows (22003)
    return rng.choice(["7.5", "7.50", "1234.5678", "-0.005", "0.004", None] + (["12345.6"] if bad else []))


# -- the corpus -----------------------------------------------------------------------------------------

# Errors a value generator can cause on purpose: invalid text (22P02), out of range (22003), bad binary
# (22P03), wrong datetime (22008), negative LIMIT/OFFSET (2201W/2201X), division by zero (22012).
VALUE_ERRORS = frozenset({"22P02", "22003", "22P03", "22008", "22007", "2201W", "2201X", "22012", "08P01"})


@dataclass(frozen=True)
class Entry:
    """A statement of the corpus.

    params: the kinds of its parameters, as the server infers them from the text (so binary values are
    encoded right when Parse names no types); alt: other kinds Parse may declare instead. cols: result
    columns (for per-column result formats). ordered: a total ORDER BY or at most one row. masked:
    columns compared only for NULL-ness. eligible: coalescable by the contract (an ineligible one must
    pass through unchanged). shape: 'select' (one request), 'into' (SELECT INTO a table of the
    client's own, {client} in the text, then DROP it), 'rw' (update the client's own row, then read
    it: read-your-writes), 'set' (a session setting). errors: SQLSTATEs its direct run may answer
    besides the invalid values' (anything else means the corpus is wrong). max_clients: at most this
    many clients send it in one round."""

    key: str
    sql: str
    params: tuple[str, ...]
    gens: tuple[Gen, ...]
    cols: int
    ordered: bool = True
    eligible: bool = True
    masked: frozenset = frozenset()
    alt: tuple[str, ...] = ()
    shape: str = "select"
    errors: frozenset = frozenset()
    max_clients: int = 0
    simple: bool = True          # has a simple-query form (literals interpolated)
    extra_param: bool = False    # Bind sends one parameter too many (08P01)
    note: str = ""
    tags: tuple[str, ...] = field(default=())

    def oids(self, kinds: tuple[str, ...] | None = None) -> tuple[int, ...]:
        return tuple(OID[k] for k in (kinds or self.params))


def E(key, sql, params=(), gens=(), cols=1, **kw) -> Entry:
    return Entry(key, " ".join(sql.split()), tuple(params), tuple(gens), cols, **kw)


ITEM_COLS = "id, name, category, price, owner_id, created, note"

CORPUS: list[Entry] = [
    # -- lookups by a unique key of each type --------------------------------------------------------
    E("item_by_id", f"SELECT {ITEM_COLS} FROM coal_item WHERE id = $1", ["int4"], [item_id], 7, alt=("int8",),
      tags=("int4",)),
    E("item_star", "SELECT * FROM coal_item WHERE id = $1", ["int4"], [item_id], 8, tags=("int4",)),
    E("account_by_id", "SELECT id, email, balance, region FROM coal_account WHERE id = $1", ["int8"], [account], 4,
      alt=("numeric",), tags=("int8",)),
    E("user_by_handle", "SELECT handle, display, uid FROM coal_user WHERE handle = $1", ["text"], [handle], 3,
      tags=("text", "ci")),
    E("user_by_handle_echo", "SELECT $1::text AS asked, handle, display FROM coal_user WHERE handle = $1",
      ["text"], [handle], 3, tags=("text", "ci")),
    E("user_by_uid", "SELECT uid, handle FROM coal_user WHERE uid = $1", ["uuid"], [user_uid], 2,
      tags=("uuid",)),
    E("doc_by_uuid", "SELECT id, title, item_id FROM coal_doc WHERE id = $1", ["uuid"], [doc], 3, tags=("uuid",)),
    E("doc_by_uuid_text", "SELECT id::text AS id, title FROM coal_doc WHERE id = $1::uuid", ["text"], [doc], 2,
      tags=("uuid",), note="the uuid sent as text and cast"),
    E("price_lookup", "SELECT sku, price FROM coal_price WHERE price = $1 ORDER BY sku", ["numeric"], [price], 2,
      tags=("numeric", "non-unique")),
    E("price_echo", "SELECT $1::numeric AS asked, sku FROM coal_price WHERE price = $1 ORDER BY sku LIMIT 3",
      ["numeric"], [price], 2, tags=("numeric",), note="each client sees its own spelling of the key"),
    E("name_exact", "SELECT id, category FROM coal_item WHERE name = $1", ["text"], [item_name], 2,
      tags=("text",), note="deterministic collation: 'item 7' is not 'Item 7'"),
    E("color_ci", "SELECT id, color FROM coal_item WHERE color = $1 AND category = $2 ORDER BY id",
      ["text", "int4"], [color, category], 2, tags=("ci", "non-unique")),
    E("partitioned", "SELECT id, v FROM coal_part WHERE id = $1", ["int4"], [item_id], 2, tags=("partitioned",)),
    E("matview", "SELECT category, n, total FROM coal_item_stats WHERE category = $1", ["int4"], [category], 3,
      tags=("matview",)),
    # -- non-unique keys, ORDER BY, LIMIT, OFFSET ----------------------------------------------------
    E("items_by_owner", "SELECT id, name FROM coal_item WHERE owner_id = $1 ORDER BY id", ["int8"], [owner], 2,
      tags=("int8", "non-unique")),
    E("items_by_category", "SELECT id, name, price FROM coal_item WHERE category = $1 ORDER BY id", ["int4"],
      [category], 3, tags=("non-unique",)),
    E("items_by_category_unordered", "SELECT id, price FROM coal_item WHERE category = $1", ["int4"], [category], 2,
      ordered=False, tags=("non-unique", "unordered")),
    E("category_top3", "SELECT id, name FROM coal_item WHERE category = $1 ORDER BY id DESC LIMIT 3", ["int4"],
      [category], 2, tags=("limit",)),
    E("category_limit_param", "SELECT id FROM coal_item WHERE category = $1 ORDER BY id LIMIT $2",
      ["int4", "int8"], [category, limit], 1, tags=("limit",)),
    E("category_offset", "SELECT id FROM coal_item WHERE category = $1 ORDER BY id LIMIT 5 OFFSET $2",
      ["int4", "int8"], [category, offset], 1, tags=("limit",)),
    E("part_range", "SELECT id, v FROM coal_part WHERE id >= $1 ORDER BY id LIMIT 4", ["int4"], [item_id], 2,
      tags=("partitioned", "limit")),
    E("in_two", "SELECT id, name FROM coal_item WHERE id IN ($1, $2) ORDER BY id", ["int4", "int4"],
      [item_id, item_id], 2, note="the same key twice in one request, sometimes"),
    E("between", "SELECT id FROM coal_item WHERE id BETWEEN $1 AND $1 + 4 ORDER BY id", ["int4"], [item_id], 1),
    E("date_key", "SELECT id, created FROM coal_item WHERE created = $1 ORDER BY id LIMIT 4", ["date"], [day], 2,
      tags=("date", "settings")),
    E("big_10k", "SELECT id, bucket, payload FROM coal_big WHERE bucket = $1 ORDER BY id", ["int4"], [big_bucket],
      3, max_clients=6, tags=("10k",), note="10 000 rows"),
    # -- aggregates, count(*) with no rows, joins --------------------------------------------------------
    E("count_by_category", "SELECT count(*) FROM coal_item WHERE category = $1", ["int4"], [category], 1,
      tags=("count",)),
    E("agg_by_category", "SELECT count(*) AS n, sum(price) AS total, min(name) AS first, max(id) AS last "
                         "FROM coal_item WHERE category = $1", ["int4"], [category], 4, tags=("count",)),
    E("group_by_owner", "SELECT category, count(*) AS n FROM coal_item WHERE owner_id = $1 "
                        "GROUP BY category ORDER BY category", ["int8"], [owner], 2),
    E("group_unordered", "SELECT category, count(*) AS n FROM coal_item WHERE owner_id = $1 GROUP BY category",
      ["int8"], [owner], 2, ordered=False, tags=("unordered",)),
    E("distinct_categories", "SELECT DISTINCT category FROM coal_item WHERE owner_id = $1 ORDER BY category",
      ["int8"], [owner], 1),
    E("null_not_distinct", "SELECT count(*) FROM coal_item WHERE note IS NOT DISTINCT FROM $1", ["text"], [note], 1,
      tags=("null",), note="a NULL parameter matches the NULL notes"),
    E("join_account", "SELECT i.id, i.name, a.email FROM coal_item i JOIN coal_account a ON a.id = i.owner_id "
                      "WHERE i.id = $1", ["int4"], [item_id], 3, tags=("join",)),
    E("join_tags", "SELECT t.tag, i.name FROM coal_tag t JOIN coal_item i ON i.id = t.item_id WHERE t.item_id = $1 "
                   "ORDER BY t.tag", ["int4"], [tagged_item], 2, tags=("join",)),
    E("tags_unordered", "SELECT tag FROM coal_tag WHERE item_id = $1", ["int4"], [tagged_item], 1, ordered=False,
      tags=("unordered",)),
    E("left_join_count", "SELECT a.id, a.email, count(i.id) AS items FROM coal_account a "
                         "LEFT JOIN coal_item i ON i.owner_id = a.id WHERE a.id = $1 GROUP BY a.id, a.email",
      ["int8"], [account], 3, tags=("join", "count")),
    E("array_agg", "SELECT item_id, array_agg(tag ORDER BY tag) AS tags FROM coal_tag WHERE item_id = $1 "
                   "GROUP BY item_id", ["int4"], [tagged_item], 2),
    E("exists", "SELECT EXISTS (SELECT 1 FROM coal_tag WHERE item_id = $1) AS has_tags", ["int4"], [tagged_item], 1),
    E("scalar_subquery", "SELECT i.id, (SELECT count(*) FROM coal_tag t WHERE t.item_id = i.id) AS tags "
                         "FROM coal_item i WHERE i.id = $1", ["int4"], [tagged_item], 2),
    E("cte", "WITH c AS (SELECT id, price FROM coal_item WHERE category = $1) SELECT count(*), max(price) FROM c",
      ["int4"], [category], 2),
    E("union_all", "SELECT id, 'item' AS src FROM coal_item WHERE id = $1 UNION ALL "
                   "SELECT item_id, tag FROM coal_tag WHERE item_id = $1 ORDER BY 2, 1", ["int4"], [tagged_item], 2),
    E("window", "SELECT id, row_number() OVER (ORDER BY id) AS rn, sum(price) OVER (ORDER BY id) AS running "
                "FROM coal_item WHERE category = $1 ORDER BY id", ["int4"], [category], 3),
    E("never_rows", "SELECT id, name FROM coal_item WHERE id = $1 AND category < 0", ["int4"], [item_id], 2,
      tags=("no rows",)),
    E("coalesce_param", "SELECT id, name FROM coal_item WHERE id = coalesce($1, 1)", ["int4"], [item_id], 2,
      tags=("null",)),
    E("bool_param", "SELECT count(*) FROM coal_item WHERE (category % 2 = 0) = $1 AND owner_id = $2",
      ["bool", "int8"], [flag, owner], 1),
    # -- output that depends on the session (DateStyle, TimeZone, extra_float_digits, application_name) ------
    E("timestamps", "SELECT id, created::timestamptz AS at, created + interval '1 hour 30 minutes' AS later "
                    "FROM coal_item WHERE id = $1", ["int4"], [item_id], 3, tags=("settings",)),
    E("floats", "SELECT id, price::float8 / 3 AS third, price::float4 / 7 AS f4 FROM coal_item WHERE id = $1",
      ["int4"], [item_id], 3, tags=("settings",)),
    E("setting_app", "SELECT current_setting('application_name') AS app, id FROM coal_item WHERE id = $1",
      ["int4"], [item_id], 2, tags=("settings",)),
    E("builtins", "SELECT id, upper(name) AS up, length(name) AS len, lower(note) AS low, "
                  "to_char(price, 'FM99990.00') AS p FROM coal_item WHERE id = $1", ["int4"], [item_id], 5),
    # -- no relation, no parameter ------------------------------------------------------------------
    E("count_all", "SELECT count(*) AS n, sum(price) AS total FROM coal_item", [], [], 2,
      note="no parameters: identical requests share one execution"),
    E("constant", "SELECT 1 AS one, 'x'::text AS x", [], [], 2),
    E("param_only", "SELECT $1::int4 + 1 AS next", ["int4"], [small_int], 1),
    E("numeric_typmod", "SELECT $1::numeric(6,2) AS rounded, (SELECT count(*) FROM coal_price "
                        "WHERE price = $1::numeric(6,2)) AS n", ["numeric"], [scale_value], 2),
    # -- errors a batch must not share -------------------------------------------------------------
    E("div_by_param", "SELECT id, 1000 / $2 AS q FROM coal_item WHERE id = $1", ["int4", "int4"],
      [item_id, divisor], 2, note="22012 only for the requests whose row exists and whose divisor is 0"),
    E("parse_error", "SELECT no_such_column FROM coal_item WHERE id = $1", ["int4"], [item_id], 1,
      errors=frozenset({"42703"}), simple=True),
    E("extra_param", f"SELECT {ITEM_COLS} FROM coal_item WHERE id = $1", ["int4"], [item_id], 7, extra_param=True,
      simple=False, note="Bind sends two values for one parameter: 08P01"),
    # -- ineligible: must pass through unchanged --------------------------------------------------------
    E("view", "SELECT id, name, category FROM coal_item_view WHERE id = $1", ["int4"], [item_id], 3,
      eligible=False, note="a plain view (not coalesced unless allowed)"),
    E("for_update", "SELECT id, name FROM coal_item WHERE id = $1 FOR UPDATE", ["int4"], [item_id], 2,
      eligible=False),
    E("for_share", "SELECT id FROM coal_item WHERE category = $1 ORDER BY id FOR SHARE", ["int4"], [category], 1,
      eligible=False),
    E("nextval", "SELECT nextval('coal_seq') AS n, $1::int4 AS k", ["int4"], [small_int], 2, eligible=False,
      masked=frozenset({0})),
    E("volatile_udf", "SELECT coal_double($1) AS d", ["int4"], [small_int], 1, eligible=False),
    E("volatile_builtins", "SELECT id, random() >= 0 AS r, clock_timestamp() > '2000-01-01' AS later "
                           "FROM coal_item WHERE id = $1", ["int4"], [item_id], 3, eligible=False),
    E("stable_udf", "SELECT id, coal_label(id) AS label FROM coal_item WHERE id = $1", ["int4"], [item_id], 2,
      eligible=False, note="a user-defined STABLE function: not a built-in"),
    E("modifying_cte", "WITH ins AS (INSERT INTO coal_log (k) VALUES ($1) RETURNING k) SELECT k FROM ins",
      ["int4"], [log_value], 1, eligible=False),
    E("tablesample", "SELECT count(*) FROM coal_item TABLESAMPLE BERNOULLI (100) REPEATABLE (7) WHERE category = $1",
      ["int4"], [category], 1, eligible=False),
    # A permanent table of the client's own ({client}): SELECT INTO TEMP does not pin the session yet
    # (known_issues.py, select_into_temp_does_not_pin), which is not the coalescer's to fix.
    E("select_into", "SELECT id, name INTO coal_into_{client} FROM coal_item WHERE id = $1", ["int4"], [item_id],
      0, eligible=False, shape="into", max_clients=8, note="then DROP TABLE coal_into_<client>"),
    E("read_your_write", "SELECT client, v FROM coal_rw WHERE client = $1", ["int4"], [rw_value], 2, shape="rw",
      note="after UPDATE coal_rw SET v = v + 1 of the client's own row: it must read its write"),
    E("set_setting", "", [], [], 0, eligible=False, shape="set",
      note="SET/RESET of extra_float_digits, TimeZone, DateStyle: later requests differ by session"),
]

BY_KEY = {e.key: e for e in CORPUS}
assert len(BY_KEY) == len(CORPUS), "corpus keys must be unique"

SETTINGS = [
    "SET extra_float_digits = 0", "SET extra_float_digits = 3", "RESET extra_float_digits",
    "SET TimeZone = 'UTC'", "SET TimeZone = 'Asia/Kolkata'", "RESET TimeZone",
    "SET DateStyle = 'ISO, DMY'", "SET DateStyle = 'SQL, MDY'", "RESET DateStyle",
]

# Startup parameters by client group (client k: STARTUP[k % len]). The groups differ in what the
# server's output depends on, so a shared execution across groups would show. DateStyle is spelled as
# Postgres reports it back: pgsluice echoes the spelling a client sent (known_issues.py,
# startup_parameter_reported_as_sent_not_as_set), which is not the coalescer's to fix.
STARTUP = [
    {},
    {"DateStyle": "SQL, DMY"},
    {"TimeZone": "Asia/Tokyo"},
    {"extra_float_digits": "0"},
    {"DateStyle": "German, DMY", "TimeZone": "America/New_York"},
]


def startup_params(k: int) -> dict:
    group = k % len(STARTUP)
    return {"application_name": f"coal-g{group}", **STARTUP[group]}
