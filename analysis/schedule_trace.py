"""Schedule traces for Perfetto / chrome://tracing: a run's steps as JSON Trace Event Format.

One process (track group) per replica. Thread "steps" holds one complete ("X") event per scheduler
step (prefill / decode / mixed, with its batch, tokens and blocks in args); thread "events" holds
instant ("i") events for preemptions, swap-outs and swap-ins; counter ("C") tracks chart the free
and used KV blocks (1-slot units for contiguous caches) and the waiting queue after each step; async
("b"/"e") spans show each request's wait + prefill (arrival to first token) and decode (to finish).
Timestamps are simulated microseconds. The format: "Trace Event Format" (Google, the document
chrome://tracing and ui.perfetto.dev read); `validate` checks what this module relies on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.records.results import SimResult

STEP_TID, EVENT_TID = 1, 2
US = 1e6  # trace timestamps are microseconds


def _step_name(prefill: int, decode: int) -> str:
    if prefill and decode:
        return "mixed"
    return "prefill" if prefill else "decode" if decode else "swap"


def _spans(pid: int, res: SimResult) -> list[dict[str, Any]]:
    """Async spans per request: "wait+prefill" (arrival -> first token), "decode" (-> finish or abort)."""
    ev: list[dict[str, Any]] = []
    for r in res.requests:
        if not math.isfinite(r.first_token_s):  # rejected, or aborted before its first token
            continue
        rid = f"{pid}:{r.req_id}"  # async ids are global in the format: scope them to the replica
        end = r.finish_s if math.isfinite(r.finish_s) else r.first_token_s
        for name, t0, t1 in (("wait+prefill", r.arrival_s, r.first_token_s), ("decode", r.first_token_s, end)):
            common = {"name": name, "cat": "request", "id": rid, "pid": pid, "tid": 0}
            ev.append({**common, "ph": "b", "ts": t0 * US, "args": {"req_id": str(r.req_id)}})
            ev.append({**common, "ph": "e", "ts": t1 * US})
    return ev


def trace_events(results: Sequence[SimResult], names: Sequence[str] | None = None,
                 requests: bool = True) -> list[dict[str, Any]]:
    """The trace events of one or more replicas' runs (pid = replica index), with per-request spans
    unless `requests` is False. Steps need per-step records (SimConfig.record_steps, the default)."""
    ev: list[dict[str, Any]] = []
    for pid, res in enumerate(results):
        name = names[pid] if names is not None else f"replica {pid}: {res.system}"
        ev.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
        ev.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        for tid, tname in ((STEP_TID, "steps"), (EVENT_TID, "preemptions and swaps")):
            ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": tname}})
        paged = res.config.get("cache", {}).get("kind", "paged") == "paged"
        unit = "kv blocks" if paged else "kv slots"  # a contiguous cache counts 1-slot units
        for st in res.steps:
            ts = st.start_s * US
            ev.append({"name": _step_name(st.num_prefill_tokens, st.num_decode_tokens), "cat": "step",
                       "ph": "X", "pid": pid, "tid": STEP_TID, "ts": ts, "dur": st.duration_s * US,
                       "args": {"step": st.step, "batch_size": st.batch_size,
                                "prefill_tokens": st.num_prefill_tokens, "decode_tokens": st.num_decode_tokens,
                                "blocks_used": st.blocks_used, "blocks_free": st.blocks_free,
                                "cows": st.num_cows, "swap_s": st.swap_s}})
            ev.append({"name": unit, "ph": "C", "pid": pid, "tid": 0, "ts": ts,
                       "args": {"free": st.blocks_free, "used": st.blocks_used}})
            ev.append({"name": "waiting requests", "ph": "C", "pid": pid, "tid": 0, "ts": ts,
                       "args": {"waiting": st.num_waiting}})
            for what, n in (("preempt", st.num_preempted), ("swap out", st.num_swaps_out),
                            ("swap in", st.num_swaps_in)):
                if n:
                    ev.append({"name": what, "cat": "memory", "ph": "i", "s": "t", "pid": pid, "tid": EVENT_TID,
                               "ts": ts, "args": {"count": n}})
        if requests:
            ev.extend(_spans(pid, res))
    return ev


def write_trace(path: str | Path, results: Sequence[SimResult], names: Sequence[str] | None = None,
                metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the JSON trace (object form: traceEvents + displayTimeUnit + metadata); returns the path."""
    p = Path(path)
    doc = {"traceEvents": trace_events(results, names), "displayTimeUnit": "ms",
           "otherData": {"generator": "pagesim", **(metadata or {})}}
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
    return p


# ---- validation --------------------------------------------------------------------------------
_REQUIRED: dict[str, tuple[str, ...]] = {
    "X": ("name", "ph", "ts", "dur", "pid", "tid"),
    "B": ("name", "ph", "ts", "pid", "tid"),
    "b": ("name", "ph", "ts", "pid", "cat", "id"),
    "e": ("name", "ph", "ts", "pid", "cat", "id"),
    "E": ("ph", "ts", "pid", "tid"),
    "i": ("name", "ph", "ts", "pid", "tid"),
    "C": ("name", "ph", "ts", "pid", "args"),
    "M": ("name", "ph", "pid", "args"),
}
_META_NAMES = ("process_name", "process_labels", "process_sort_index", "thread_name", "thread_sort_index")


def validate(doc: Any) -> list[str]:
    """Problems with a trace document under the Trace Event Format (empty list: valid).

    Checks: the object form with a `traceEvents` list; a known phase per event with its required
    keys; numeric finite ts/dur >= 0; ids are ints; counters carry numeric args; instants a valid
    scope; metadata a known name and its arg; complete events never overlap and start in order on
    one track (pid, tid); counter timestamps ascend per (pid, name); every async end ("e") closes an
    open begin ("b") of the same cat, id and name no earlier than it, and none stays open.
    """
    errs: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not a JSON object with a traceEvents list"]
    if doc.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        errs.append(f"displayTimeUnit {doc['displayTimeUnit']!r} (valid: ms, ns)")
    last_end: dict[tuple[int, int], float] = {}
    last_counter: dict[tuple[int, str], float] = {}
    open_spans: dict[tuple[str, str, str], float] = {}
    for k, e in enumerate(doc["traceEvents"]):
        where, before = f"event {k}", len(errs)
        if not isinstance(e, dict):
            errs.append(f"{where}: not an object")
            continue
        ph = e.get("ph")
        if ph not in _REQUIRED:
            errs.append(f"{where}: phase {ph!r} (valid here: {', '.join(_REQUIRED)})")
            continue
        missing = [key for key in _REQUIRED[ph] if key not in e]
        if missing:
            errs.append(f"{where} ({ph}): missing {', '.join(missing)}")
            continue
        for key in ("pid", "tid"):
            if key in e and not (isinstance(e[key], int) and not isinstance(e[key], bool)):
                errs.append(f"{where}: {key} = {e[key]!r} is not an integer")
        for key in ("ts", "dur"):
            if key in e and not (_num(e[key]) and e[key] >= 0):
                errs.append(f"{where}: {key} = {e[key]!r} (valid: finite number >= 0)")
        if len(errs) > before:  # ids or times unusable: the checks below would only repeat it
            continue
        if ph == "M":
            if e["name"] not in _META_NAMES or not isinstance(e["args"], dict):
                errs.append(f"{where}: metadata {e['name']!r} (valid: {', '.join(_META_NAMES)} with args)")
        elif ph == "C":
            if not e["args"] or not all(_num(v) for v in e["args"].values()):
                errs.append(f"{where}: counter args {e['args']!r} (valid: non-empty, numeric values)")
            series = (e["pid"], str(e["name"]))
            if e["ts"] < last_counter.get(series, -math.inf):
                errs.append(f"{where}: counter {e['name']!r} ts {e['ts']} before the previous sample")
            last_counter[series] = e["ts"]
        elif ph == "i":
            if e.get("s", "t") not in ("g", "p", "t"):
                errs.append(f"{where}: instant scope {e['s']!r} (valid: g, p, t)")
        elif ph in ("b", "e"):
            span = (str(e["cat"]), str(e["id"]), str(e["name"]))
            if ph == "b":
                if span in open_spans:
                    errs.append(f"{where}: async {span} begins again before it ends")
                open_spans[span] = e["ts"]
            elif span not in open_spans:
                errs.append(f"{where}: async end {span} without an open begin")
            elif e["ts"] < open_spans.pop(span):
                errs.append(f"{where}: async end {span} at ts {e['ts']} before its begin")
        elif ph == "X":
            track = (e["pid"], e["tid"])
            # Tolerance: a microsecond float sum of the previous step's start and duration.
            if e["ts"] < last_end.get(track, -math.inf) - 1e-3:
                errs.append(f"{where}: complete event at ts {e['ts']} overlaps or precedes the previous one "
                            f"on track {track} (ends {last_end[track]})")
            last_end[track] = e["ts"] + e["dur"]
        if "args" in e and not isinstance(e["args"], dict):
            errs.append(f"{where}: args is not an object")
    errs.extend(f"async {span} begun at ts {ts} never ends" for span, ts in open_spans.items())
    return errs


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_and_validate(path: str | Path) -> list[str]:
    """Read a trace file as strict JSON (no NaN) and validate it."""
    def no_const(name: str) -> Any:
        raise ValueError(f"non-JSON constant {name}")
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=no_const)
    except ValueError as exc:
        return [f"{path}: not valid JSON: {exc}"]
    return validate(doc)


