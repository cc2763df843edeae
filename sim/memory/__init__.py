"""KV-cache memory: where the blocks and slots of the pool go.

Paged (PagedAttention): `free_queue` -> `block_pool` -> `paged_cache` (block tables, ref counts, fork,
copy-on-write, rollback, prefix caching via `prefix`); `semantics` names the behaviours: pagesim's own
(`paged_cache`), vLLM v0's (`vllm_v0_cache` over `v0_pool`) and vLLM v1's (`vllm_v1_cache`).
Contiguous: `extent_allocator` (first-fit / best-fit / buddy) -> `contiguous_cache` (per-request
reservations, measured external fragmentation). `outcomes` holds what cache calls return or raise;
`replay` runs an allocator op log against either cache. Nothing here knows about time or scheduling.
"""
