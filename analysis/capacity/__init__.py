"""Capacity planning: the highest request rate a system serves within latency targets.

slo (targets and the verdict on a run), search (the bracketing search as pure functions), runner
(the search over real simulations on the sweep executors, resumable), plot (latency vs rate, knees).
"""
