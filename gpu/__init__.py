"""pagesim gpu: CUDA C paged-attention kernels run through CuPy (or on the CPU through a shim),
the benchmark harness and calibration of the simulator's latency model."""
