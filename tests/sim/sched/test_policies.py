"""Scheduler policies by name (mixed, vllm-v0, vllm-v1) and the cache semantics in whole engine runs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from enginekit import cfg, run

from sim.config import PagedCacheSpec, SchedulerConfig
from sim.request import RequestSpec


def _mix(seed: int, n: int = 40, shared: bool = True) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fam = int(rng.integers(3))
        ids = tuple(range(fam * 100, fam * 100 + 8)) if shared else ()
        out.append(RequestSpec(i, 0.05 * i, int(rng.integers(4, 40)), int(rng.integers(1, 30)),
                               n=2 if i % 7 == 3 else 1, spec_k=2 if i % 11 == 5 else 0, spec_accept=0.5,
                               prefix_hashes=ids, prefix_unit=4))
    return out


@pytest.mark.parametrize("semantics, policy, prefix", list(itertools.product(
    ["pagesim", "vllm-v0", "vllm-v1"], ["mixed", "vllm-v0", "vllm-v1"], [False, True])))
def test_every_combination_runs_with_invariants(semantics: str, policy: str, prefix: bool) -> None:
    c = cfg(capacity=160, cache=PagedCacheSpec(block_size=4, watermark=0.01, prefix_caching=prefix,
                                               semantics=semantics),
            scheduler=SchedulerConfig(policy=policy, max_num_batched_tokens=64, max_num_seqs=16))
    res = run(_mix(1), c)
    s = res.summary
    assert s["semantics"] == semantics and s["scheduler_policy"] == policy
    statuses = {r.status for r in res.requests}
    assert statuses <= {"finished", "rejected"}
    rejected = [r for r in res.requests if r.status == "rejected"]
    # Only vllm-v1 semantics refuses groups of several sequences (v1 has no fork).
    assert all("vllm-v1" in (r.reason or "") for r in rejected) and (bool(rejected) == (semantics == "vllm-v1"))


def _two_requests_policy_steps(policy: str) -> list[tuple[int, int]]:
    reqs = [RequestSpec("A", 0.0, 8, 20), RequestSpec("B", 0.55, 8, 5)]
    res = run(reqs, cfg(capacity=256, scheduler=SchedulerConfig(policy=policy)))
    assert all(r.status == "finished" for r in res.requests)
    return [(st.num_prefill_tokens, st.num_decode_tokens) for st in res.steps]


def test_vllm_v0_policy_runs_prefill_only_steps() -> None:
    mixed = _two_requests_policy_steps("mixed")
    v0 = _two_requests_policy_steps("vllm-v0")
    # B's prefill joins A's decode in one step under mixed batching; vLLM v0 stalls A for that step.
    assert (8, 1) in mixed and (8, 0) not in mixed[1:]
    assert (8, 0) in v0[1:] and (8, 1) not in v0
    assert len(v0) == len(mixed) + 1


def test_vllm_v1_policy_chunks_prompts_in_the_token_budget() -> None:
    reqs = [RequestSpec("A", 0.0, 100, 3)]
    sc = SchedulerConfig(policy="vllm-v1", max_num_batched_tokens=32, max_num_seqs=8)
    res = run(reqs, cfg(capacity=512, scheduler=sc))
    assert [st.num_prefill_tokens for st in res.steps[:4]] == [32, 32, 32, 4]


def test_vllm_v0_semantics_preempts_earlier_when_the_pool_is_full() -> None:
    reqs = [RequestSpec(i, 0.0, 7, 40) for i in range(8)]
    pre = {}
    for sem in ("pagesim", "vllm-v0"):
        c = cfg(capacity=96, cache=PagedCacheSpec(block_size=4, watermark=0.0, semantics=sem))
        pre[sem] = run(reqs, c).summary["num_preemptions"]
    assert pre["vllm-v0"] >= pre["pagesim"] > 0


def test_vllm_v1_null_block_counts_against_what_fits() -> None:
    # 8 blocks of 4: a request reaching 32 tokens fits pagesim's pool but not v1's 7 usable blocks.
    reqs = [RequestSpec("A", 0.0, 20, 13)]
    for sem, status in (("pagesim", "finished"), ("vllm-v1", "rejected")):
        c = cfg(capacity=32, cache=PagedCacheSpec(block_size=4, watermark=0.0, semantics=sem))
        (r,) = run(reqs, c).requests
        assert r.status == status
        assert status == "finished" or "minus 1 reserved" in (r.reason or "")
