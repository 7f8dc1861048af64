"""Shrinking a difference the differential test found (differential.py): delta debugging over the
failing client's steps, then over its single messages, re-running the whole scenario each time (the
other clients keep their sequences), until the same difference — the same kinds of message and
SQLSTATEs on both sides (replies.signature) — no longer shows without the part taken out. If the
difference shows with the client alone through pgsluice, it shrinks alone (faster, and the
reproduction then needs no other client). Bounded by a deadline and a number of runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from frontend import Step
from replies import Recording, first_difference, show_difference, signature

if TYPE_CHECKING:
    from differential import Lab, Scenario


@dataclass
class ShrinkResult:
    steps: list[Step] | None
    alone: bool
    text: str
    expected: list[str] = field(default_factory=list)
    actual: list[str] = field(default_factory=list)


class Shrinker:
    """Delta debugging over the failing client's steps, then over its single messages."""

    def __init__(self, lab: Lab, scenario: Scenario, sequences: dict[int, list[Step]], client: int,
                 deadline: float, max_attempts: int, target: tuple | None = None):
        self.lab, self.scenario, self.sequences, self.k = lab, scenario, sequences, client
        self.target = target  # the signature of the difference to keep (None: any difference)
        self.deadline, self.max_attempts = deadline, max_attempts
        self.attempts = 0
        self.alone = False
        self.last: tuple[Recording, Recording] | None = None

    def out_of_budget(self) -> bool:
        return self.attempts >= self.max_attempts or time.monotonic() >= self.deadline

    def fails(self, steps: list[Step], alone: bool | None = None, tries: int = 1) -> bool:
        alone = self.alone if alone is None else alone
        for _ in range(tries):
            if self.out_of_budget():
                return False
            self.attempts += 1
            direct = self.lab.direct({self.k: steps}, self.scenario.clients)[self.k]
            others = {} if alone else {j: s for j, s in self.sequences.items() if j != self.k}
            proxied, _ = self.lab.proxied(self.scenario, {**others, self.k: steps})
            found = signature(direct, proxied[self.k])
            if found is not None and (self.target is None or found == self.target):
                self.last = (direct, proxied[self.k])
                return True
        return False

    def ddmin(self, units: list, build) -> list:
        n = 2
        while len(units) >= 2 and not self.out_of_budget():
            size = -(-len(units) // n)
            chunks = [units[i:i + size] for i in range(0, len(units), size)]
            reduced = False
            for chunk in chunks:
                rest = [u for u in units if u not in chunk]
                if rest and self.fails(build(rest), tries=1 if self.alone else 2):
                    units, n, reduced = rest, max(n - 1, 2), True
                    break
            if not reduced:
                if n >= len(units):
                    break
                n = min(len(units), n * 2)
        return units

    def run(self) -> ShrinkResult:
        saved_timeout = self.lab.reply_timeout
        if self.target and ("TIMEOUT",) in self.target:
            self.lab.reply_timeout = 5.0  # a hang: every attempt waits this long for it
        try:
            return self._run()
        finally:
            self.lab.reply_timeout = saved_timeout

    def _run(self) -> ShrinkResult:
        steps = self.sequences[self.k]
        started = time.monotonic()
        if self.fails(steps, alone=True):
            self.alone = True
        elif not self.fails(steps, alone=False, tries=3):
            return ShrinkResult(None, False, "  (shrinking: the difference did not show again in 3 re-runs)")
        # Steps first, then single messages (a sleep is a unit of its own).
        kept = self.ddmin(list(range(len(steps))), lambda idx: [steps[i] for i in idx])
        steps = [steps[i] for i in kept]
        units = [(i, j) for i, s in enumerate(steps) for j in range(max(1, len(s.msgs)))]

        def build(chosen):
            chosen_set = set(chosen)
            out = []
            for i, s in enumerate(steps):
                if not s.msgs:
                    if (i, 0) in chosen_set:
                        out.append(s)
                    continue
                msgs = [m for j, m in enumerate(s.msgs) if (i, j) in chosen_set]
                if msgs:
                    out.append(Step(msgs))
            return out

        units = self.ddmin(units, build)
        steps = build(units)
        # Confirm with the final sequence (and keep its replies for the report).
        confirmed = self.fails(steps) if not self.out_of_budget() or self.last is None else True
        if self.last is None:
            return ShrinkResult(None, self.alone, "  (shrinking ran out of budget before any result)")
        direct, proxied = self.last
        how = "alone through pgsluice" if self.alone else \
            f"among the other {self.scenario.clients - 1} clients (the same seeds)"
        lines = [f"  shrunk to {len(steps)} steps, {sum(len(s.msgs) for s in steps)} messages, failing {how}"
                 f" ({self.attempts} runs, {time.monotonic() - started:.0f} s"
                 f"{'' if confirmed else '; last run did not confirm'}):"]
        lines += [f"    step {i}: {s.describe()}" for i, s in enumerate(steps)]
        index = first_difference(direct, proxied)
        lines.append("  its replies:")
        lines.append(show_difference(direct, proxied, index if index is not None else 0, steps, context=50))
        return ShrinkResult(steps, self.alone, "\n".join(lines),
                            [e.show() for e in direct.entries], [e.show() for e in proxied.entries])
