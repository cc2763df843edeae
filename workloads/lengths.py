"""Token-length distributions for synthetic prompts and outputs.

Each distribution is a frozen dataclass with `sample(num, rng) -> int64 array >= 1`: fixed, uniform,
lognormal fitted to a target mean (exactly, after clipping to [lo, hi]), and empirical resampling.
`LengthPairs` draw (prompt, output) together: independent marginals or resampled trace pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from workloads.errors import WorkloadError


class LengthDist(Protocol):
    """A distribution of token counts."""

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """`num` int64 lengths, each >= 1."""
        ...


def _check_int(name: str, v: object, lo: int = 1) -> None:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
        raise WorkloadError(f"length '{name}' = {v!r} out of range (valid: integer >= {lo})")


@dataclass(frozen=True, slots=True)
class Fixed:
    """Every request has the same length."""

    value: int

    def __post_init__(self) -> None:
        _check_int("value", self.value)

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Constant lengths."""
        return np.full(num, self.value, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Uniform:
    """Integer lengths uniform on [lo, hi], both inclusive."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        _check_int("lo", self.lo)
        _check_int("hi", self.hi, lo=self.lo)

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform integer lengths."""
        return rng.integers(self.lo, self.hi, size=num, endpoint=True, dtype=np.int64)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _clipped_mean(mu: float, sigma: float, lo: float, hi: float) -> float:
    """E[min(max(X, lo), hi)] for X ~ LogNormal(mu, sigma), in closed form."""
    a, b = math.log(lo), math.log(hi) if math.isfinite(hi) else math.inf
    below = _phi((a - mu) / sigma)
    above = 1.0 - _phi((b - mu) / sigma) if math.isfinite(b) else 0.0
    m = math.exp(mu + sigma * sigma / 2)
    upper = _phi((b - mu - sigma * sigma) / sigma) if math.isfinite(b) else 1.0
    inside = m * (upper - _phi((a - mu - sigma * sigma) / sigma))
    return lo * below + inside + (hi * above if math.isfinite(hi) else 0.0)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Lognormal lengths with a given mean after clipping to [lo, hi] and rounding.

    `sigma` is the log-space standard deviation (spread); `mu` is solved so that the mean of the
    clipped distribution equals `mean` (so a cap like hi=2048 does not pull the mean down).
    `from_cv` picks sigma from a coefficient of variation of the unclipped distribution.
    """

    mean: float
    sigma: float = 1.0
    lo: int = 1
    hi: int | None = None
    mu: float = field(init=False)

    def __post_init__(self) -> None:
        _check_int("lo", self.lo)
        if self.hi is not None:
            _check_int("hi", self.hi, lo=self.lo)
        hi = math.inf if self.hi is None else float(self.hi)
        if not (math.isfinite(self.mean) and self.lo < self.mean < hi):
            raise WorkloadError(f"lognormal mean = {self.mean!r} out of range (valid: {self.lo} < mean < {hi:g})")
        if not (math.isfinite(self.sigma) and 0 < self.sigma <= 5):
            raise WorkloadError(f"lognormal sigma = {self.sigma!r} out of range (valid: 0 < sigma <= 5)")
        left, right = math.log(self.lo) - 10 * self.sigma, math.log(self.mean)  # clipped mean rises with mu
        while _clipped_mean(right, self.sigma, self.lo, hi) < self.mean:
            right += self.sigma
        for _ in range(200):
            mid = (left + right) / 2
            if _clipped_mean(mid, self.sigma, self.lo, hi) < self.mean:
                left = mid
            else:
                right = mid
        object.__setattr__(self, "mu", (left + right) / 2)

    @classmethod
    def from_cv(cls, mean: float, cv: float, lo: int = 1, hi: int | None = None) -> LogNormal:
        """Lognormal whose unclipped coefficient of variation is `cv` (sigma^2 = ln(1 + cv^2))."""
        if not (math.isfinite(cv) and cv > 0):
            raise WorkloadError(f"lognormal cv = {cv!r} out of range (valid: > 0)")
        return cls(mean, math.sqrt(math.log1p(cv * cv)), lo, hi)

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Lognormal lengths, clipped and rounded to integers."""
        x = rng.lognormal(self.mu, self.sigma, size=num)
        hi = np.inf if self.hi is None else self.hi
        return np.rint(np.clip(x, self.lo, hi)).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Empirical:
    """Resample (with replacement) from observed lengths, e.g. one column of a real trace."""

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise WorkloadError("empirical lengths: no values to resample from (need at least one)")
        if min(self.values) < 1:
            raise WorkloadError(f"empirical lengths: value {min(self.values)} out of range (valid: >= 1)")

    @classmethod
    def of(cls, values: Sequence[int] | np.ndarray) -> Empirical:
        """From any integer sequence."""
        return cls(tuple(int(v) for v in np.asarray(values).tolist()))

    def sample(self, num: int, rng: np.random.Generator) -> np.ndarray:
        """Resampled lengths."""
        return np.asarray(self.values, dtype=np.int64)[rng.integers(0, len(self.values), size=num)]


class LengthPairs(Protocol):
    """Draws (prompt_len, output_len) arrays together."""

    def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Prompt and output lengths, int64 >= 1."""
        ...


@dataclass(frozen=True, slots=True)
class Independent:
    """Prompt and output lengths drawn independently from their own distributions."""

    prompt: LengthDist
    output: LengthDist

    def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Prompt lengths first, then output lengths (a fixed order keeps seeds reproducible)."""
        return self.prompt.sample(num, rng), self.output.sample(num, rng)


@dataclass(frozen=True, slots=True)
class EmpiricalPairs:
    """Resample whole (prompt, output) pairs from a trace, keeping their correlation."""

    prompt: tuple[int, ...]
    output: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.prompt or len(self.prompt) != len(self.output):
            raise WorkloadError(f"empirical pairs: need equal, non-zero counts "
                                f"(got {len(self.prompt)} prompts, {len(self.output)} outputs)")
        if min(self.prompt) < 1 or min(self.output) < 1:
            raise WorkloadError("empirical pairs: lengths out of range (valid: >= 1)")

    @classmethod
    def of(cls, prompt: Sequence[int] | np.ndarray, output: Sequence[int] | np.ndarray) -> EmpiricalPairs:
        """From two equal-length integer sequences (e.g. a loaded trace's columns)."""
        return cls(tuple(np.asarray(prompt).tolist()), tuple(np.asarray(output).tolist()))

    def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Resampled pairs."""
        idx = rng.integers(0, len(self.prompt), size=num)
        return np.asarray(self.prompt, dtype=np.int64)[idx], np.asarray(self.output, dtype=np.int64)[idx]


def parse_length(text: str) -> LengthDist:
    """A distribution from CLI text: 'fixed:128', 'uniform:16:512', 'lognormal:MEAN[:SIGMA[:HI]]'."""
    parts = text.strip().split(":")
    kind, args = parts[0].lower(), parts[1:]
    try:
        if kind == "fixed" and len(args) == 1:
            return Fixed(int(args[0]))
        if kind == "uniform" and len(args) == 2:
            return Uniform(int(args[0]), int(args[1]))
        if kind == "lognormal" and 1 <= len(args) <= 3:
            sigma = float(args[1]) if len(args) > 1 else 1.0
            return LogNormal(float(args[0]), sigma, hi=int(args[2]) if len(args) > 2 else None)
    except ValueError as exc:
        if isinstance(exc, WorkloadError):
            raise
    raise WorkloadError(f"length distribution '{text}' not understood (valid: fixed:N, uniform:LO:HI, "
                        "lognormal:MEAN[:SIGMA[:HI]])")
