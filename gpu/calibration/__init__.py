"""Calibration: measured timings -> the simulator's latency-model parameters file (sim.timing.latency_params).

`kernels` fits the decode-attention coefficients from `pagesim bench` timings.
"""
