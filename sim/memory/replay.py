"""Op-log replay: drive a KV cache from JSON lines of allocator operations, one result dict per op.

The allocator's contract made testable from outside: `pagesim replay` and the tests feed hand-written
op files, and any engine run can write its cache operations (the caches' op_sink) and replay them.
Pure: lines in, dicts out, no I/O. Malformed input raises ReplayError naming the line; an op that
cannot be done (out of blocks, unknown sequence) is a result with ok=false and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sim.checks import MAX_NUM_BLOCKS, NUM_BLOCKS_RANGE, is_int_list
from sim.memory.contiguous_cache import RESERVATION_POLICIES, ContiguousKVCache
from sim.memory.extent_allocator import PLACEMENTS
from sim.memory.outcomes import AllocStatus, CacheError
from sim.memory.paged_cache import PagedKVCache
from sim.memory.prefix import ROOT_HASH, next_token_block_hash
from sim.memory.semantics import DEFAULT_SEMANTICS, SEMANTICS, make_paged_cache

PAGED_OPS = ("allocate", "append", "fork", "free", "rollback", "free_before")
CONTIG_OPS = ("allocate", "free")
_FIELDS = {  # op -> (required keys, optional keys); exactly one of n/tokens where both are listed
    "allocate": ({"seq"}, {"n", "tokens", "block_hashes"}),
    "append": ({"seq"}, {"n", "tokens", "block_hashes"}),
    "fork": ({"parent", "child"}, set()),
    "free": ({"seq"}, {"t"}),
    "rollback": ({"seq", "n"}, set()),
    "free_before": ({"seq", "token"}, set()),
}
_PAGED_CONFIG = {"block_size", "num_blocks", "prefix_caching", "watermark", "semantics"}
_CONTIG_CONFIG = {"capacity_tokens", "placement", "policy", "max_model_len"}


class ReplayError(Exception):
    """Malformed op log: `line_no` is the 1-based line (0: a setting given by the caller)."""

    def __init__(self, line_no: int, msg: str) -> None:
        super().__init__(f"line {line_no}: {msg}" if line_no else msg)
        self.line_no = line_no
        self.msg = msg


def _int(line: int, key: str, v: Any, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ReplayError(line, f"field '{key}' = {json.dumps(v)} out of range (valid: integer >= {lo})")
    return v


def _int_list(line: int, key: str, v: Any) -> list[int]:
    if not is_int_list(v):
        raise ReplayError(line, f"field '{key}' must be a list of integers")
    return v


def _seq(line: int, key: str, v: Any) -> int | str:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ReplayError(line, f"field '{key}' = {json.dumps(v)} must be a sequence id (string or integer)")
    return v


@dataclass(slots=True)
class _Tokens:
    """Leading known token ids of a sequence and the chained hashes of their full blocks."""

    total: int
    known: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)

    def extend(self, tokens: list[int] | None, n: int, bs: int) -> None:
        if tokens is not None and len(self.known) == self.total:
            self.known.extend(tokens)
            parent = self.hashes[-1] if self.hashes else ROOT_HASH
            for k in range(len(self.hashes), len(self.known) // bs):
                parent = next_token_block_hash(parent, self.known[k * bs:(k + 1) * bs])
                self.hashes.append(parent)
        self.total += n

    def truncate(self, n: int, bs: int) -> None:
        self.total -= n
        del self.known[self.total:]
        del self.hashes[len(self.known) // bs:]

    def copy(self) -> _Tokens:
        return _Tokens(self.total, self.known.copy(), self.hashes.copy())


def _parse(line_no: int, text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReplayError(line_no, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ReplayError(line_no, "expected a JSON object like {\"op\": \"allocate\", ...}")
    op = obj.get("op")
    if op != "config" and op not in _FIELDS:
        raise ReplayError(line_no, f"unknown op {json.dumps(op)} (valid: config, {', '.join(PAGED_OPS)})")
    return obj


def _check_fields(line: int, obj: dict[str, Any]) -> None:
    op = obj["op"]
    req, opt = _FIELDS[op]
    keys = set(obj) - {"op"}
    if missing := req - keys:
        raise ReplayError(line, f"op '{op}' lacks field(s) {', '.join(sorted(missing))}")
    if extra := keys - req - opt:
        raise ReplayError(line, f"op '{op}' has unknown field(s) {', '.join(sorted(extra))} "
                                f"(valid: {', '.join(sorted(req | opt))})")
    if "n" in opt and (("n" in obj) == ("tokens" in obj)):
        raise ReplayError(line, f"op '{op}' needs exactly one of 'n' or 'tokens'")
    if "tokens" in obj and "block_hashes" in obj:
        raise ReplayError(line, "'block_hashes' goes with 'n'; with 'tokens' the hashes are derived")


def _settings(line: int, cfg: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Merge a config line with the caller's settings; a conflict or a bad value is a ReplayError."""
    out = {k: v for k, v in given.items() if v is not None}
    for k, v in cfg.items():
        if k in ("op", "kind"):
            continue
        if k in out and out[k] != v:
            raise ReplayError(line, f"config {k} = {json.dumps(v)} conflicts with {k} = {out[k]!r} "
                                    f"given as an option")
        out[k] = v
    return out


def _make_paged(line: int, s: dict[str, Any]) -> PagedKVCache:
    for key in ("block_size", "num_blocks"):
        if key not in s:
            raise ReplayError(line, f"{key} not given (pass it as an option or in a first "
                                    f"{{\"op\": \"config\", ...}} line)")
        _int(line, key, s[key], 1)
    if s["num_blocks"] > MAX_NUM_BLOCKS:  # refused before the pool is allocated
        raise ReplayError(line, f"field 'num_blocks' = {s['num_blocks']} out of range ({NUM_BLOCKS_RANGE})")
    pc = s.get("prefix_caching", False)
    if not isinstance(pc, bool):
        raise ReplayError(line, f"prefix_caching = {json.dumps(pc)} must be true or false")
    wm = s.get("watermark", 0.01)
    if isinstance(wm, bool) or not isinstance(wm, (int, float)) or not 0 <= wm < 1:
        raise ReplayError(line, f"watermark = {json.dumps(wm)} out of range (valid: [0, 1))")
    sem = s.get("semantics", DEFAULT_SEMANTICS)
    if sem not in SEMANTICS:
        raise ReplayError(line, f"semantics = {json.dumps(sem)} is not valid (valid: {', '.join(SEMANTICS)})")
    if sem == "vllm-v1" and s["num_blocks"] < 2:
        raise ReplayError(line, "num_blocks = 1 out of range for semantics vllm-v1 (valid: >= 2: block 0 "
                                "is its null block)")
    return make_paged_cache(sem, s["num_blocks"], s["block_size"], watermark=wm, enable_prefix_caching=pc)


def _make_contig(line: int, s: dict[str, Any]) -> ContiguousKVCache:
    if "capacity_tokens" not in s:
        raise ReplayError(line, "contiguous config lacks capacity_tokens")
    cap = _int(line, "capacity_tokens", s["capacity_tokens"], 1)
    pl = s.get("placement", "first_fit")
    if pl not in PLACEMENTS:
        raise ReplayError(line, f"placement = {json.dumps(pl)} is not valid (valid: {', '.join(PLACEMENTS)})")
    mml = _int(line, "max_model_len", s.get("max_model_len", cap), 1)
    if s.get("policy", "max") not in RESERVATION_POLICIES:  # informational, but must be a real policy
        raise ReplayError(line, f"policy = {json.dumps(s['policy'])} is not valid "
                                f"(valid: {', '.join(RESERVATION_POLICIES)})")
    return ContiguousKVCache(cap, placement=pl, max_model_len=mml)


def replay(lines: Iterable[str], *, block_size: int | None = None, num_blocks: int | None = None,
           prefix_caching: bool | None = None, watermark: float | None = None,
           semantics: str | None = None) -> Iterator[dict[str, Any]]:
    """Replay op lines (see docs/memory.md) and yield one result dict per op.

    Settings come from the keyword arguments and/or an optional first `{"op": "config", ...}` line;
    a value given both ways must agree. semantics names the block-manager behaviour
    (sim.memory.semantics; default "pagesim"). A config with "kind": "contiguous" replays
    allocate/free against a ContiguousKVCache instead. Raises ReplayError on malformed input.
    """
    given = {"block_size": block_size, "num_blocks": num_blocks, "prefix_caching": prefix_caching,
             "watermark": watermark, "semantics": semantics}
    cache: PagedKVCache | ContiguousKVCache | None = None
    toks: dict[Any, _Tokens] = {}
    i = 0
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        obj = _parse(line_no, text)
        if obj["op"] == "config":
            if cache is not None or i:
                raise ReplayError(line_no, "a config line must come before every other op")
            kind = obj.get("kind", "paged")
            allowed = _PAGED_CONFIG if kind == "paged" else _CONTIG_CONFIG if kind == "contiguous" else None
            if allowed is None:
                raise ReplayError(line_no, f"config kind = {json.dumps(kind)} (valid: paged, contiguous)")
            if extra := set(obj) - {"op", "kind"} - allowed:
                raise ReplayError(line_no, f"config has unknown field(s) {', '.join(sorted(extra))} "
                                           f"(valid for {kind}: kind, {', '.join(sorted(allowed))})")
            if kind == "contiguous":
                if clash := [k for k, v in given.items() if v is not None]:
                    raise ReplayError(line_no, f"{', '.join(clash)} given, but the op log is for a "
                                               f"contiguous cache")
                cache = _make_contig(line_no, obj)
            else:
                cache = _make_paged(line_no, _settings(line_no, obj, given))
            continue
        _check_fields(line_no, obj)
        if cache is None:
            cache = _make_paged(line_no, _settings(line_no, {}, given))
        if isinstance(cache, ContiguousKVCache):
            yield _contig_op(cache, i, line_no, obj)
        else:
            yield _paged_op(cache, toks, i, line_no, obj)
        i += 1


def _paged_op(c: PagedKVCache, toks: dict[Any, _Tokens], i: int, line: int,
              obj: dict[str, Any]) -> dict[str, Any]:
    op = obj["op"]
    bs = c.block_size
    cows_before = c.total_cows
    out: dict[str, Any] = {"i": i, "line": line, "op": op, "ok": True}
    seq = _seq(line, "child" if op == "fork" else "seq", obj["child" if op == "fork" else "seq"])
    tokens = _int_list(line, "tokens", obj["tokens"]) if "tokens" in obj else None
    hashes = _int_list(line, "block_hashes", obj.get("block_hashes", []))
    track = c.enable_prefix_caching
    try:
        if op == "allocate":
            n = len(tokens) if tokens is not None else _int(line, "n", obj["n"], 0)
            st = _Tokens(0)
            if track:
                st.extend(tokens, n, bs)
                if tokens is not None:
                    hashes = st.hashes
            status = c.can_allocate(n, hashes)
            out["can_allocate"] = status.value
            out["admitted"] = False
            if c.has_seq(seq):
                raise CacheError(f"sequence {seq!r} already allocated")
            if status is not AllocStatus.OK:
                need = -(-n // bs)
                raise CacheError(f"cannot allocate {need} blocks for {n} tokens ({status.value}): "
                                 f"{c.num_free_blocks} free, watermark {c.watermark_blocks}")
            if not c.allocate(seq, n, hashes):  # cannot happen: OK implies enough free blocks
                raise RuntimeError(f"line {line}: allocate failed after can_allocate said OK")
            out["admitted"] = True
            if track:
                toks[seq] = st
            out["num_cached_tokens"] = c.num_cached_tokens(seq)
        elif op == "append":
            if tokens is not None and not tokens:
                raise ReplayError(line, "field 'tokens' must not be empty for append")
            n = len(tokens) if tokens is not None else _int(line, "n", obj["n"], 1)
            need = c.num_new_blocks_for_append(seq, n)
            if track:
                st = toks[seq].copy()
                st.extend(tokens, n, bs)
                if tokens is not None:
                    hashes = st.hashes
            # can_append is the semantics' gate (vLLM v0 asks for its worst case, the others for the
            # blocks append takes); append itself changes nothing when it fails.
            res = c.append(seq, n, hashes) if c.can_append(seq, n) else None
            if res is None or not res.ok:
                raise CacheError(f"out of blocks: append of {n} tokens needs {need}, "
                                 f"{c.num_free_blocks} free")
            if track:
                toks[seq] = st
            out["cows"] = [list(p) for p in res.cows]
        elif op == "fork":
            parent = _seq(line, "parent", obj["parent"])
            c.fork(parent, seq)
            if track:
                toks[seq] = toks[parent].copy()
        elif op == "free":
            used = c.num_used_blocks
            t = obj.get("t")
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
                raise ReplayError(line, f"field 't' = {json.dumps(t)} must be a number (the sequence's "
                                        f"last access time)")
            c.free(seq, now=t)
            toks.pop(seq, None)
            out["blocks_freed"] = used - c.num_used_blocks
        elif op == "rollback":
            n = _int(line, "n", obj["n"], 0)
            out["blocks_freed"] = c.rollback(seq, n)
            if track:
                toks[seq].truncate(n, bs)
        else:  # free_before
            out["blocks_freed"] = c.free_blocks_before(seq, _int(line, "token", obj["token"], 0))
    except CacheError as e:
        out["ok"] = False
        out["error"] = str(e)
    out["num_free_blocks"] = c.num_free_blocks
    out["seq_blocks"] = list(c.block_table(seq)) if c.has_seq(seq) else None
    out["seq_num_blocks"] = len(c.block_table(seq)) if c.has_seq(seq) else None
    out["seq_num_tokens"] = c.num_tokens(seq) if c.has_seq(seq) else None
    out["num_cows"] = c.total_cows - cows_before
    out["total_cows"] = c.total_cows
    return out


def _contig_op(c: ContiguousKVCache, i: int, line: int, obj: dict[str, Any]) -> dict[str, Any]:
    op = obj["op"]
    if op not in CONTIG_OPS:
        raise ReplayError(line, f"op '{op}' is not defined for a contiguous cache (valid: allocate, free)")
    if "block_hashes" in obj:
        raise ReplayError(line, "'block_hashes' is not defined for a contiguous cache")
    seq = _seq(line, "seq", obj["seq"])
    out: dict[str, Any] = {"i": i, "line": line, "op": op, "ok": True}
    try:
        if op == "allocate":
            n = len(_int_list(line, "tokens", obj["tokens"])) if "tokens" in obj else obj["n"]
            n = _int(line, "n", n, 1)
            status = c.can_allocate(n)
            out["can_allocate"] = status.value
            if c.has_seq(seq):
                raise CacheError(f"sequence {seq!r} already allocated")
            out["admitted"] = False
            if not c.allocate(seq, n):
                raise CacheError(f"cannot allocate {n} slots ({status.value}): {c.free_slots} free, "
                                 f"largest hole {c.largest_free_extent}")
            out["admitted"] = True
        else:
            c.free(seq)
    except CacheError as e:
        out["ok"] = False
        out["error"] = str(e)
    out["free_slots"] = c.free_slots
    out["largest_free_extent"] = c.largest_free_extent
    out["num_holes"] = c.num_holes
    off, size = c.allocated(seq) if c.has_seq(seq) else (None, None)
    out["seq_offset"], out["seq_slots"] = off, size
    return out
