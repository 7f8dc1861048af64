"""The differences the differential test found in pgsluice, each as a small deterministic reproduction.

Each issue is a script: steps of one or more clients in a fixed order (differential.run_script), run
through a fresh pgsluice in the pool mode(s) named and, client by client, on a direct connection to
Postgres. A reproduction shows the first differing reply: what Postgres answers (expected) and what
the client got through pgsluice (actual). `feature` is the generator feature that found it.

Open issues: their feature is left out of differential.DEFAULT_FEATURES for that pool mode. Fixed
issues (FIXED, per pool mode) stay here as regression tests: tests/integration/test_differential.py
runs them in CI and fails if one shows again.

    tests/differential/run.sh --known-issues          # every issue: REPRODUCED, or no longer
    tests/differential/run.sh --known-issues close_read_after_the_error_came

When an open issue no longer reproduces, add it to FIXED and turn its feature back on (if no other
open issue keeps it off).
"""
from __future__ import annotations

from dataclasses import dataclass

from frontend import Step, bind, close, copy_data, copy_done, describe, execute, flush, parse, query, sync


def Q(sql: str) -> Step:
    return Step([query(sql)])


def S(*msgs) -> Step:
    return Step(list(msgs))


@dataclass(frozen=True)
class KnownIssue:
    key: str
    feature: str
    modes: tuple[str, ...]
    pool: int
    title: str
    script: tuple  # (client, Step), in order
    startup: tuple = ()  # (client, ((name, value), ...)): startup packet parameters besides application_name


ISSUES = [
    KnownIssue(
        "reset_all_loses_startup_application_name", "reset_all", ("session", "transaction"), 2,
        "RESET ALL (and RESET application_name) go back to the server connection's own default ('') "
        "instead of the value in the client's startup packet: pgsluice applies startup parameters with "
        "SET, so they are not the session's reset values. The client gets ParameterStatus "
        "application_name='' and SHOW/current_setting say ''.",
        ((0, Q("RESET ALL")), (0, Q("SHOW application_name")))),
    KnownIssue(
        "reset_application_name_loses_startup_value", "reset_all", ("session", "transaction"), 2,
        "RESET application_name sent through the extended protocol: ParameterStatus application_name='' "
        "and SHOW says '' (the client's startup packet said diff0).",
        ((0, S(parse("", "RESET application_name"), bind("", "", [], [], []), execute(""), sync())),
         (0, Q("SHOW application_name")))),
    KnownIssue(
        "discard_all_loses_startup_application_name", "discard", ("session", "transaction"), 2,
        "DISCARD ALL, the same: application_name becomes '' (ParameterStatus and SHOW).",
        ((0, Q("DISCARD ALL")), (0, Q("SHOW application_name")))),
    KnownIssue(
        "discard_all_does_not_report_datestyle", "discard", ("transaction",), 1,
        "After SET DateStyle, a DISCARD ALL sent through the extended protocol puts DateStyle back on the "
        "server, but the client is not sent the ParameterStatus DateStyle='ISO, MDY' that Postgres sends "
        "with it, so a driver keeps formatting and parsing dates for 'SQL, DMY'.",
        ((0, Q("SET DateStyle = 'SQL, DMY'")),
         (0, S(parse("", "DISCARD ALL"), bind("", "", [], [], []), execute(""), sync())))),
    KnownIssue(
        "discard_all_after_copy_loses_application_name", "discard", ("transaction",), 1,
        "SET DateStyle, a COPY ... TO STDOUT, then DISCARD ALL through the extended protocol: the client "
        "gets ParameterStatus application_name='' (its startup value was diff0).",
        ((0, Q("SET DateStyle = 'SQL, DMY'")), (0, Q("COPY (SELECT 1) TO STDOUT")),
         (0, S(parse("", "DISCARD ALL"), bind("", "", [], [], []), execute(""), sync())))),
    KnownIssue(
        "execute_taken_for_a_replaced_deallocate_all_portal", "deallocate", ("transaction",), 1,
        "DEALLOCATE ALL bound to the unnamed portal but never executed, then (next write) q parsed, bound "
        "to the unnamed portal and executed, and q parsed again: Postgres says 42P05 (q exists), pgsluice "
        "takes the Execute for the DEALLOCATE ALL it replaced, forgets q and lets the second Parse through. "
        "Found by CI seed 202 with 30 clients.",
        ((0, S(parse("", "DEALLOCATE PREPARE ALL"), bind("", "", [], [], []))),
         (0, S(parse("q", "SELECT 1 AS one"), bind("", "q", [], [], []), execute(""), parse("q", "SELECT 2 AS two"),
               sync())))),
    KnownIssue(
        "own_notification_pid", "listen", ("session", "transaction"), 1,
        "The NotificationResponse for the client's own NOTIFY carries the server backend's pid, not the "
        "pid of the BackendKeyData pgsluice gave the client, so a client cannot tell its own "
        "notifications from others' (pgjdbc/psycopg users compare them).",
        ((0, Q("LISTEN diff_ch0")), (0, Q("NOTIFY diff_ch0, 'n1'")))),
    KnownIssue(
        "copy_in_after_a_state_check_breaks_the_connection", "copy", ("transaction",), 1,
        "Inside a transaction block, after pg_advisory_unlock() (or SET TimeZone / search_path; not "
        "pg_try_advisory_lock, a temp table or SET work_mem), a later COPY FROM STDIN in the same "
        "transaction: pgsluice puts a message of type 'C' into the COPY data stream, Postgres fails the "
        "COPY with 08P01 'unexpected message type 0x43 during COPY from stdin' and ends the server "
        "connection (FATAL: protocol synchronization was lost); the client is disconnected. Also after "
        "an unsynced Parse/Bind of such a SET followed by the COPY query.",
        ((0, Q("BEGIN")), (0, Q("SELECT pg_advisory_unlock(7000) AS released")),
         (0, S(query("COPY diff_c0 (id, note, n) FROM STDIN"), copy_data(b"100\tcopied\t1\n"), copy_done())),
         (0, Q("COMMIT")))),
    KnownIssue(
        "copy_in_after_set_timezone_in_transaction", "copy", ("transaction",), 1,
        "The SET TimeZone variant of copy_in_after_a_state_check_breaks_the_connection.",
        ((0, Q("BEGIN")), (0, Q("SET TimeZone = 'UTC'")),
         (0, S(query("COPY diff_c0 (id, note, n) FROM STDIN"), copy_data(b"100\tcopied\t1\n"), copy_done())),
         (0, Q("COMMIT")))),
    KnownIssue(
        "no_pin_after_copy", "copy", ("transaction",), 2,
        "Once a client has run a COPY (FROM STDIN or TO STDOUT), what should pin it to its server connection "
        "no longer does: here a WITH HOLD cursor (also a temporary table, LISTEN): its next transaction "
        "goes to another connection and the cursor is gone (34000).",
        ((0, S(query("COPY diff_c0 (id, note, n) FROM STDIN"), copy_data(b"100\tcopied\t1\n"), copy_done())),
         (0, S(parse("", "DECLARE diff_cur0 CURSOR WITH HOLD FOR SELECT 1 AS x"), bind("", "", [], [], []),
               execute(""), sync())),
         (1, Q("BEGIN")), (0, Q("FETCH 1 FROM diff_cur0")), (1, Q("COMMIT")))),
    KnownIssue(
        "protocol_parse_of_a_sql_prepared_name_malformed", "sql_prepare", ("transaction",), 2,
        "After SQL PREPARE sp3, a protocol Parse of the name sp3 on the client's next server connection: "
        "Postgres answers 42P05 (one namespace for both), pgsluice sends the server a malformed message and "
        "the client gets 08P01 'insufficient data left in message'.",
        ((0, Q("PREPARE sp3 (int) AS SELECT $1 + 3 AS v")), (1, Q("BEGIN")),
         (0, S(parse("sp3", "SELECT 1 AS one"), sync())), (1, Q("COMMIT")))),
    KnownIssue(
        "sql_prepare_through_extended_protocol_not_carried", "sql_prepare", ("transaction",), 2,
        "A SQL PREPARE sent through the extended protocol (as drivers send every statement) stays on the "
        "server connection it ran on: on the client's next server connection its DEALLOCATE (or "
        "EXECUTE) fails with 26000.",
        ((0, S(parse("", "PREPARE sp1 (int) AS SELECT $1 + 9 AS v"), bind("", "", [], [], []), execute(""), sync())),
         (1, Q("BEGIN")), (0, Q("EXECUTE sp1(1)")), (0, Q("DEALLOCATE sp1")), (1, Q("COMMIT")))),
    KnownIssue(
        "sql_prepare_through_extended_protocol_shared_between_clients", "sql_prepare", ("transaction",), 1,
        "The same root as sql_prepare_through_extended_protocol_not_carried, seen from the next client: "
        "its own PREPARE of the same name through the extended protocol fails with 42P05, and its "
        "EXECUTE would run the other client's statement.",
        ((0, S(parse("", "PREPARE sp2 AS SELECT 0 AS client"), bind("", "", [], [], []), execute(""), sync())),
         (1, S(parse("", "PREPARE sp2 AS SELECT 1 AS client"), bind("", "", [], [], []), execute(""), sync())),
         (1, Q("EXECUTE sp2")))),
    KnownIssue(
        "advisory_lock_from_rolled_back_start_transaction_unpins", "start_transaction", ("transaction",), 2,
        "A session advisory lock taken inside START TRANSACTION ... ROLLBACK stays held (session locks do "
        "not roll back), but pgsluice lets the client go from its connection (with BEGIN it does not): on "
        "the next connection its pg_advisory_unlock finds no lock (WARNING, false instead of true).",
        ((0, Q("START TRANSACTION")), (0, Q("SELECT pg_try_advisory_lock(7000) AS got")), (0, Q("ROLLBACK")),
         (1, Q("BEGIN")), (0, Q("SELECT pg_advisory_unlock(7000) AS released")), (1, Q("COMMIT")))),
    KnownIssue(
        "pin_made_inside_a_transaction_block_is_lost", "pins_in_transactions", ("transaction",), 2,
        "What pins a client (a temporary table here; also a session advisory lock or LISTEN, through either "
        "protocol) made inside BEGIN ... COMMIT does not keep the client on its server connection: its next "
        "transaction runs elsewhere (42P01 here; with LISTEN the notification goes to the client that has "
        "the connection now). Timing-dependent: seen in 3 of 3 runs for this script, 2 of 3 with LISTEN.",
        ((0, Q("BEGIN")), (0, Q("CREATE TEMP TABLE diff_t0 (x int)")), (0, Q("COMMIT")), (1, Q("BEGIN")),
         (0, Q("SELECT count(*) AS c FROM diff_t0")), (1, Q("COMMIT")))),
    KnownIssue(
        "set_in_transaction_leaks_to_the_next_client", "set", ("transaction",), 1,
        "BEGIN; SET statement_timeout = '4500s'; COMMIT (plain simple queries): the next client on that "
        "server connection, which never set it, runs with statement_timeout 75min instead of 0. "
        "Timing-dependent: 2 of 2 runs with COMMIT, 1 of 2 with END; the long run found it (seed 5000, "
        "client 3 read client 13's value), earlier ones the same with work_mem (seed 3003).",
        ((0, Q("BEGIN")), (0, Q("SET statement_timeout = '4500s'")), (0, Q("COMMIT")),
         (1, Q("SELECT current_setting('statement_timeout') AS st")))),
    KnownIssue(
        "set_committed_through_extended_protocol_is_lost", "extended_commit", ("transaction",), 2,
        "BEGIN; SET work_mem; then COMMIT sent through the extended protocol (Parse/Bind/Execute/Sync, as "
        "drivers send it): the committed setting is not carried to the client's next server connection "
        "(4MB there instead of 27MB). In a 40-client run the same setting also showed up in another "
        "client's session (seed 3003: client 12 read client 19's work_mem).",
        ((0, Q("BEGIN")), (0, Q("SET work_mem = '27MB'")),
         (0, S(parse("", "COMMIT"), bind("", "", [], [], []), execute(""), sync())), (1, Q("BEGIN")),
         (0, Q("SELECT current_setting('work_mem') AS wm")), (1, Q("COMMIT")))),
    KnownIssue(
        "set_inside_start_transaction_is_lost", "start_transaction", ("transaction",), 2,
        "A SET inside a block opened with START TRANSACTION (not BEGIN) and committed is not carried to the "
        "client's next server connection: work_mem is 4MB there instead of 55MB. The same blind spot as "
        "advisory_lock_from_rolled_back_start_transaction_unpins. Timing-dependent: 4 of 7 runs.",
        ((0, Q("START TRANSACTION")), (0, Q("SET work_mem = '55MB'")), (0, Q("COMMIT")), (1, Q("BEGIN")),
         (0, Q("SELECT current_setting('work_mem') AS wm")), (1, Q("COMMIT")))),
    KnownIssue(
        "prepared_statements_view_shows_other_clients", "introspect", ("transaction",), 1,
        "pg_prepared_statements shows pgsluice's names and every statement any client parsed on that "
        "server connection (another client's texts), instead of the client's own names.",
        ((0, S(parse("s1", "SELECT 0 AS client_zero_secret"), sync())),
         (1, Q("SELECT name, statement FROM pg_prepared_statements ORDER BY name")))),
    KnownIssue(
        "close_after_error_forgets_statement", "after_error", ("transaction",), 1,
        "A Close of a named statement that follows a failing message in the same pipeline is skipped by "
        "Postgres (the statement stays), but pgsluice has already dropped it from the client's map: the "
        "next Bind fails with 26000.",
        ((0, S(parse("s1", "SELECT 1 AS one"), execute("no_such_portal"), close("S", "s1"), sync())),
         (0, S(bind("", "s1", [], [], []), execute(""), sync())))),
    KnownIssue(
        "close_and_parse_after_error_at_bind", "after_error", ("transaction",), 1,
        "The error is at a Bind (here division by zero while planning); the Close and the new Parse of the "
        "same name that follow it in the pipeline are skipped by Postgres, so s1 is still the old "
        "statement (no parameters) and the next Bind with one parameter gets 08P01. pgsluice took the "
        "Close and Parse as done and answers 26000.",
        ((0, S(parse("s1", "SELECT 1 / 0 AS boom"), sync())),
         (0, S(bind("p2", "s1", [], [], []), close("S", "s1"), parse("s1", "SELECT $1::int AS v", (23,)), sync())),
         (0, S(bind("", "s1", [(0, b"3")], [], []), execute(""), sync())))),
    KnownIssue(
        "close_read_after_the_error_came", "after_error", ("transaction",), 1,
        "The error (Execute of a portal that does not exist) has come back before the client's Close of "
        "s1 and its Sync arrive in a second write: Postgres skips the Close, so the next Parse of s1 gets "
        "42P05; through pgsluice it succeeds (the statement was dropped from the client's map).",
        ((0, S(parse("s1", "SELECT 1 AS one"), execute(""))),
         (0, S(close("S", "s1"), sync(), parse("s1", "SELECT 2 AS two"), sync())))),
    KnownIssue(
        "skipped_parse_then_reparse_loses_the_statement", "after_error", ("transaction",), 1,
        "Execute fails, so Postgres skips the Parse of q before the Sync; the Parse of q after the Sync "
        "succeeds. Through pgsluice it succeeds too (ParseComplete), but the following Describe of q "
        "gets 26000: pgsluice has lost q.",
        ((0, S(execute(""), parse("q", "SELECT 1 AS one"), sync(), parse("q", "SELECT 2 AS two"))),
         (0, S(describe("S", "q"))), (0, S(sync())))),
    KnownIssue(
        "injected_parse_in_failed_transaction", "after_error", ("transaction",), 2,
        "In a failed transaction, a Bind of a statement that is not yet on this server connection: pgsluice "
        "parses it there first, Postgres refuses that Parse (25P02), and the client gets 25P02 where "
        "Postgres would have checked the Bind first (08P01, here one parameter too few).",
        ((0, S(parse("s0", "SELECT $1::int AS v", (23,)), sync())), (1, Q("BEGIN")), (0, Q("BEGIN")),
         (0, Q("SELECT 1 / 0")), (0, S(bind("", "s0", [], [], []), execute(""), sync())), (0, Q("ROLLBACK")),
         (1, Q("COMMIT")))),
    KnownIssue(
        "own_reply_while_server_skips", "after_error", ("transaction",), 1,
        "After an error that a Flush brought back, Postgres ignores everything up to the Sync; pgsluice "
        "does not know and answers a Close of a named statement itself (CloseComplete where none may "
        "come). The same for a Parse of a live name (a made-up 42P05 after the real error).",
        ((0, S(execute("no_such_portal"), flush())), (0, S(close("S", "s1"), sync())))),
    KnownIssue(
        "reparse_42p05_while_server_skips", "after_error", ("transaction",), 1,
        "The 42P05 variant of own_reply_while_server_skips: a second error the server would not send.",
        ((0, S(parse("s1", "SELECT 1 AS one"), sync())), (0, S(execute("no_such_portal"), flush())),
         (0, S(parse("s1", "SELECT 1 AS one"), sync())))),
    KnownIssue(
        "shape_check_while_server_skips_hangs", "after_error", ("transaction",), 2,
        "HANG. The client described s1 on one server connection and binds it on another (client 1 holds "
        "the first) after an error that a Flush brought back: pgsluice injects a Parse and a Describe to "
        "check the copy's columns and waits for their answer before sending the Bind, but Postgres "
        "skips both up to the Sync, so the answer never comes: the client never gets its ReadyForQuery, "
        "and pgsluice, holding the session, does not exit within 30 s of SIGTERM.",
        ((0, S(parse("s1", "SELECT 1 AS one"), describe("S", "s1"), sync())), (1, Q("BEGIN")),
         (0, S(execute("no_such_portal"), flush())), (0, S(bind("", "s1", [], [], []), execute(""), sync())),
         (1, Q("COMMIT")))),
    KnownIssue(
        "skipped_unnamed_parse_comes_back", "after_error", ("transaction",), 1,
        "An unnamed Parse that Postgres skipped (after a flushed error) is parsed again by pgsluice when "
        "the client binds the unnamed statement: BindComplete and rows instead of 26000.",
        ((0, S(execute("no_such_portal"), flush())), (0, S(parse("", "SELECT 1 AS one"), sync())),
         (0, S(bind("", "", [], [], []), execute(""), sync())))),
    KnownIssue(
        "skipped_stale_close_and_parse_lose_the_copy", "after_error", ("transaction",), 1,
        "A client's Parse of a text the server connection already has closes and re-parses pgsluice's "
        "copy; when both are skipped after an error, pgsluice's bookkeeping ends up without the copy "
        "while the server still has it, and the next Parse of that text fails with 42P05 naming "
        "pgsluice's internal statement.",
        ((0, S(parse("s1", "SELECT 2 AS two"), sync())),
         (0, S(execute("no_such_portal"), parse("s2", "SELECT 2 AS two"), sync())),
         (0, S(parse("s3", "SELECT 2 AS two"), sync())))),
    KnownIssue(
        "internal_statement_name_in_errors", "bind_errors", ("transaction",), 1,
        "Errors that name the prepared statement name pgsluice's server-side statement (pgsluice_<hash>), "
        "not the client's: here 08P01 for a Bind with the wrong number of parameters.",
        ((0, S(parse("s1", "SELECT $1::int AS v"), bind("", "s1", [], [], []), sync())),)),
    KnownIssue(
        "internal_statement_name_in_error_when_closed_in_the_same_pipeline", "bind_errors", ("transaction",), 1,
        "The variant of internal_statement_name_in_errors that is still open: the failing Bind is followed "
        "by a Close of the same statement before the Sync, and the 08P01 names pgsluice_<hash> instead of "
        "s0. Found by the long run (seed 7029, client 28).",
        ((0, S(parse("s0", "INSERT INTO diff_c0 (id, note, n) VALUES ($1, $2, $3)", (23, 25, 23)))),
         (0, S(bind("", "s0", [(0, b"-7"), (0, b"7")], [], [1]), close("S", "s0"))), (0, S(sync())))),
    KnownIssue(
        "error_names_another_statement_with_the_same_text", "bind_errors", ("transaction",), 1,
        "Two client statements with the same text share pgsluice's server statement; an error about s2 "
        "(08P01, a Bind with one parameter too many) names q, the other client name.",
        ((0, S(parse("s2", "SELECT 1 AS one"), parse("q", "SELECT 1 AS one"), sync())),
         (0, S(bind("", "s2", [(0, b"1")], [], []), execute(""), sync())))),
    KnownIssue(
        "result_format_count_reported_as_stale_plan", "bind_errors", ("transaction",), 1,
        "A Bind with more result formats than the statement has columns gets 0A000 'cached plan must not "
        "change result type' (meant for DDL) instead of Postgres's 08P01.",
        ((0, S(parse("s1", "SELECT 1 AS one"), bind("", "s1", [], [], [0, 1]), sync())),)),
    KnownIssue(
        "made_up_42p05_does_not_abort_the_transaction", "reparse", ("transaction",), 1,
        "The 42P05 pgsluice answers for a Parse of a live name inside a transaction block never reaches "
        "the server, so the server's transaction is not aborted: ReadyForQuery says T instead of E and the "
        "next statement runs instead of failing with 25P02.",
        ((0, Q("BEGIN")), (0, S(parse("s1", "SELECT 1 AS one"), sync())), (0, S(parse("s1", "SELECT 1 AS one"), sync())),
         (0, Q("SELECT 2 AS two")), (0, Q("ROLLBACK")))),
    KnownIssue(
        "injected_parse_makes_suspended_writes_visible", "suspended_writes", ("transaction",), 2,
        "A Parse pgsluice injects in the middle of a transaction (the client's statement is not yet on "
        "this server connection) makes Postgres increment the command counter (exec_parse_message ends "
        "with CommandCounterIncrement), so the changes of a data-modifying portal the client left "
        "suspended become visible to its next statement; on its own connection they are not.",
        ((0, S(parse("s1", "SELECT id, note FROM diff_c0 ORDER BY id"), sync())), (1, Q("BEGIN")),
         (0, S(parse("", "WITH u AS (UPDATE diff_c0 SET note = note || '+' RETURNING id, note) "
                         "SELECT id, note FROM u ORDER BY id"),
               bind("", "", [], [], []), execute("", 1), bind("", "s1", [], [], []), execute(""), sync())),
         (1, Q("COMMIT")))),
    KnownIssue(
        "close_answered_before_the_replies_it_waited_for", "reparse", ("transaction",), 1,
        "A Close of a statement whose Parse is in doubt behind a Sync (pipelined after that Sync) waits "
        "for the Sync's answer; pgsluice then answered it at once, and its CloseComplete reached the "
        "client before the BindComplete, ParseComplete and ReadyForQuery the server had sent before it "
        "(the server's replies were still waiting for the client's socket). Found by CI seed 303.",
        ((0, S(parse("s0", "SELECT $1::int AS n", (23,)), sync())),
         (0, S(bind("", "s0", [(1, b"\x00\x00\x00\x21")], [1], []), parse("s1", "SELECT count(*) AS c FROM diff_c0"),
               sync(), close("S", "s1"))),
         (0, S(sync())))),
    KnownIssue(
        "deallocate_answered_here_leaves_another_unnamed_statement", "sql_prepare", ("transaction",), 1,
        "SQL DEALLOCATE of a protocol-level statement is answered by pgsluice and goes to the server as a "
        "Sync, which (unlike a Query) leaves the server's unnamed statement: pgsluice took it as dropped, "
        "and the client's Describe of the unnamed statement described the set_config statement pgsluice "
        "had used to apply its startup parameters, where Postgres says 26000. Found by the long run, seed 1.",
        ((0, S(parse("s0", "SELECT 1 AS one"))), (0, Q('DEALLOCATE "s0"')), (0, S(describe("S", ""))),
         (0, S(sync())))),
    KnownIssue(
        "sql_prepared_bind_count_in_failed_transaction", "sql_prepare", ("transaction",), 2,
        "In a failed transaction on a server connection that lacks the client's SQL-prepared statement, a "
        "Bind of it with the wrong number of parameters got 25P02; Postgres checks the count first (08P01). "
        "pgsluice did not know what an SQL PREPARE's statement takes. Found by the long run, seed 11.",
        ((0, Q("PREPARE s1 (text) AS SELECT upper($1) AS u")), (1, Q("BEGIN")),
         (0, Q("BEGIN; SELECT * FROM diff_missing_table")), (0, S(bind("", "s1", [], [], []), sync())),
         (0, Q("ROLLBACK")), (1, Q("COMMIT")))),
    KnownIssue(
        "skipped_injected_prepare_left_for_present", "sql_prepare", ("transaction",), 2,
        "An SQL EXECUTE through the extended protocol in a failed transaction, on a server connection that "
        "lacks the client's SQL-prepared statement: the PREPARE pgsluice injects first is skipped by the "
        "server, but pgsluice counted the statement as present there, so the client's later PREPARE of "
        "the same name on that connection ran (CommandComplete PREPARE) where Postgres says 42P05. Found "
        "by the long run, seed 9.",
        ((0, Q("PREPARE sp3 (int, text) AS INSERT INTO diff_c0 (id, note, n) VALUES ($1, $2, 0)")), (1, Q("BEGIN")),
         (0, Q("BEGIN; SELECT 1 / 0")),
         (0, S(parse("", "EXECUTE sp3(63, 'prep')"), bind("", "", [], [], []), execute(""), sync())),
         (0, Q("COMMIT")),
         (0, Q("PREPARE sp3 (int, text) AS INSERT INTO diff_c0 (id, note, n) VALUES ($1, $2, 0)")), (1, Q("COMMIT")))),
    KnownIssue(
        "literal_set_learned_from_a_later_set", "set", ("transaction",), 2,
        "pgsluice learns the value a literal SET text leaves from the probe after its batch (and then "
        "skips the probe for that text, for every client); a later SET of the same setting in the same "
        "batch whose value was already known did not stop the learning, so the text SET work_mem = '5MB' "
        "was learned as 23MB. The next client to run it carried 23MB to its next server connection "
        "(found reading the code while chasing the long run's seed 5 difference).",
        ((1, Q("BEGIN")), (0, S(parse("", "SET work_mem = '23MB'"), bind("", "", [], [], []), execute(""), sync())),
         (0, S(parse("", "SET work_mem = '5MB'"), bind("", "", [], [], []), execute(""),
               parse("", "SET work_mem = '23MB'"), bind("", "", [], [], []), execute(""), sync())),
         (0, S(parse("", "SET work_mem = '5MB'"), bind("", "", [], [], []), execute(""), sync())), (2, Q("BEGIN")), (1, Q("COMMIT")), (0, Q("SHOW work_mem")),
         (2, Q("COMMIT")))),
    KnownIssue(
        "literal_set_learned_across_a_rollback", "set", ("transaction",), 2,
        "The same learning, across a ROLLBACK later in the batch: BEGIN, then SET work_mem = '7MB' and "
        "ROLLBACK before one Sync; the probe read the default (4MB) and the text was learned as 4MB, "
        "so a later SET work_mem = '7MB' was carried to the next server connection as 4MB.",
        ((1, Q("BEGIN")), (0, Q("BEGIN")),
         (0, S(parse("", "SET work_mem = '7MB'"), bind("", "", [], [], []), execute(""),
               parse("", "ROLLBACK"), bind("", "", [], [], []), execute(""), sync())),
         (0, S(parse("", "SET work_mem = '7MB'"), bind("", "", [], [], []), execute(""), sync())), (2, Q("BEGIN")),
         (1, Q("COMMIT")), (0, Q("SHOW work_mem")), (2, Q("COMMIT")))),
    KnownIssue(
        "failed_discard_all_ended_listener_subscription", "listen", ("transaction",), 2,
        "A client listening through pgsluice's listener connection sent DISCARD ALL inside a transaction "
        "block, where Postgres refuses it (25001): pgsluice ended the client's subscriptions anyway, "
        "so its later notifications were lost (found by the long run, seed 3). UNLISTEN / DISCARD ALL "
        "sent to the server now count only once they took effect (committed).",
        ((0, Q("LISTEN diff_ch0")), (0, Q("BEGIN ISOLATION LEVEL REPEATABLE READ")), (0, Q("DISCARD ALL")),
         (0, Q("COMMIT")), (0, Q("SELECT pg_notify('diff_ch0', 'n3')")),
         (0, Q("BEGIN")), (0, Q("UNLISTEN diff_ch0")), (0, Q("ROLLBACK")), (0, Q("NOTIFY diff_ch0, 'n4'")),
         (0, Q("BEGIN")), (0, Q("UNLISTEN diff_ch0")), (0, Q("COMMIT")), (0, Q("NOTIFY diff_ch0, 'n5'")))),
    KnownIssue(
        "listen_on_the_listener_and_the_server_connection_duplicates", "listen", ("transaction",), 2,
        "LISTEN as a Query (served by the listener connection), then LISTEN of the same channel through "
        "the extended protocol (run on the server connection, which the client then keeps): each "
        "notification reached the client twice, once from each (found by the long run, seed 10). The "
        "server connection's copy of a channel the listener connection serves the client is dropped.",
        ((0, Q("LISTEN diff_ch0")),
         # Extended-protocol LISTEN alone is served by the listener connection now; in a transaction
         # block it still runs on the server connection.
         (0, Q("BEGIN")), (0, S(parse("", "LISTEN diff_ch0"), bind("", "", [], [], []), execute(""), sync())),
         (0, Q("COMMIT")),
         (0, Q("SELECT pg_notify('diff_ch0', 'n1')")), (0, Q("UNLISTEN *")), (0, Q("NOTIFY diff_ch0, 'n2'")))),
    KnownIssue(
        "own_notification_held_by_the_next_transaction", "listen", ("transaction",), 2,
        "A client listening through the listener connection NOTIFYs its channel and, in the same pipeline, "
        "begins a transaction: Postgres sends the notification before the NOTIFY's ReadyForQuery; through "
        "pgsluice it came from the listener connection after the BEGIN had opened a transaction, so it "
        "was held until that transaction's end, which never came (found by the long run, seed 2). A "
        "ReadyForQuery that ends a listening client's transaction now waits for a round trip on the "
        "listener connection, and what it routed meanwhile goes first.",
        ((0, Q("LISTEN diff_ch0")),
         (0, S(parse("", "NOTIFY diff_ch0, 'n1'"), bind("", "", [], [], []), execute(""), sync(),
               parse("", "BEGIN"), bind("", "", [], [], []), execute(""), sync())),
         (0, Q("SELECT 1")))),
    KnownIssue(
        "startup_parameter_reported_as_sent_not_as_set", "coalesce", ("transaction",), 1,
        "A client that connects with DateStyle=German (or 'sql, dmy') once a server connection is warm gets "
        "ParameterStatus DateStyle='German' from pgsluice, the value as it sent it; Postgres reports the value "
        "as set, 'German, DMY' ('SQL, DMY'), and SHOW DateStyle says so through pgsluice too. A driver that "
        "parses DateStyle from ParameterStatus sees another setting. Found by the coalescing corpus "
        "(--coalesce, whose client groups connect with other DateStyles; corpus.STARTUP now spells them as "
        "Postgres does until this is fixed).",
        ((0, Q("SELECT 1 AS warm")), (1, Q("SHOW DateStyle"))),
        startup=((1, (("DateStyle", "German"),)),)),
    KnownIssue(
        "select_into_temp_does_not_pin", "coalesce", ("transaction",), 2,
        "SELECT ... INTO TEMP TABLE (also INTO TEMPORARY, INTO pg_temp.x) does not pin the client to its server "
        "connection as CREATE TEMP TABLE ... AS does: when another client takes that connection in between, the "
        "client's next statement runs on another one, where its temporary table does not exist (42P01). Found "
        "by the coalescing corpus, whose select_into now writes a per-client permanent table until this is fixed.",
        ((0, Q("SELECT id, name INTO TEMP TABLE diff_into FROM diff_shared WHERE id < 3")),
         (1, Q("BEGIN")), (1, Q("SELECT 1 AS hold")),
         (0, Q("SELECT count(*) FROM diff_into")),
         (1, Q("COMMIT")), (0, Q("DROP TABLE IF EXISTS diff_into")))),
]


# (issue key, pool mode) pairs that no longer reproduce: regression tests from now on.
# Seen fixed at commit c594ba4 and after (each reproduced on an earlier build; see the change's report).
FIXED: frozenset[tuple[str, str]] = frozenset({
    ("select_into_temp_does_not_pin", "transaction"),
    ("own_notification_held_by_the_next_transaction", "transaction"),
    ("listen_on_the_listener_and_the_server_connection_duplicates", "transaction"),
    ("failed_discard_all_ended_listener_subscription", "transaction"),
    ("literal_set_learned_from_a_later_set", "transaction"),
    ("literal_set_learned_across_a_rollback", "transaction"),
    ("protocol_parse_of_a_sql_prepared_name_malformed", "transaction"),
    ("sql_prepare_through_extended_protocol_not_carried", "transaction"),
    ("sql_prepare_through_extended_protocol_shared_between_clients", "transaction"),
    ("reset_all_loses_startup_application_name", "transaction"),
    ("discard_all_loses_startup_application_name", "transaction"),
    ("own_notification_pid", "session"),
    ("own_notification_pid", "transaction"),
    ("copy_in_after_a_state_check_breaks_the_connection", "transaction"),
    ("copy_in_after_set_timezone_in_transaction", "transaction"),
    ("close_after_error_forgets_statement", "transaction"),
    ("own_reply_while_server_skips", "transaction"),
    ("reparse_42p05_while_server_skips", "transaction"),
    ("shape_check_while_server_skips_hangs", "transaction"),
    ("skipped_unnamed_parse_comes_back", "transaction"),
    ("skipped_stale_close_and_parse_lose_the_copy", "transaction"),
    ("internal_statement_name_in_errors", "transaction"),
    ("result_format_count_reported_as_stale_plan", "transaction"),
    ("made_up_42p05_does_not_abort_the_transaction", "transaction"),
    ("close_answered_before_the_replies_it_waited_for", "transaction"),
    ("deallocate_answered_here_leaves_another_unnamed_statement", "transaction"),
    ("sql_prepared_bind_count_in_failed_transaction", "transaction"),
    ("skipped_injected_prepare_left_for_present", "transaction"),
    ("reset_application_name_loses_startup_value", "transaction"),
    ("discard_all_does_not_report_datestyle", "transaction"),
    ("discard_all_after_copy_loses_application_name", "transaction"),
    ("execute_taken_for_a_replaced_deallocate_all_portal", "transaction"),
    ("no_pin_after_copy", "transaction"),
    ("advisory_lock_from_rolled_back_start_transaction_unpins", "transaction"),
    ("pin_made_inside_a_transaction_block_is_lost", "transaction"),
    ("set_in_transaction_leaks_to_the_next_client", "transaction"),
    ("set_committed_through_extended_protocol_is_lost", "transaction"),
    ("set_inside_start_transaction_is_lost", "transaction"),
    ("close_and_parse_after_error_at_bind", "transaction"),
    ("close_read_after_the_error_came", "transaction"),
    ("skipped_parse_then_reparse_loses_the_statement", "transaction"),
    ("injected_parse_in_failed_transaction", "transaction"),
    ("internal_statement_name_in_error_when_closed_in_the_same_pipeline", "transaction"),
    ("error_names_another_statement_with_the_same_text", "transaction"),
})


def is_fixed(issue: KnownIssue, mode: str) -> bool:
    return (issue.key, mode) in FIXED


def check(lab, issue: KnownIssue, mode: str) -> str:
    """'' if the issue no longer shows, else the first difference (with the script)."""
    import differential
    from replies import first_difference, show_difference

    script = [(k, step) for k, step in issue.script]
    startup = {k: dict(parameters) for k, parameters in issue.startup}
    direct, proxied, problem = differential.run_script(lab, mode, issue.pool, script, startup=startup)
    lines = []
    for k in sorted(proxied):
        index = first_difference(direct[k], proxied[k])
        if index is not None:
            steps = [step for c, step in script if c == k]
            lines.append(f"  client {k}:\n" + show_difference(direct[k], proxied[k], index, steps, context=30))
    if problem:
        lines.append("  " + problem)
    return "\n".join(lines)


def describe_script(issue: KnownIssue) -> str:
    lines = [f"    client {k} connects with " + ", ".join(f"{n}={v!r}" for n, v in parameters)
             for k, parameters in issue.startup]
    return "\n".join(lines + [f"    client {k}: {step.describe()}" for k, step in issue.script])
