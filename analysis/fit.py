"""Defaults that fit the workload: a trace's longest request decides the model context and pool.

The built-in defaults (OPT-13B, 2048-token context, one A100-40GB) suit the ShareGPT-like synthetic
workload; real traces (Azure code: prompts up to 7.4k tokens; Mooncake: up to 135k) would see half
their requests rejected. `fit_workload` chooses, for the settings the user left at their defaults,
a model whose context covers the longest request (raising max_model_len only when no preset covers
it) and a GPU whose KV pool can hold that request, and says what it chose in plain lines. Settings
the user gave are never changed: the run then rejects what does not fit, loudly (analysis.rejections).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from analysis.experiment import Experiment
from sim.config import PagedCacheSpec, resolve
from sim.request import RequestSpec
from workloads.columns import TraceColumns

#: What `fixed` may name: settings the user chose (CLI option or --config file), never changed here.
FIT_SETTINGS: tuple[str, ...] = ("model", "gpu", "max_model_len", "pool")
#: Full-attention models tried for a trace, in order of preference (a sliding window, as Mistral-7B's,
#: changes what the memory breakdown means, so it is never picked on its own).
FIT_MODELS: tuple[str, ...] = ("opt-13b", "llama-2-13b", "llama-2-7b", "llama-3-8b")
#: GPUs tried when the pool cannot hold the longest request, smallest first.
FIT_GPUS: tuple[str, ...] = ("a100-40gb", "a100-80gb", "h100-sxm", "h200")
CONTEXT_STEP = 1024  # a raised max_model_len is rounded up to a multiple of this


@dataclass(frozen=True, slots=True)
class Fit:
    """The experiment to run and what was changed (empty when the defaults already fit)."""

    experiment: Experiment
    notes: tuple[str, ...] = ()


def longest_request(specs: Sequence[RequestSpec] | TraceColumns) -> int:
    """Longest prompt + output in tokens (0 for no requests); `specs` may also be workload columns."""
    if isinstance(specs, TraceColumns):
        return int((specs.prompt + specs.output).max()) if len(specs) else 0
    return max((s.prompt_len + s.output_len for s in specs), default=0)


def _holds(exp: Experiment, length: int) -> bool:
    """Every system of `exp` has a context and a pool that can hold one request of `length` tokens."""
    for system in exp.systems:
        try:
            res = resolve(exp.sim_config(system))
        except ValueError:  # the model does not fit on the GPU at all
            return False
        if res.max_model_len < length:
            return False
        spec = exp.cache_spec(system)
        if isinstance(spec, PagedCacheSpec):
            blocks = -(-length // spec.block_size)
            if blocks > res.num_blocks - int(spec.watermark * res.num_blocks):
                return False
        elif res.capacity_tokens < res.max_model_len:  # 'max' reserves max_model_len
            return False
    return True


def fit_workload(exp: Experiment, specs: Sequence[RequestSpec] | TraceColumns, fixed: Collection[str] = ()) -> Fit:
    """`exp` with model / max_model_len / GPU chosen to hold the longest request of `specs`.

    fixed: names from FIT_SETTINGS the user chose. Returns `exp` unchanged when it already holds the
    longest request or when nothing that fits can be chosen (the run then rejects, loudly).
    """
    length = longest_request(specs)
    if not length or _holds(exp, length):
        return Fit(exp)
    models = [exp.model] if "model" in fixed else [m for m in dict.fromkeys((exp.model, *FIT_MODELS))]
    gpus = [exp.gpu] if "gpu" in fixed or "pool" in fixed else list(dict.fromkeys((exp.gpu, *FIT_GPUS)))
    raise_len = not {"max_model_len", "model"} & set(fixed)  # a chosen model keeps its own context
    step = CONTEXT_STEP
    needed = -(-length // step) * step
    # First a preset context that covers the trace, then (no preset covers it) a raised max_model_len.
    for allow_raise in (False, True) if raise_len else (False,):
        for gpu in gpus:
            for model in models:
                over: dict[str, object] = {"model": model, "gpu": gpu}
                if allow_raise:
                    over["max_model_len"] = needed
                try:
                    cand = exp.with_overrides(over)
                except ValueError:
                    continue
                if _holds(cand, length):
                    return Fit(cand, _notes(exp, cand, length))
    return Fit(exp)


def _notes(old: Experiment, new: Experiment, length: int) -> tuple[str, ...]:
    from sim.presets import get_model

    preset_len = get_model(old.model).max_model_len if old.max_model_len is None else old.max_model_len
    what = []
    if new.model != old.model:
        what.append(f"--model {new.model}")
    if new.max_model_len != old.max_model_len:
        what.append(f"--max-model-len {new.max_model_len} (above the preset's "
                    f"{get_model(new.model).max_model_len})")
    if new.gpu != old.gpu:
        what.append(f"--gpu {new.gpu} (a pool that holds it)")
    return (f"the workload's longest request is {length} tokens, beyond {old.model}'s {preset_len}-token "
            f"context on {old.gpu}; using {', '.join(what)}. Pass --model/--gpu/--max-model-len to choose.",)
