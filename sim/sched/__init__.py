"""Scheduling: what runs in each step, as a pure state change (no clock, no SimPy).

`sequence` holds per-sequence state (SeqGroup, SeqTable), `kv_ops` is the scheduler's only view of the
cache (opaque OK/LATER/NEVER results), `decode_set` keeps the running batch's sums, `scheduler` decides a
step (`step_output.SchedulerOutput`), `lifecycle` applies its effects (admit, finish, fork, abort) and
`swap` models the bounded CPU swap space, `window` the sliding-window stale slots.
"""
