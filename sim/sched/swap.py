"""The CPU swap space: a bounded pool of KV blocks in host memory and the PCIe cost of moving them.

Swap-mode preemption copies a sequence group's physical blocks here and frees them on the GPU;
swapping in copies them back. Only sizes and transfer times are modelled (no block identities).
`overlap_swap_in` is the prefetch model (swap-in copies overlapping a forward pass) and `SwapStats`
applies it to each step and keeps the run's transfer statistics.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.sched.step_output import SchedulerOutput


class SwapSpaceError(Exception):
    """Misuse of the swap space (unknown or duplicate owner); the message names the owner id."""


class SwapSpace:
    """`capacity_blocks` host blocks of `block_bytes` each, moved at `pcie_bandwidth_Bps` one way, each
    block also paying `block_copy_s`: the fixed cost of the copy calls that move it (an engine profile's
    swap_copy_s times its copies per block; vLLM v0 issues one cudaMemcpyAsync per block, layer and K/V,
    which is why small blocks swap slowly).

    Invariants (check_invariants): used_blocks == sum of the blocks held per owner <= capacity_blocks;
    every owner holds >= 1 block.
    """

    def __init__(self, capacity_blocks: int, block_bytes: float, pcie_bandwidth_Bps: float,
                 block_copy_s: float = 0.0) -> None:
        if capacity_blocks < 0:
            raise ValueError(f"capacity_blocks = {capacity_blocks} out of range (valid: >= 0)")
        if not block_bytes > 0 or not pcie_bandwidth_Bps > 0:
            raise ValueError(f"block_bytes = {block_bytes}, pcie_bandwidth_Bps = {pcie_bandwidth_Bps} "
                             f"out of range (valid: > 0)")
        if not block_copy_s >= 0:
            raise ValueError(f"block_copy_s = {block_copy_s} out of range (valid: seconds >= 0)")
        self.capacity_blocks = int(capacity_blocks)
        self.block_bytes = float(block_bytes)
        self.pcie_bandwidth_Bps = float(pcie_bandwidth_Bps)
        self.block_copy_s = float(block_copy_s)
        self._s_per_block = self.block_bytes / self.pcie_bandwidth_Bps + self.block_copy_s
        self._held: dict[Hashable, int] = {}
        self.used_blocks = 0
        self.total_out = 0  # blocks ever swapped out
        self.total_in = 0  # blocks ever swapped in

    @property
    def free_blocks(self) -> int:
        """Host blocks not holding anything."""
        return self.capacity_blocks - self.used_blocks

    def can_swap_out(self, num_blocks: int) -> bool:
        """True if `num_blocks` more blocks fit in the host pool."""
        return num_blocks <= self.free_blocks

    def swap_out(self, owner: Hashable, num_blocks: int) -> float:
        """Store `num_blocks` for `owner`; returns the transfer time in seconds.

        SwapSpaceError if the owner already holds blocks or they do not fit (check can_swap_out first).
        """
        if owner in self._held:
            raise SwapSpaceError(f"swap owner {owner!r} already holds {self._held[owner]} blocks")
        if num_blocks < 1 or num_blocks > self.free_blocks:
            raise SwapSpaceError(f"swap owner {owner!r}: {num_blocks} blocks do not fit "
                                 f"(valid: 1..{self.free_blocks} free host blocks)")
        self._held[owner] = num_blocks
        self.used_blocks += num_blocks
        self.total_out += num_blocks
        return self.transfer_time(num_blocks)

    def swap_in(self, owner: Hashable, gpu_blocks: int | None = None) -> float:
        """Release the owner's host blocks; returns the time to copy `gpu_blocks` (default: all) back."""
        n = self._held.pop(owner, None)
        if n is None:
            raise SwapSpaceError(f"swap owner {owner!r} holds no blocks")
        self.used_blocks -= n
        moved = n if gpu_blocks is None else gpu_blocks
        self.total_in += moved
        return self.transfer_time(moved)

    def discard(self, owner: Hashable) -> None:
        """Drop the owner's host blocks without copying (an aborted swapped request)."""
        n = self._held.pop(owner, None)
        if n is None:
            raise SwapSpaceError(f"swap owner {owner!r} holds no blocks")
        self.used_blocks -= n

    def held(self, owner: Hashable) -> int:
        """Blocks the owner holds (0 if none)."""
        return self._held.get(owner, 0)

    @property
    def bytes_out(self) -> float:
        """Bytes ever copied to the host."""
        return self.total_out * self.block_bytes

    @property
    def bytes_in(self) -> float:
        """Bytes ever copied back to the GPU."""
        return self.total_in * self.block_bytes

    def transfer_time(self, num_blocks: int) -> float:
        """Seconds to move `num_blocks` over PCIe in one direction: bytes / bandwidth + the copy calls'
        fixed cost, per block."""
        if not self.block_copy_s:  # the bandwidth-only model, bit for bit as before
            return num_blocks * self.block_bytes / self.pcie_bandwidth_Bps
        return num_blocks * self._s_per_block

    def check_invariants(self) -> None:
        """Raise AssertionError naming the owner if an invariant (class doc) is broken."""
        for o, n in self._held.items():
            assert n >= 1, f"swap owner {o!r} holds {n} blocks"
        assert sum(self._held.values()) == self.used_blocks, "used_blocks != sum of held blocks"
        assert 0 <= self.used_blocks <= self.capacity_blocks, \
            f"used {self.used_blocks} outside 0..{self.capacity_blocks}"


def overlap_swap_in(group_times: list[float], compute_s: float) -> tuple[float, int]:
    """Swap-in copies issued one after another on a copy stream while a forward pass of `compute_s`
    seconds runs: returns (transfer time beyond the forward pass, groups whose copy ended within it).

    A group's copy is hidden (a prefetch hit) when the copies up to and including it end by the end
    of the forward pass; the step lasts max(compute, all copies).
    """
    done = 0.0
    hidden = 0
    for t in group_times:
        done += t
        if done <= compute_s:
            hidden += 1
    return max(0.0, done - compute_s), hidden


class SwapStats:
    """How a run's swap transfers met its steps: time on / off the critical path, prefetch hits.

    A swap-out precedes the forward pass (the blocks it frees are written by it). A swap-in is on the
    critical path, or with `prefetch` overlaps the forward pass on a copy stream (overlap_swap_in).
    With `overlap` (vLLM v0.1's worker: every copy on a cache stream, each layer waiting only for its
    own layer's copies) the PCIe time of swap-outs and swap-ins overlaps the forward pass, while the
    copy calls' fixed cost (`block_copy_s` per block, issued by the CPU before the pass) stays on the
    critical path: step = compute + calls + max(0, PCIe - compute).
    """

    def __init__(self, prefetch: bool, *, overlap: bool = False, block_copy_s: float = 0.0) -> None:
        self.prefetch = prefetch
        self.overlap = overlap
        self.block_copy_s = block_copy_s
        self.exposed_s = 0.0  # transfer time that lengthened steps
        self.hidden_s = 0.0  # transfer time hidden behind forward passes
        self.num_prefetches = 0
        self.num_prefetch_hidden = 0

    def step(self, out: SchedulerOutput, compute_s: float) -> float:
        """The step's duration with its swaps; sets out.swap_exposed_s and out.swap_hidden."""
        if self.overlap and (out.swap_in_s or out.swap_out_s):
            return self._step_overlapped(out, compute_s)
        exposed_in, hidden = out.swap_in_s, 0
        if self.prefetch and out.swap_in_s:
            exposed_in, hidden = overlap_swap_in(out.swap_in_groups_s, compute_s)
            self.num_prefetches += len(out.swap_in_groups_s)
            self.num_prefetch_hidden += hidden
        out.swap_hidden = hidden
        out.swap_exposed_s = out.swap_out_s + exposed_in
        self.exposed_s += out.swap_exposed_s
        self.hidden_s += out.swap_in_s - exposed_in
        return compute_s + out.swap_exposed_s

    def _step_overlapped(self, out: SchedulerOutput, compute_s: float) -> float:
        calls = (out.swap_out_blocks + out.swap_in_blocks) * self.block_copy_s
        pcie = max(0.0, out.swap_out_s + out.swap_in_s - calls)
        exposed_pcie = max(0.0, pcie - compute_s)
        # Swap-in groups whose bytes landed within the pass (the swap-outs are copied first).
        done, hidden = out.swap_out_s - out.swap_out_blocks * self.block_copy_s, 0
        for t in out.swap_in_groups_s:
            done += t
            hidden += done <= compute_s
        if self.prefetch:
            self.num_prefetches += len(out.swap_in_groups_s)
            self.num_prefetch_hidden += hidden
        out.swap_hidden = hidden
        out.swap_exposed_s = calls + exposed_pcie
        self.exposed_s += out.swap_exposed_s
        self.hidden_s += pcie - exposed_pcie
        return compute_s + out.swap_exposed_s

    def summary(self, space: SwapSpace) -> dict[str, Any]:
        """Summary extras: blocks, bytes and PCIe seconds each way, exposed / hidden time, prefetch hits."""
        n = self.num_prefetches
        return {
            "swap_out_blocks": space.total_out, "swap_in_blocks": space.total_in,
            "swap_out_bytes": space.bytes_out, "swap_in_bytes": space.bytes_in,
            "swap_out_s": space.transfer_time(space.total_out), "swap_in_s": space.transfer_time(space.total_in),
            "swap_exposed_s": self.exposed_s, "swap_hidden_s": self.hidden_s,
            "num_prefetches": n, "num_prefetch_hidden": self.num_prefetch_hidden,
            "prefetch_hidden_pct": 100.0 * self.num_prefetch_hidden / n if n else float("nan"),
        }
