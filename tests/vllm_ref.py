"""Differential check of pagesim's replay against vLLM's own block managers, op by op.

Two drivers speak the replay ops (allocate with token ids, append of one token, fork, free) to the
real vLLM code: V0Ref to vLLM 0.7.3's SelfAttnBlockSpaceManager exactly as its scheduler calls it
(can_allocate then allocate; can_append_slots then append_slots; fork; access time then free), V1Ref
to vLLM 0.34.0's BlockPool with the calls its KVCacheManager makes for one full-attention group
(get_computed_blocks capped at num_tokens - 1, allocate_slots' free-block check, touch,
get_new_blocks, cache_full_blocks; free in reverse). `run_stream` draws a random op stream, replays
it through `pagesim replay` with the matching --semantics and through the driver, and compares ok,
can_allocate, admitted, the free blocks, the sequence's block table and the copy-on-write pairs.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import vllm_src

from sim.memory.replay import replay


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class V0Ref:
    """vLLM 0.7.3's SelfAttnBlockSpaceManager driven like its scheduler drives it."""

    def __init__(self, bm: Any, block_size: int, num_blocks: int, prefix_caching: bool, watermark: float) -> None:
        self.m = bm.SelfAttnBlockSpaceManager(block_size, num_blocks, 0, watermark=watermark,
                                              enable_caching=prefix_caching)
        self.ok_status = bm.AllocStatus.OK
        self.seqs: dict[Any, vllm_src.Sequence] = {}

    def _track(self, seq: vllm_src.Sequence) -> None:
        seq.status = vllm_src.SequenceStatus.RUNNING
        self.seqs[seq.seq_id] = seq
        self.m.get_num_cached_tokens(seq)  # as the scheduler does; the tracker needs it before free

    def allocate(self, sid: Any, tokens: list[int]) -> dict[str, Any]:
        seq = vllm_src.Sequence(sid, list(tokens))
        group = vllm_src.SequenceGroup(seq)
        st = self.m.can_allocate(group)
        ok = st == self.ok_status
        if ok:
            self.m.allocate(group)
            self._track(seq)
        return {"ok": ok, "can_allocate": st.name, "admitted": ok}

    def append(self, sid: Any, token: int) -> dict[str, Any]:
        seq = self.seqs[sid]
        seq.tokens.append(token)
        if not self.m.can_append_slots(vllm_src.SequenceGroup(seq), 0):
            seq.tokens.pop()
            return {"ok": False}
        cows = self.m.append_slots(seq, 0)
        self.m.get_num_cached_tokens(seq)
        return {"ok": True, "cows": [list(p) for p in cows]}

    def fork(self, parent: Any, child: Any) -> dict[str, Any]:
        p = self.seqs[parent]
        c = vllm_src.Sequence(child, list(p.tokens))
        self.m.fork(p, c)
        self._track(c)
        return {"ok": True}

    def free(self, sid: Any, t: float | None) -> dict[str, Any]:
        seq = self.seqs.pop(sid)
        if t is not None:
            self.m.access_all_blocks_in_seq(seq, t)
        self.m.free(seq)
        return {"ok": True}

    def state(self, sid: Any) -> tuple[int, list[int] | None]:
        seq = self.seqs.get(sid)
        return self.m.get_num_free_gpu_blocks(), (list(self.m.get_block_table(seq)) if seq else None)


@dataclass
class _Request:
    """What BlockPool.cache_full_blocks reads of a vLLM v1 Request, plus the manager's per-request state."""

    request_id: Any
    tokens: list[int]
    block_hashes: list[Any] = field(default_factory=list)
    blocks: list[Any] = field(default_factory=list)
    num_cached: int = 0


class V1Ref:
    """vLLM 0.34.0's BlockPool driven with its KVCacheManager's calls (full attention, one group)."""

    def __init__(self, mods: tuple[Any, Any], block_size: int, num_blocks: int, prefix_caching: bool,
                 watermark: float) -> None:
        bp, self.ku = mods
        self.hash_fn = lambda obj: hashlib.sha256(pickle.dumps(obj)).digest()
        self.ku.init_none_hash(self.hash_fn)
        self.pool = bp.BlockPool(num_blocks, prefix_caching, block_size)
        self.bs, self.nb, self.pc = block_size, num_blocks, prefix_caching
        self.wm = int(watermark * num_blocks)  # KVCacheManager: int(watermark * kv_cache_config.num_blocks)
        self.reqs: dict[Any, _Request] = {}

    def _hash(self, r: _Request) -> None:  # the request's block hasher: full blocks only
        bs = self.bs
        while len(r.block_hashes) < len(r.tokens) // bs:
            k = len(r.block_hashes)
            parent = r.block_hashes[-1] if r.block_hashes else None
            r.block_hashes.append(self.ku.hash_block_tokens(self.hash_fn, parent, r.tokens[k * bs:(k + 1) * bs]))

    def _cache(self, r: _Request) -> None:  # SingleTypeKVCacheManager.cache_blocks
        full = min(len(r.tokens), len(r.block_hashes) * self.bs) // self.bs
        if self.pc and r.num_cached < full:
            self.pool.cache_full_blocks(r, r.blocks, r.num_cached, full, self.bs, 0)
            r.num_cached = full

    def _new_request(self, sid: Any, tokens: list[int]) -> dict[str, Any]:
        r = _Request(sid, list(tokens))
        self._hash(r)
        n, bs = len(r.tokens), self.bs
        hits: list[Any] = []
        if self.pc:  # get_computed_blocks: leading run, at most num_tokens - 1 tokens
            for h in r.block_hashes[:(n - 1) // bs]:
                got = self.pool.get_cached_block(h, [0])
                if not got:
                    break
                hits.append(got[0])
        need = _cdiv(n, bs) - len(hits) + sum(1 for b in hits if b.ref_cnt == 0)
        if need + self.wm > self.pool.get_num_free_blocks():
            st = "NEVER" if _cdiv(n, bs) + self.wm > self.nb - 1 else "LATER"
            return {"ok": False, "can_allocate": st, "admitted": False}
        if self.pc:
            self.pool.touch(hits)
        r.blocks = hits + self.pool.get_new_blocks(_cdiv(n, bs) - len(hits))
        r.num_cached = len(hits)
        self._cache(r)
        self.reqs[sid] = r
        return {"ok": True, "can_allocate": "OK", "admitted": True}

    def allocate(self, sid: Any, tokens: list[int]) -> dict[str, Any]:
        return self._new_request(sid, tokens)

    def append(self, sid: Any, token: int) -> dict[str, Any]:
        r = self.reqs[sid]
        r.tokens.append(token)
        nh = len(r.block_hashes)
        self._hash(r)
        need = max(_cdiv(len(r.tokens), self.bs) - len(r.blocks), 0)
        if need > self.pool.get_num_free_blocks():  # a running request: no watermark
            r.tokens.pop()
            del r.block_hashes[nh:]
            return {"ok": False}
        r.blocks += self.pool.get_new_blocks(need)
        self._cache(r)
        return {"ok": True, "cows": []}

    def fork(self, parent: Any, child: Any) -> dict[str, Any]:
        res = self._new_request(child, self.reqs[parent].tokens)
        return {"ok": res["ok"]}

    def free(self, sid: Any, t: float | None) -> dict[str, Any]:
        self.pool.free_blocks(reversed(self.reqs.pop(sid).blocks))
        return {"ok": True}

    def state(self, sid: Any) -> tuple[int, list[int] | None]:
        r = self.reqs.get(sid)
        return self.pool.get_num_free_blocks(), ([b.block_id for b in r.blocks] if r else None)


@dataclass(frozen=True)
class StreamSpec:
    """One random stream's settings (block size 4-16, 16-128 blocks, 300-1000 ops by default)."""

    block_size: int
    num_blocks: int
    num_ops: int
    prefix_caching: bool
    watermark: float

    @staticmethod
    def draw(rng: np.random.Generator, prefix_caching: bool) -> StreamSpec:
        return StreamSpec(int(rng.integers(4, 17)), int(rng.integers(16, 129)), int(rng.integers(300, 1001)),
                          prefix_caching, float(rng.choice([0.0, 0.01, 0.05])))


def _ops(rng: np.random.Generator, spec: StreamSpec, live: list[Any]) -> Iterator[dict[str, Any]]:
    """Random ops; `live` is kept by the caller (a refused allocate/fork creates nothing)."""
    bs = spec.block_size
    families = [list(rng.integers(0, 50, 8 * bs)) for _ in range(4)]
    nxt = 0
    for i in range(spec.num_ops):
        r = rng.random()
        if not live or r < 0.2:
            fam = families[int(rng.integers(len(families)))]
            n = int(rng.integers(1, 5 * bs))
            toks = [int(x) for x in fam[:n]]
            if rng.random() < 0.3:
                toks += [int(x) for x in rng.integers(0, 50, int(rng.integers(1, 2 * bs)))]
            yield {"op": "allocate", "seq": nxt, "tokens": toks}
            nxt += 1
        elif r < 0.7:
            yield {"op": "append", "seq": live[int(rng.integers(len(live)))], "tokens": [int(rng.integers(0, 4))]}
        elif r < 0.8:
            yield {"op": "fork", "parent": live[int(rng.integers(len(live)))], "child": nxt}
            nxt += 1
        else:
            op: dict[str, Any] = {"op": "free", "seq": live[int(rng.integers(len(live)))]}
            if rng.random() < 0.5:
                op["t"] = float(i)
            yield op


@dataclass
class StreamResult:
    """How far a stream agreed: ops compared, and the first disagreement (None if every op agreed)."""

    spec: StreamSpec
    num_ops: int
    mismatch: str | None = None
    refused: int = 0  # ops answered ok=false (out of blocks, watermark, NEVER)
    cows: int = 0  # copy-on-write pairs
    cache_hits: int = 0  # allocate/fork ops that found prompt blocks cached (num_cached_tokens > 0)


def run_stream(ref: Any, semantics: str, spec: StreamSpec, rng: np.random.Generator) -> StreamResult:
    """Replay one random stream through `replay(semantics=...)` and the vLLM driver, comparing each op."""
    feed: deque[str] = deque()

    def lines() -> Iterator[str]:
        while feed:
            yield feed.popleft()

    live: list[Any] = []
    cfg = {"op": "config", "block_size": spec.block_size, "num_blocks": spec.num_blocks,
           "prefix_caching": spec.prefix_caching, "watermark": spec.watermark, "semantics": semantics}
    feed.append(json.dumps(cfg))
    results: Iterator[dict[str, Any]] | None = None
    n = refused = cows = hits = 0
    for op in _ops(rng, spec, live):
        feed.append(json.dumps(op))
        if results is None:
            results = replay(lines())
        got = next(results)
        kind = op["op"]
        if kind == "allocate":
            want = ref.allocate(op["seq"], op["tokens"])
        elif kind == "append":
            want = ref.append(op["seq"], op["tokens"][0])
        elif kind == "fork":
            want = ref.fork(op["parent"], op["child"])
        else:
            want = ref.free(op["seq"], op.get("t"))
        sid = op["child"] if kind == "fork" else op["seq"]
        want["num_free_blocks"], want["seq_blocks"] = ref.state(sid)
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if diff:
            return StreamResult(spec, n, f"op {n} {json.dumps(op)}: (pagesim, vllm) differ on {diff}",
                                refused, cows, hits)
        n += 1
        refused += not got["ok"]
        cows += len(got.get("cows", ()))
        hits += got.get("num_cached_tokens", 0) > 0
        if got["ok"] and kind in ("allocate", "fork"):
            live.append(sid)
        elif kind == "free":
            live.remove(sid)
    return StreamResult(spec, n, None, refused, cows, hits)
