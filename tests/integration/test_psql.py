"""psql through pgsluice: queries, errors with their SQLSTATE, notices, COPY in both directions."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest


def psql(target, *args, name="app", stdin=None, text=True, check=False, timeout=30):
    env = dict(os.environ, PGCONNECT_TIMEOUT="10", PGAPPNAME="pgsluice-tests")
    env.pop("PGPASSWORD", None)
    proc = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", target.url(name), *args],
                          input=stdin, capture_output=True, text=text, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"psql {args} failed ({proc.returncode}): {proc.stderr}"
    return proc


def test_psql_runs_queries_and_returns_their_rows(target):
    proc = psql(target, "-c", "select 1 as one", "-c", "select 'x' || 'y', 2 + 3, null::int is null")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1\nxy|5|t\n"
    assert proc.stderr == ""


def test_psql_multi_statement_query_returns_every_result(target):
    proc = psql(target, "-c", "select 1; select 2; select 3")
    assert (proc.returncode, proc.stdout) == (0, "1\n2\n3\n"), proc.stderr


def test_psql_script_with_transaction_and_temp_objects(target):
    script = """
    begin;
    create temp table t_psql(id int, v text) on commit drop;
    insert into t_psql select g, 'v' || g from generate_series(1, 1000) g;
    select count(*), sum(id), max(v) from t_psql;
    commit;
    select current_user, current_database();
    """
    proc = psql(target, stdin=script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1000|500500|v999\napp|app\n"


def test_psql_empty_query_succeeds(target):
    proc = psql(target, "-c", ";", "-c", "select 42")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "42\n", "")


def test_psql_error_is_relayed_with_its_sqlstate(target):
    proc = psql(target, "-v", "VERBOSITY=verbose", "-c", "select * from no_such_table_psql")
    assert proc.returncode == 1
    assert proc.stderr.startswith('ERROR:  42P01: relation "no_such_table_psql" does not exist\n'), proc.stderr


def test_psql_error_then_next_statement_still_runs_without_on_error_stop(target):
    script = "select 1/0;\nselect 'after';\n"
    proc = psql(target, "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=verbose", stdin=script)
    assert proc.returncode == 0
    assert proc.stdout == "after\n"
    assert "ERROR:  22012: division by zero" in proc.stderr


def test_psql_sees_raise_notice(target):
    proc = psql(target, "-c", "DO $$ BEGIN RAISE NOTICE 'pgsluice notice %', 42; END $$", "-c", "select 7")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "NOTICE:  pgsluice notice 42\n"
    assert proc.stdout == "7\n"


ROWS = 100_000


def copy_text_rows(n: int) -> bytes:
    """COPY text format with escapes, NULLs and non-ASCII text, in the canonical form Postgres prints."""
    lines = []
    for i in range(1, n + 1):
        label = f"row-{i}-é€-{hashlib.md5(str(i).encode()).hexdigest()}"
        amount = f"{i * 7 % 100000}.{i % 100:02d}"
        note = r"\N" if i % 7 == 0 else r"tab\there back\\slash new\nline"
        lines.append(f"{i}\t{label}\t{amount}\t{note}\n")
    return "".join(lines).encode()


@pytest.fixture(scope="module")
def copy_table(pg):
    pg.sql("DROP TABLE IF EXISTS copy_rows; "
           "CREATE TABLE copy_rows(id int PRIMARY KEY, label text NOT NULL, amount numeric(12,2), note text)",
           user="app", db="app")
    return "copy_rows"


def test_psql_copy_100k_rows_in_and_out_matches_direct(target, pg, copy_table, tmp_path):
    data = copy_text_rows(ROWS)
    source = tmp_path / "rows.copy"
    source.write_bytes(data)

    # In through the proxy ...
    proc = psql(target, "-c", f"\\copy {copy_table} from '{source}'", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert pg.sql(f"select count(*), sum(id) from {copy_table}", user="app", db="app") == \
        [(ROWS, ROWS * (ROWS + 1) // 2)]

    # ... what Postgres stored, read straight from Postgres, is byte for byte what we sent ...
    query = f"COPY (select * from {copy_table} order by id) TO STDOUT"
    direct = subprocess.run(["psql", "-X", "-q", "-c", query], env=pg.env("app", "app"),
                            capture_output=True, timeout=120)
    assert direct.returncode == 0, direct.stderr
    assert hashlib.sha256(direct.stdout).hexdigest() == hashlib.sha256(data).hexdigest()

    # ... and out through the proxy gives the same bytes again.
    out = psql(target, "-c", query, text=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout) == len(data)
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(direct.stdout).hexdigest()

    # A server-side checksum through the proxy agrees with the one computed straight on Postgres.
    checksum = (f"select md5(string_agg(format('%s|%s|%s|%s', id, label, amount, coalesce(note, '<null>')), "
                f"E'\\n' order by id)) from {copy_table}")
    through = psql(target, "-c", checksum)
    assert through.returncode == 0, through.stderr
    assert through.stdout.strip() == pg.sql(checksum, user="app", db="app")[0][0]


def test_psql_copy_in_with_bad_row_fails_with_22p02_and_stores_nothing(target, pg, copy_table):
    pg.sql("CREATE TABLE IF NOT EXISTS copy_bad(id int, v text)", user="app", db="app")
    proc = psql(target, "-v", "VERBOSITY=verbose", "-c", "\\copy copy_bad from stdin",
                stdin="1\tok\n2\tok\nnot-a-number\tbad\n4\tok\n\\.\n")
    assert proc.returncode == 1
    assert "ERROR:  22P02: invalid input syntax for type integer" in proc.stderr, proc.stderr
    assert pg.sql("select count(*) from copy_bad", user="app", db="app") == [(0,)]
