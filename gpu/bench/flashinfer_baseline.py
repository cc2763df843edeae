"""FlashInfer's paged decode kernel as an optional baseline of the goal grid, where flashinfer and a CUDA
torch are installed. It reads the same device pools (zero-copy through DLPack): FlashInfer's "HND"
paged layout, [num_pages, num_kv_heads, page_size, head_dim], is pagesim's pool layout, and the block
table becomes its (indptr, indices, last_page_len) page list. fp16 KV only (fp8 needs its scale API).
Not exercised in CI (no GPU there): `unavailable()` names the reason it cannot run, and the goal
runner records that reason instead of a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpu.bench.goal import DeviceProblem, GoalShape

WORKSPACE_BYTES = 128 << 20


def unavailable(backend_name: str, shape: GoalShape) -> str:
    """Why the baseline cannot run for this shape here ('' when it can)."""
    if backend_name != "cupy":
        return "flashinfer baseline needs the cupy backend (a CUDA GPU)"
    if shape.kv_dtype != "fp16":
        return "flashinfer baseline: fp16 KV only"
    try:
        import flashinfer  # noqa: F401
        import torch
    except ImportError as e:
        return f"flashinfer baseline: {e.name or e} is not installed"
    if not torch.cuda.is_available():
        return "flashinfer baseline: torch sees no CUDA device"
    return ""


def make_launch(shape: GoalShape, prob: DeviceProblem) -> tuple[Callable[[], None], Callable[[], Any]]:
    """(launch, output): one FlashInfer decode over the problem's pools, and its last output (torch)."""
    import flashinfer
    import torch

    b, bs = shape.batch, shape.block_size
    per_seq = prob.tables.shape[1]
    dev = torch.device("cuda")
    k, v, q = (torch.from_dlpack(a) for a in (prob.k_pool, prob.v_pool, prob.q))
    indices = torch.from_dlpack(prob.tables).reshape(-1).to(torch.int32)
    indptr = torch.arange(0, (b + 1) * per_seq, per_seq, dtype=torch.int32, device=dev)
    last = torch.full((b,), shape.context - (per_seq - 1) * bs, dtype=torch.int32, device=dev)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
        torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=dev), kv_layout="HND")
    wrapper.plan(indptr, indices, last, shape.num_heads, shape.num_kv_heads, shape.head_dim, bs,
                 pos_encoding_mode="NONE", q_data_type=torch.float16, kv_data_type=torch.float16)
    box: dict[str, Any] = {}

    def launch() -> None:
        box["out"] = wrapper.run(q, (k, v))

    return launch, lambda: box.get("out")
