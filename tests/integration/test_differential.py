"""The differential test, short version (DESIGN §9; tests/differential/differential.py has the README).

Thirty clients run seeded random protocol sequences at once through pgsluice over a pool of six
server connections, in the pool mode of this pass (PGSLUICE_TEST_MODE), and every reply each client
gets is compared with the replies to its sequence on its own direct connection to Postgres. A
difference fails the test with the seed, the client, the first differing reply and a shrunk
reproduction (also saved under build/differential/ for `tests/differential/run.sh --replay`).
The long version: `tests/differential/run.sh --long`."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from conftest import POOL_MODE, TARGET

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))

import differential  # noqa: E402
import known_issues  # noqa: E402
from frontend import Msg, Step  # noqa: E402

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
