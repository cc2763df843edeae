"""KV-cache memory: where the blocks and slots of the pool go.

Paged (PagedAttention): `free_queue` -> `block_pool` -> `paged_cache` (block tables, ref counts, fork,
copy-on-write, rollback, prefix caching via `prefix`).
Contiguous: `extent_allocator` (first-fit / best-fit / buddy) -> `contiguous_cache` (per-request
reservations, measured external fragmentation). `outcomes` holds what cache calls return or raise;
`replay` runs an allocator op log against either cache. Nothing here knows about time or scheduling.
"""
