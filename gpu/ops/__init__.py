"""The Python API over the CUDA kernels: problems, checks before launch, launches on a backend.

`attention` (paged / partitioned / contiguous decode attention), `decode` (`run_paged_decode`, the
layout-free entry point), `cache_ops` (reshape_and_cache, copy_blocks, swap), `layout` (paged K/V pool
layouts), `dtypes` and `quant` (storage types and the fp8/int8 codec), `reference` (float64 NumPy
attention that every kernel is checked against).
"""
