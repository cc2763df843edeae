"""The decode-kernel benchmark behind `pagesim bench`: `grid` (configs with stable ids), `timing`
(CUDA-event and wall timers, L2 flush), `device` (device detection and peak bandwidth), `torch_sdpa`
(the torch baseline), `output` (the resumable timings table) and `harness` (measure every config).
Figures of a timings table are drawn in analysis.bench_plots.
"""
