"""The baseline a user would otherwise pick: torch's scaled_dot_product_attention on a contiguous cache.

`TorchSdpa(problem)` copies the problem's K/V into padded [num_seqs, kv_heads, max_len, head_dim]
tensors on the GPU (outside the timed region) and launches one SDPA call per `()`; mixed lengths get a
boolean mask. GQA uses `enable_gqa` (torch >= 2.5) or, on older torch, K/V repeated per query head;
`kv_bytes` counts the K/V bytes the call is handed, padding and repetition included.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpu.ops.attention import DecodeProblem
from gpu.ops.layout import gather_contiguous


class TorchSdpa:
    """One prepared SDPA decode call (needs torch with CUDA); `output()` is float32 [seqs, heads, dim]."""

    def __init__(self, p: DecodeProblem) -> None:
        import torch
        import torch.nn.functional as F

        self._torch, self._sdpa = torch, F.scaled_dot_product_attention
        st = p.storage

        def upload(a: np.ndarray) -> Any:
            a = np.ascontiguousarray(a)
            # bf16 travels as uint16 bits; int16 is the view every torch version can take from NumPy
            t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if st.name == "bfloat16" else torch.from_numpy(a)
            return t.to("cuda")

        zero = st.encode(np.zeros(1, np.float32))[0]  # padding must be finite: masked V rows still multiply
        k = upload(gather_contiguous(p.k_pool, p.block_tables, p.context_lens, p.max_len, pad_value=zero))
        v = upload(gather_contiguous(p.v_pool, p.block_tables, p.context_lens, p.max_len, pad_value=zero))
        self.q = upload(p.q).unsqueeze(2)  # [seqs, heads, 1, dim]
        self.kwargs: dict[str, Any] = {"scale": float(p.scale)}
        if int(p.context_lens.min(initial=p.max_len)) < p.max_len:
            lens = torch.from_numpy(p.context_lens.astype(np.int64)).cuda()
            self.kwargs["attn_mask"] = (torch.arange(p.max_len, device="cuda")[None, :] < lens[:, None])[:, None, None, :]
        if p.num_heads != p.num_kv_heads:
            try:
                self._sdpa(self.q, k, v, enable_gqa=True, **self.kwargs)
                self.kwargs["enable_gqa"] = True
            except TypeError:  # torch < 2.5: materialize one K/V head per query head
                group = p.num_heads // p.num_kv_heads
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        self.k, self.v = k, v
        self.kv_bytes = int(k.numel() * k.element_size() + v.numel() * v.element_size())
        self._out: Any = None

    def __call__(self) -> None:
        self._out = self._sdpa(self.q, self.k, self.v, **self.kwargs)

    def output(self) -> np.ndarray:
        """The last call's result as float32 [num_seqs, num_heads, head_dim] (synchronizes)."""
        if self._out is None:
            self()
        self._torch.cuda.synchronize()
        return self._out[:, :, 0, :].float().cpu().numpy()
