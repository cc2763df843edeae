"""Calibration: measured timings -> the simulator's latency-model parameters file (sim.timing.latency_params).

`kernels` fits the decode-attention coefficients from `pagesim bench` timings; `gemm` fits the GEMM
efficiency curve (sim.timing.gemm) to linear-layer timings; `vidur` reads Vidur's operator-profile CSVs;
`serving` loads vLLM serving-benchmark results and replays them; `overheads` fits an engine profile's
per-step and per-sequence overheads by simulating them; `sources` recognizes each input of
`pagesim calibrate` and assembles one parameters file.
"""
