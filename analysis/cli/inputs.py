"""What the user asked for, checked before anything runs: contradictory options, the settings they
chose (which the trace fit must keep), and the notes that say what pagesim chose for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib
from rich.console import Console

from analysis.cli.tables import wrap

#: Options that only shape a synthetic workload: given with a trace they would be ignored, so refused.
SYNTHETIC_ONLY: dict[str, str] = {"preset": "--preset", "prompt_len": "--prompt-len", "output_len": "--output-len"}
#: CLI option -> the analysis.fit setting it fixes.
_OPTION_FIXES: dict[str, str] = {"model": "model", "gpu": "gpu", "max_len": "max_model_len", "kv_tokens": "pool",
                                 "kv_gb": "pool", "mem_util": "pool"}
#: --config key (or sweep axis) -> the analysis.fit setting it fixes.
_KEY_FIXES: dict[str, str] = {"model": "model", "gpu": "gpu", "max_model_len": "max_model_len",
                              "kv_capacity_tokens": "pool", "kv_budget_gb": "pool", "gpu_memory_utilization": "pool"}


def check_conflicts(opts: dict[str, Any], config: Path | None) -> None:
    """--trace (option or --config) with a synthetic-only option: ValueError naming both."""
    trace = opts.get("trace")
    if trace is None and config is not None and config.is_file():
        try:
            trace = (tomllib.loads(config.read_text(encoding="utf-8")).get("workload") or {}).get("trace")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
            return  # load_experiment reports a bad file with its own message
    if trace is None:
        return
    given = [flag for name, flag in SYNTHETIC_ONLY.items() if opts.get(name) is not None]
    if given:
        verb = "shape" if len(given) > 1 else "shapes"
        raise ValueError(f"{' and '.join(given)} {verb} a synthetic workload and conflict with --trace {trace} "
                         f"(valid: either --trace, or {', '.join(SYNTHETIC_ONLY.values())})")


def fixed_settings(opts: dict[str, Any], config: Path | None, axes: tuple[str, ...] = ()) -> frozenset[str]:
    """The settings the user chose (options given, keys of the --config file, sweep axes)."""
    out = {v for k, v in _OPTION_FIXES.items() if opts.get(k) is not None}
    out |= {_KEY_FIXES[a] for a in axes if a in _KEY_FIXES}
    if config is not None and config.is_file():
        data = tomllib.loads(config.read_text(encoding="utf-8"))  # already validated by load_experiment
        out |= {v for k, v in _KEY_FIXES.items() if k in data}
    return frozenset(out)


def fit_to_workload(exp: Any, fixed: frozenset[str], o: Console, *, lean: bool = False
                    ) -> tuple[Any, Any, dict[str, Any]]:
    """(experiment, specs, load stats): the workload built once, the defaults fitted to it, notes printed.

    lean: the requests stay columns (no list of RequestSpecs is built); specs is then None and the run
    streams them from the columns itself."""
    from analysis import api
    from analysis.fit import fit_workload
    from sim.config import resolve

    for system in exp.systems:  # an impossible pool (too large, smaller than a block) fails before anything
        resolve(exp.sim_config(system))
    build = api.workload_columns if lean else api.build_workload
    specs: Any
    specs, stats = build(exp)
    fit = fit_workload(exp, specs, fixed)
    if fit.experiment is not exp and exp.workload.trace is None:
        # Synthetic outputs are cut to the context: rebuild with the fitted one, as a rerun of config.toml will.
        specs, stats = build(fit.experiment)
    if lean:
        specs = None
    for note in (*fit.notes, *workload_notes(stats)):
        o.print(wrap(f"note: {note}", o), markup=False, highlight=False)
    return fit.experiment, specs, stats


def workload_notes(stats: dict[str, Any]) -> list[str]:
    """What building the workload changed, in words (synthetic outputs cut to the context)."""
    n = int(stats.get("clipped_to_max_model_len") or 0)
    if not n:
        return []
    return [f"{n} of {stats.get('num_requests')} synthetic requests would run past max_model_len: their "
            "output ends there (as vLLM's benchmarks keep ShareGPT pairs within the context)"]
