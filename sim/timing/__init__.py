"""Time: how long a step takes.

`batch_shape` describes a step's work (prefill chunks, decode contexts, blocks touched), `latency`
turns it into seconds (roofline or calibrated model), `latency_params` reads and validates the versioned
parameters files (shipped roofline defaults in `params/`).
"""
