"""The capacity search as pure functions: which request rates to try next, and what the answer is.

A search is stateless: its state is the set of rates evaluated so far and whether each met the
targets, so a resumed search (rates read back from the points log) continues exactly where it
stopped. Bracketing: grow the rate geometrically from `start` until one fails (or `max_rate`
passes), then shrink the bracket [highest pass below the lowest fail, lowest fail] by k-ary
geometric splitting (k = rates per round, 1 = bisection) until hi / lo - 1 <= rel_tol.
Capacity is monotone only if latency is monotone in the rate; on the same arrival pattern scaled
it nearly is, and the search takes the bracket at the lowest failing rate, so a non-monotone blip
can only lower the answer (never report a rate that failed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

SIG_DIGITS = 6  # rates are rounded so a resumed search finds the same points (same ids) again


@dataclass(frozen=True, slots=True)
class SearchSpec:
    """How to search. start: first rate (req/s); growth: factor per growing step (> 1); rel_tol: stop
    when hi / lo - 1 <= rel_tol; min_rate / max_rate: give up below / stop above; per_round: rates
    evaluated in parallel per round (k-ary search)."""

    start: float = 1.0
    growth: float = 2.0
    rel_tol: float = 0.05
    min_rate: float = 0.01
    max_rate: float = 1024.0
    per_round: int = 1

    def __post_init__(self) -> None:
        for name, lo in (("start", 0.0), ("min_rate", 0.0), ("rel_tol", 0.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > lo):
                raise ValueError(f"capacity search {name} = {v!r} out of range (valid: > {lo:g})")
        if not (isinstance(self.growth, (int, float)) and self.growth > 1 and math.isfinite(self.growth)):
            raise ValueError(f"capacity search growth = {self.growth!r} out of range (valid: > 1)")
        if not (self.min_rate <= self.start <= self.max_rate):
            raise ValueError(f"capacity search start = {self.start:g} out of range "
                             f"(valid: min_rate {self.min_rate:g} <= start <= max_rate {self.max_rate:g})")
        if not (isinstance(self.per_round, int) and self.per_round >= 1):
            raise ValueError(f"capacity search per_round = {self.per_round!r} out of range (valid: integer >= 1)")


@dataclass(frozen=True, slots=True)
class Bracket:
    """Where the search stands: lo = highest passing rate below hi, hi = lowest failing rate (None: not
    found yet); done says whether it has converged or hit a limit."""

    lo: float | None
    hi: float | None
    done: bool
    reason: str  # "converged", "max_rate" (every rate up to max_rate passed), "min_rate" (none passed)


def round_rate(r: float) -> float:
    """A rate rounded to SIG_DIGITS significant digits (stable point ids, exact resume)."""
    return float(f"{r:.{SIG_DIGITS}g}")


def bracket(results: Mapping[float, bool], spec: SearchSpec) -> Bracket:
    """The bracket implied by `results` (rate -> met the targets)."""
    fails = [r for r, ok in results.items() if not ok]
    hi = min(fails) if fails else None
    passes = [r for r, ok in results.items() if ok and (hi is None or r < hi)]
    lo = max(passes) if passes else None
    if hi is None:
        return Bracket(lo, None, lo is not None and lo >= spec.max_rate, "max_rate")
    if lo is None:
        return Bracket(None, hi, hi <= spec.min_rate, "min_rate")
    return Bracket(lo, hi, hi / lo - 1.0 <= spec.rel_tol, "converged")


def next_rates(results: Mapping[float, bool], spec: SearchSpec) -> list[float]:
    """The rates to evaluate next (ascending, none already evaluated); [] when the search is done."""
    b = bracket(results, spec)
    if b.done:
        return []
    k = spec.per_round
    if b.lo is None and b.hi is None:
        cand = [spec.start * spec.growth ** i for i in range(k)]
    elif b.hi is None:
        assert b.lo is not None
        cand = [b.lo * spec.growth ** (i + 1) for i in range(k)]
    elif b.lo is None:
        cand = [b.hi / spec.growth ** (i + 1) for i in range(k)]
    else:  # k points splitting [lo, hi] into k + 1 geometrically equal parts
        step = (b.hi / b.lo) ** (1.0 / (k + 1))
        cand = [b.lo * step ** (i + 1) for i in range(k)]
    out = sorted({round_rate(min(max(r, spec.min_rate), spec.max_rate)) for r in cand} - set(results))
    if not out:  # rounding collapsed the bracket: nothing left to split
        return []
    return out


@dataclass(frozen=True, slots=True)
class Capacity:
    """A search's answer: the highest passing rate (0 if none), whether the targets still held at
    max_rate (capacity is then a lower bound), the lowest failing rate and the number of rates tried."""

    capacity: float
    lowest_fail: float | None
    reason: str
    evaluations: int


def answer(results: Mapping[float, bool], spec: SearchSpec) -> Capacity:
    """The capacity the results imply (call once next_rates returns [])."""
    b = bracket(results, spec)
    return Capacity(b.lo or 0.0, b.hi, b.reason if b.done else "unfinished", len(results))


def search(evaluate: Callable[[float], bool], spec: SearchSpec, max_evaluations: int = 200) -> Capacity:
    """Run a search serially with `evaluate(rate) -> met the targets` (tests, quick use)."""
    results: dict[float, bool] = {}
    while (todo := next_rates(results, spec)) and len(results) < max_evaluations:
        for r in todo:
            results[r] = bool(evaluate(r))
    return answer(results, spec)
