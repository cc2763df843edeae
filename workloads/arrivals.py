"""Arrival processes: when synthetic (or timestamp-less) requests arrive.

Each process is a frozen dataclass with `times(num, rng) -> float64 seconds`, non-decreasing and
starting at 0 (the first request arrives when the run starts; gaps follow). `ARRIVAL_PROCESSES` maps
CLI names to constructors taking (rate, cv).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from workloads.errors import WorkloadError


class ArrivalProcess(Protocol):
    """Anything that turns a request count into arrival times."""

    def times(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """`num` non-decreasing arrival times in seconds, the first at 0."""
        ...


def _check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
        raise WorkloadError(f"arrival rate = {rate!r} out of range (valid: finite requests/s > 0)")


def _from_gaps(gaps: np.ndarray) -> np.ndarray:
    out = np.zeros(len(gaps), dtype=np.float64)
    np.cumsum(gaps[:-1], out=out[1:])
    return out


@dataclass(frozen=True, slots=True)
class Poisson:
    """Poisson arrivals: exponential gaps with mean 1/rate (inter-arrival CV 1)."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate)

    def times(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Arrival times in seconds."""
        return _from_gaps(rng.exponential(1.0 / self.rate, size=num))


@dataclass(frozen=True, slots=True)
class Gamma:
    """Gamma-distributed gaps with mean 1/rate and coefficient of variation `cv`.

    cv > 1 is burstier than Poisson (clumps of arrivals with long quiet gaps), cv = 1 is Poisson,
    cv < 1 is more regular. Shape k = 1/cv^2, scale = 1/(rate*k).
    """

    rate: float
    cv: float = 1.0

    def __post_init__(self) -> None:
        _check_rate(self.rate)
        if not (isinstance(self.cv, (int, float)) and math.isfinite(self.cv) and self.cv > 0):
            raise WorkloadError(f"arrival cv = {self.cv!r} out of range (valid: finite > 0)")

    def times(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Arrival times in seconds."""
        shape = 1.0 / (self.cv * self.cv)
        return _from_gaps(rng.gamma(shape, 1.0 / (self.rate * shape), size=num))


@dataclass(frozen=True, slots=True)
class Constant:
    """Evenly spaced arrivals, one every 1/rate seconds (no randomness)."""

    rate: float

    def __post_init__(self) -> None:
        _check_rate(self.rate)

    def times(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Arrival times in seconds."""
        return np.arange(num, dtype=np.float64) / self.rate


@dataclass(frozen=True, slots=True)
class Burst:
    """Everything arrives at time 0 (an offline batch; the vLLM benchmark's rate=inf)."""

    def times(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Arrival times in seconds (all zero)."""
        return np.zeros(num, dtype=np.float64)


ARRIVAL_PROCESSES: dict[str, Callable[[float, float], ArrivalProcess]] = {
    "poisson": lambda rate, cv: Poisson(rate),
    "gamma": lambda rate, cv: Gamma(rate, cv),
    "constant": lambda rate, cv: Constant(rate),
    "burst": lambda rate, cv: Burst(),
}


def make_arrivals(name: str, rate: float | None, cv: float = 1.0) -> ArrivalProcess:
    """The named process at `rate` requests/s (inf or None with 'burst'); cv only matters for gamma."""
    if name not in ARRIVAL_PROCESSES:
        raise WorkloadError(f"arrival process '{name}' unknown (valid: {', '.join(ARRIVAL_PROCESSES)})")
    if name == "burst" or rate == math.inf:
        return Burst()
    if rate is None:
        raise WorkloadError(f"arrival process '{name}' needs a rate (requests/s > 0)")
    return ARRIVAL_PROCESSES[name](rate, cv)
