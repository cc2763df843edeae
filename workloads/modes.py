"""Sampling modes and their mix: greedy, parallel sampling (n), beam search, speculative decoding.

A `SamplingMix` assigns each synthetic request one mode at random with given fractions (the rest
are plain greedy requests), e.g. 20% beam search width 4, 30% parallel sampling n=2, 10%
speculative decoding with k=4 draft tokens accepted with probability 0.7 each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workloads.errors import WorkloadError


@dataclass(frozen=True, slots=True)
class SamplingMode:
    """How one request decodes; same meaning and ranges as the RequestSpec fields."""

    n: int = 1
    beam_width: int = 1
    spec_k: int = 0
    spec_accept: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n", "beam_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise WorkloadError(f"sampling mode {name} = {v!r} out of range (valid: integer >= 1)")
        if self.n > 1 and self.beam_width > 1:
            raise WorkloadError(f"sampling mode: n = {self.n} and beam_width = {self.beam_width} cannot both be > 1")
        if not isinstance(self.spec_k, int) or self.spec_k < 0:
            raise WorkloadError(f"sampling mode spec_k = {self.spec_k!r} out of range (valid: integer >= 0)")
        if not (0.0 <= self.spec_accept <= 1.0):
            raise WorkloadError(f"sampling mode spec_accept = {self.spec_accept!r} out of range (valid: [0, 1])")


GREEDY = SamplingMode()


@dataclass(frozen=True, slots=True)
class SamplingMix:
    """Fractions of requests per mode; the remaining 1 - sum(fractions) are greedy.

    Invariant: every fraction is in [0, 1] and they sum to at most 1.
    """

    modes: tuple[tuple[float, SamplingMode], ...] = ()

    def __post_init__(self) -> None:
        total = 0.0
        for frac, _mode in self.modes:
            if not (math.isfinite(frac) and 0.0 <= frac <= 1.0):
                raise WorkloadError(f"sampling mix fraction {frac!r} out of range (valid: [0, 1])")
            total += frac
        if total > 1.0 + 1e-9:
            raise WorkloadError(f"sampling mix fractions sum to {total:g} (valid: at most 1; the rest are greedy)")

    def sample(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """(n, beam_width, spec_k, spec_accept) arrays; draws nothing from rng when all are greedy."""
        table = [GREEDY] + [m for _f, m in self.modes]
        if not self.modes:
            choice = np.zeros(num, dtype=np.int64)
        else:
            fracs = np.array([f for f, _m in self.modes], dtype=np.float64)
            p = np.concatenate(([max(0.0, 1.0 - fracs.sum())], fracs))
            choice = rng.choice(len(table), size=num, p=p / p.sum())
        pick = np.asarray(choice)
        return (np.array([m.n for m in table], dtype=np.int64)[pick],
                np.array([m.beam_width for m in table], dtype=np.int64)[pick],
                np.array([m.spec_k for m in table], dtype=np.int64)[pick],
                np.array([m.spec_accept for m in table], dtype=np.float64)[pick])


SAMPLING_MIXES: dict[str, SamplingMix] = {
    "greedy": SamplingMix(),
    "parallel2": SamplingMix(((1.0, SamplingMode(n=2)),)),
    "parallel4": SamplingMix(((1.0, SamplingMode(n=4)),)),
    "beam4": SamplingMix(((1.0, SamplingMode(beam_width=4)),)),
    "speculative": SamplingMix(((1.0, SamplingMode(spec_k=4, spec_accept=0.7)),)),
    "mixed": SamplingMix(((0.2, SamplingMode(beam_width=4)), (0.3, SamplingMode(n=2)),
                          (0.1, SamplingMode(spec_k=4, spec_accept=0.7)))),
}


def parse_mix(text: str) -> SamplingMix:
    """A named mix, or 'FRAC:KIND:ARGS,...' with KIND beam:WIDTH, parallel:N, spec:K:ACCEPT.

    Example: '0.2:beam:4,0.3:parallel:2,0.1:spec:4:0.7'.
    """
    if text in SAMPLING_MIXES:
        return SAMPLING_MIXES[text]
    modes: list[tuple[float, SamplingMode]] = []
    for part in text.split(","):
        fields = part.strip().split(":")
        try:
            frac, kind, args = float(fields[0]), fields[1], fields[2:]
            if kind == "beam" and len(args) == 1:
                mode = SamplingMode(beam_width=int(args[0]))
            elif kind == "parallel" and len(args) == 1:
                mode = SamplingMode(n=int(args[0]))
            elif kind == "spec" and len(args) == 2:
                mode = SamplingMode(spec_k=int(args[0]), spec_accept=float(args[1]))
            else:
                raise ValueError(kind)
        except (ValueError, IndexError) as exc:
            if isinstance(exc, WorkloadError):
                raise
            raise WorkloadError(f"sampling mix '{text}': cannot read '{part}' (valid: a name in "
                                f"{', '.join(SAMPLING_MIXES)} or FRAC:beam:W, FRAC:parallel:N, "
                                "FRAC:spec:K:ACCEPT joined by commas)") from None
        modes.append((frac, mode))
    return SamplingMix(tuple(modes))
