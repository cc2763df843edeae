"""Rejected requests, counted by reason, with what to change: so no request is ever dropped silently.

The engine rejects a request it can never serve (longer than max_model_len, more sequences than
max_num_seqs, a prompt above the token budget without chunked prefill, a request larger than the
pool) and records the reason on its per-request record. `rejection_kinds` groups those reasons into
kinds; `rejection_lines` turns a run's counts into one plain line per kind with a suggestion, for
the terminal summary and the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RejectionKind:
    """One kind of rejection: a key (summary column suffix), the words matched in the engine's
    reason, a short human description and the advice that removes it."""

    key: str
    match: str
    what: str
    advice: str


KINDS: tuple[RejectionKind, ...] = (
    RejectionKind("max_model_len", "exceeds max_model_len", "prompt + output longer than max_model_len",
                  "raise --max-model-len or pick a --model with a longer context"),
    RejectionKind("max_num_seqs", "max_num_seqs", "more sequences (n / beam width) than max_num_seqs",
                  "raise --max-num-seqs"),
    RejectionKind("token_budget", "max_num_batched_tokens", "prompt longer than max_num_batched_tokens",
                  "use --chunked-prefill or raise --max-num-batched-tokens"),
    RejectionKind("pool", "can never", "larger than the whole KV pool",
                  "give a larger pool (--gpu, --kv-gb, --kv-tokens) or a smaller --model / --kv-dtype"),
)
OTHER = RejectionKind("other", "", "other reasons", "see the 'reason' column of runs/<system>/requests")


def kind_of(reason: str) -> RejectionKind:
    """The kind of an engine rejection reason (OTHER when no kind matches)."""
    return next((k for k in KINDS if k.match in reason), OTHER)


def rejection_kinds(records: Iterable[Any]) -> dict[str, int]:
    """Per-request records (objects with `status` and `reason`) -> {'rejected_<kind>': count}."""
    counts = Counter(kind_of(str(r.reason)).key for r in records if r.status == "rejected")
    return {f"rejected_{k}": n for k, n in counts.items()}


def rejection_lines(system: str, row: Mapping[str, Any]) -> list[str]:
    """Plain lines for one summary row: "paged-16: 205 of 500 requests (41%) rejected: ... -> advice"."""
    total = _int(row.get("num_requests"))
    out = []
    for k in (*KINDS, OTHER):
        n = _int(row.get(f"rejected_{k.key}"))
        if n:
            share = f" ({100.0 * n / total:.0f}%)" if total else ""
            out.append(f"{system}: {n} of {total} requests{share} rejected, {k.what}: {k.advice}")
    n_all = _int(row.get("num_rejected"))
    counted = sum(_int(row.get(f"rejected_{k.key}")) for k in (*KINDS, OTHER))
    if n_all > counted:  # a summary without the per-kind columns (older results): the total only
        out.append(f"{system}: {n_all - counted} of {total} requests rejected (reasons in runs/<system>/requests)")
    return out


def _int(v: Any) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0
    return int(f) if f == f else 0
