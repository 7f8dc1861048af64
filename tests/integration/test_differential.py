"""The differential test, short version (DESIGN §9; tests/differential/differential.py has the README).

Thirty clients run seeded random protocol sequences at once through pgsluice over a pool of six
server connections, in the pool mode of this pass (PGSLUICE_TEST_MODE), and every reply each client
gets is compared with the replies to its sequence on its own direct connection to Postgres. A
difference fails the test with the seed, the client, the first differing reply and a shrunk
reproduction (also saved under build/differential/ for `tests/differential/run.sh --replay`).
The long version: `tests/differential/run.sh --long`.

With coalescing on (DESIGN §4, issue 15; tests/differential/coalesce.py), in the transaction pass only:
a hundred clients over a pool of six send the statements of tests/differential/corpus.py in rounds,
all at once after a barrier, and each reply must be the one Postgres gives the same request alone.
The long version: `tests/differential/run.sh --coalesce --long`."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from conftest import POOL_MODE, TARGET

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))

import coalesce  # noqa: E402
import corpus  # noqa: E402
import differential  # noqa: E402
import known_issues  # noqa: E402
from frontend import Msg, Step  # noqa: E402
from replies import Entry, Recording, first_difference  # noqa: E402

pytestmark = [pytest.mark.proxy_only]
if TARGET == "direct":
    pytest.skip("compares pgsluice with Postgres itself", allow_module_level=True)

SEEDS = [101, 202, 303]
CLIENTS, POOL, MESSAGES = 30, 6, 150


@pytest.fixture(scope="module")
def lab(pg):
    return differential.Lab(pg)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_client_gets_the_replies_postgres_gives_it_alone(lab, seed):
    scenario = differential.Scenario(seed, CLIENTS, POOL, POOL_MODE, MESSAGES, differential.DEFAULT_FEATURES[POOL_MODE])
    outcome = differential.run_scenario(lab, scenario, shrink_seconds=150, shrink_attempts=80)
    assert outcome.messages >= CLIENTS * MESSAGES * 0.9, outcome.report()
    assert not outcome.differences, outcome.report()


def _one_row_at_a_time(client: int, steps: list[Step]) -> list[Step]:
    """A planted fault: client 2's Executes through pgsluice ask for one row instead of all."""
    if client != 2:
        return steps
    changed = []
    for step in steps:
        msgs = []
        for m in step.msgs:
            if m.type == b"E" and m.payload.endswith(struct.pack("!I", 0)):
                m = Msg(b"E", m.payload[:-4] + struct.pack("!I", 1), m.text + " [planted: max_rows=1]")
            msgs.append(m)
        changed.append(Step(msgs, step.sleep))
    return changed


def test_a_planted_difference_is_reported_with_its_seed_and_a_shrunk_sequence(lab):
    # The test of the test: with a fault planted on pgsluice's side of the comparison, the run must
    # fail, name the seed and the client, and shrink the sequence to a few messages.
    scenario = differential.Scenario(2, 4, 2, POOL_MODE, 30, differential.DEFAULT_FEATURES[POOL_MODE])
    planted = [m for step in scenario.sequences()[2] for m in _one_row_at_a_time(2, [step])[0].msgs
               if "planted" in m.text]
    assert len(planted) >= 3, "the seed gives client 2 too few Executes to plant the fault in"
    lab.tamper = _one_row_at_a_time
    try:
        outcome = differential.run_scenario(lab, scenario, shrink_seconds=60, shrink_attempts=60, save=False)
    finally:
        lab.tamper = None
    report = outcome.report()
    assert [d.client for d in outcome.differences] == [2], report
    assert "seed 2, client 2: first difference" in report, report
    shrunk = outcome.differences[0].shrunk
    assert "shrunk to" in shrunk and "alone through pgsluice" in shrunk, report
    steps = int(shrunk.split("shrunk to ")[1].split(" steps")[0])
    messages = int(shrunk.split(" steps, ")[1].split(" messages")[0])
    assert steps <= 2 and messages <= 4, report
    assert "PortalSuspended" in shrunk, report


FIXED_ISSUES = [(issue, mode) for issue in known_issues.ISSUES for mode in issue.modes
                if mode == POOL_MODE and known_issues.is_fixed(issue, mode)]


@pytest.mark.parametrize("issue", [issue for issue, _ in FIXED_ISSUES], ids=lambda issue: issue.key)
def test_a_difference_found_before_stays_fixed(lab, issue):
    # The differential test's findings, once fixed, as deterministic scripts (known_issues.py).
    difference = known_issues.check(lab, issue, POOL_MODE)
    assert not difference, f"{issue.key} shows again: {issue.title}\n{known_issues.describe_script(issue)}\n{difference}"


# -- with coalescing on (coalesce.py) ------------------------------------------------------------------

COALESCE_SEED, COALESCE_CLIENTS, COALESCE_POOL = 15, 100, 6
COALESCE_ROUNDS = 120  # every corpus entry at least once (the first pass ends by round 84), in under a minute
only_in_transaction_pass = pytest.mark.skipif(
    POOL_MODE != "transaction",
    reason="coalescing is active in transaction and statement mode; it runs once, in the transaction pass")


@only_in_transaction_pass
def test_coalesced_requests_get_the_replies_postgres_gives_each_alone(pg):
    scenario = coalesce.Scenario(COALESCE_SEED, COALESCE_CLIENTS, COALESCE_POOL, "transaction", COALESCE_ROUNDS)
    outcome = coalesce.run_scenario(coalesce.Runner(pg), scenario)
    report = outcome.report()
    print(report)
    assert not outcome.corpus_problems, report
    assert set(outcome.entries_seen) == {e.key for e in corpus.CORPUS}, report  # every statement was sent
    assert outcome.requests >= 0.8 * COALESCE_CLIENTS * scenario.round_count, report
    assert outcome.eligible >= 0.5 * outcome.requests, report
    assert not outcome.differences, report
    if outcome.metrics:  # a build with the coalescer: it must have shared and batched, or this proved little
        assert outcome.metrics.get("pgsluice_coalesce_shared_total", 0) > 0, report
        assert outcome.metrics.get("pgsluice_coalesce_batches_total", 0) > 0, report


def _replies_of_another_client(plans):
    """A planted fault: client 3 (startup group 3) sends client 8's reads (the same group, so the same
    session settings) through pgsluice, as if it got the replies to another client's values. Only reads:
    client 8's own write (read_your_write) must stay client 8's."""
    def tamper(client: int, round_index: int, steps: list[Step]) -> list[Step]:
        other = plans[8].requests.get(round_index)
        if client == 3 and other is not None and other.entry.shape == "select" and \
                plans[3].requests[round_index].entry.shape == "select":
            return other.steps
        return steps
    return tamper


@only_in_transaction_pass
def test_a_reply_to_another_clients_request_is_a_difference(pg):
    # The test of the test: with client 3's requests swapped for client 8's on pgsluice's side only, the
    # run must fail for client 3 alone and name the round and the request.
    scenario = coalesce.Scenario(4, 10, 2, "transaction", rounds=12)
    runner = coalesce.Runner(pg)
    _, plans = coalesce.plan(scenario)
    runner.tamper = _replies_of_another_client(plans)
    outcome = coalesce.run_scenario(runner, scenario)
    report = outcome.report()
    assert [d.client for d in outcome.differences] == [3], report
    assert "seed 4, client 3: first difference" in report and "request: " in report, report
    assert "other client(s) sent this statement with the same values" in report, report


def _rows(step: int, *values: bytes | None) -> list[Entry]:
    def row(v):
        return (b"\x00\x01" + (b"\xff\xff\xff\xff" if v is None else len(v).to_bytes(4, "big") + v))
    return [Entry(step, "D", row(v)) for v in values] + [Entry(step, "C", f"SELECT {len(values)}\0".encode())]


def _same(rules, a: list[Entry], b: list[Entry]) -> bool:
    return first_difference(coalesce.normalized(Recording(a), rules), coalesce.normalized(Recording(b), rules)) is None


def test_rows_without_order_compare_as_a_multiset_and_nothing_else_is_relaxed():
    unordered, ordered = [(False, frozenset())], [(True, frozenset())]
    assert _same(unordered, _rows(0, b"1", b"2", b"2"), _rows(0, b"2", b"1", b"2"))
    assert not _same(unordered, _rows(0, b"1", b"2", b"2"), _rows(0, b"1", b"2", b"1"))  # another multiset
    assert not _same(unordered, _rows(0, b"1", b"2"), _rows(0, b"2"))                     # a row missing
    assert not _same(ordered, _rows(0, b"1", b"2"), _rows(0, b"2", b"1"))                 # order is compared
    assert not _same([None], _rows(0, b"1", b"2"), _rows(0, b"2", b"1"))                  # not a corpus step
    masked = [(True, frozenset({0}))]
    assert _same(masked, _rows(0, b"17"), _rows(0, b"18"))                                # nextval's value
    assert not _same(masked, _rows(0, b"17"), _rows(0, None))                             # but not its NULL
