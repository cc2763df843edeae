"""An experiment: workload + model + GPU + cache systems + scheduler settings + seed, as one value.

Built from built-in defaults, a TOML file (`pagesim run --config exp.toml`), CLI options, or sweep
overrides (`with_overrides`), validated with one-line errors naming the field and its valid range.
`to_dict()` is the effective configuration saved next to the results (config.toml re-runs it).
System names: paged[-B][+prefix], max|pow2|pow2-output|oracle (= contig-POLICY[-PLACEMENT]).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomllib

from sim.checks import is_int, is_num, out_of_range
from sim.config import (
    CACHE_SEMANTICS,
    CONTIG_PLACEMENTS,
    CONTIG_POLICIES,
    CacheSpec,
    ContiguousCacheSpec,
    PagedCacheSpec,
    SchedulerConfig,
    SimConfig,
)
from sim.request import SpecError
from workloads.modes import SAMPLING_MIXES, SamplingMix, SamplingMode, parse_mix

if TYPE_CHECKING:
    from sim.cluster import ClusterSpec

DEFAULT_SYSTEMS: tuple[str, ...] = ("paged", "max", "pow2", "oracle")
SYNTHETIC_NUM_REQUESTS = 300
SYNTHETIC_RATE = 4.0
SAMPLING_HELP = ("greedy, n=K (parallel samples), beam=K (beam search), spec=K[@P] (K draft tokens, "
                 "acceptance P, default 0.7), or a mix: " + ", ".join(SAMPLING_MIXES) + " or FRAC:KIND:ARGS,...")


class ConfigError(SpecError):
    """A bad experiment option; the message names the file (if any), the field and the valid range."""


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """Where requests come from: a synthetic preset or a trace file, plus reshaping and sampling.

    preset: synthetic workload preset (used when `trace` is None). trace/format: a trace file and its
    format (None: detected). num_requests: synthetic count (default 300) / first N of a trace (None: all).
    rate: requests/s: synthetic arrival rate (default 4) or arrival rate for a trace without timestamps;
    a timestamped trace is rescaled to this mean rate (None: replayed as recorded).
    arrival/cv: synthetic arrival process and its coefficient of variation (gamma). prompt_len /
    output_len: length-distribution overrides ('fixed:N', 'uniform:LO:HI', 'lognormal:MEAN[:SIGMA]').
    window: (start_s, end_s) of a trace. sampling: applied to every request (see SAMPLING_HELP).
    """

    preset: str = "sharegpt"
    trace: str | None = None
    format: str | None = None
    num_requests: int | None = None
    rate: float | None = None
    arrival: str = "poisson"
    cv: float = 1.0
    prompt_len: str | None = None
    output_len: str | None = None
    window: tuple[float, float] | None = None
    skip_bad_rows: bool = False
    sampling: str | None = None

    def __post_init__(self) -> None:
        if self.trace is None:  # synthetic: fill the defaults so the saved config shows real numbers
            if self.num_requests is None:
                object.__setattr__(self, "num_requests", SYNTHETIC_NUM_REQUESTS)
            if self.rate is None and self.arrival != "burst":
                object.__setattr__(self, "rate", SYNTHETIC_RATE)
        from workloads.loader import TRACE_FORMATS
        from workloads.synthetic import WORKLOAD_PRESETS

        if self.trace is None and self.preset not in WORKLOAD_PRESETS:
            raise _bad("workload.preset", ", ".join(WORKLOAD_PRESETS), self.preset)
        if self.trace is not None and not Path(self.trace).is_file():
            raise ConfigError(f"workload.trace = {self.trace!r}: file not found")
        if self.format is not None and self.format not in TRACE_FORMATS:
            raise _bad("workload.format", ", ".join(TRACE_FORMATS) + " (or omit to detect)", self.format)
        if self.num_requests is not None and (not is_int(self.num_requests) or self.num_requests < 1):
            raise _bad("workload.num_requests", "integer >= 1, or omitted for all", self.num_requests)
        if self.rate is not None and (not is_num(self.rate) or self.rate <= 0):
            raise _bad("workload.rate", "requests/s > 0", self.rate)
        if not is_num(self.cv) or self.cv <= 0:
            raise _bad("workload.cv", "> 0", self.cv)
        if self.window is not None and (len(self.window) != 2 or not 0 <= self.window[0] < self.window[1]):
            raise _bad("workload.window", "[start_s, end_s] with 0 <= start < end", self.window)
        if self.sampling is not None:
            parse_sampling(self.sampling)

    def describe(self) -> str:
        """A short human description ("sharegpt-like synthetic, 300 requests at 4 req/s")."""
        what = f"trace {Path(self.trace).name}" if self.trace else f"{self.preset}-like synthetic"
        if self.num_requests:
            what += f", {self.num_requests} requests"
        if self.rate:
            what += f" at {self.rate:g} req/s"
        return what + ("" if self.sampling is None else f", sampling {self.sampling}")


@dataclass(frozen=True, slots=True)
class Experiment:
    """One experiment. `systems` are run on the same workload; cache options apply to all of them.

    kv_capacity_tokens (token slots) or kv_budget_gb (GiB of KV pool) fix the pool size; neither:
    sized from the GPU memory and gpu_memory_utilization. latency: None = roofline, else a
    calibrated parameters JSON path. engine: an engine profile name (sim.timing.engines; None: the
    latency file's, else "basic"). sliding_window: None = the model's attention window, 0 = none,
    W = attend to the last W tokens. scheduler: SchedulerConfig fields (swap pool, prefetch, PCIe rate
    among them). seed: workload and engine randomness (two independent streams derived from it).
    replicas / router / router_load_factor: identical replicas of each system behind a router
    (sim.cluster; 1 = a single engine), the routing policy and prefix-aware routing's load bound.
    """

    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    model: str = "opt-13b"
    gpu: str = "a100-40gb"
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    block_size: int = 16
    placement: str = "first_fit"
    prefix_caching: bool = False
    semantics: str = "pagesim"
    kv_capacity_tokens: int | None = None
    kv_budget_gb: float | None = None
    gpu_memory_utilization: float = 0.9
    kv_dtype: str = "fp16"
    max_model_len: int | None = None
    sliding_window: int | None = None
    latency: str | None = None
    engine: str | None = None
    memory_sample_interval_s: float | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    seed: int = 0
    replicas: int = 1
    router: str = "round-robin"
    router_load_factor: float = 1.25

    def __post_init__(self) -> None:
        from sim.presets import GPUS, MODELS

        if self.model.lower() not in MODELS:
            raise _bad("model", ", ".join(MODELS), self.model)
        if self.gpu.lower() not in GPUS:
            raise _bad("gpu", ", ".join(GPUS), self.gpu)
        if not self.systems:
            raise _bad("systems", "a non-empty list of systems", self.systems)
        if self.semantics not in CACHE_SEMANTICS:
            raise _bad("semantics", ", ".join(CACHE_SEMANTICS), self.semantics)
        for s in self.systems:
            self.cache_spec(s)
        if self.kv_budget_gb is not None and (not is_num(self.kv_budget_gb) or self.kv_budget_gb <= 0):
            raise _bad("kv_budget_gb", "GiB > 0", self.kv_budget_gb)
        if self.kv_budget_gb is not None and self.kv_capacity_tokens is not None:
            raise ConfigError("kv_budget_gb and kv_capacity_tokens both given: choose one")
        if self.kv_budget_gb is not None:
            self._check_budget_fits_gpu()
        if not is_int(self.seed) or self.seed < 0:
            raise _bad("seed", "integer >= 0", self.seed)
        if self.latency is not None and not Path(self.latency).is_file():
            raise ConfigError(f"latency = {self.latency!r}: parameters file not found (valid: a JSON file "
                              "from `pagesim calibrate`, or omit for the roofline model)")
        for s in self.systems:  # SimConfig validates the remaining fields
            self.sim_config(s)
        self.cluster_spec()

    def cluster_spec(self) -> ClusterSpec:
        """The replicas and router every system runs behind (one replica: the single engine)."""
        from sim.cluster import ClusterSpec

        return ClusterSpec(self.replicas, self.router, self.router_load_factor)

    def _check_budget_fits_gpu(self) -> None:
        """A KV budget larger than what the model's weights leave of the GPU's whole memory is refused:
        the pool could not exist (a hypothetical larger pool is kv_capacity_tokens, bounded separately)."""
        from sim.presets import get_gpu, get_model, kv_capacity_tokens
        from sim.request import SpecError

        model, gpu = get_model(self.model), get_gpu(self.gpu)
        try:
            slots = kv_capacity_tokens(model, gpu, gpu_memory_utilization=1.0, kv_dtype=self.kv_dtype)
        except SpecError:
            return  # the model does not fit at all: SimConfig validation says so with its own message
        most = slots * model.kv_bytes_per_token(self.kv_dtype) / (1 << 30)
        assert self.kv_budget_gb is not None
        if self.kv_budget_gb > most:
            raise _bad("kv_budget_gb", f"0 < GiB <= {most:.1f}, what {self.model}'s weights leave of "
                       f"{self.gpu}'s {gpu.memory_bytes / (1 << 30):.0f} GiB; a larger --gpu, or kv_capacity_tokens "
                       "for a hypothetical pool", self.kv_budget_gb)

    def cache_spec(self, system: str) -> CacheSpec:
        """The cache spec of a system name (see module docstring); ConfigError for an unknown name."""
        return parse_system(system, self.block_size, self.placement, self.prefix_caching, self.semantics)

    def sim_config(self, system: str) -> SimConfig:
        """The engine configuration for one system of this experiment."""
        cap = self.kv_capacity_tokens
        if self.kv_budget_gb is not None:
            from sim.presets import get_model

            spec = self.cache_spec(system)
            bs = spec.block_size if isinstance(spec, PagedCacheSpec) else None
            cap = max(1, int(self.kv_budget_gb * (1 << 30) // get_model(self.model).kv_bytes_per_token(
                self.kv_dtype, block_size=bs)))
        return SimConfig(model=self.model, gpu=self.gpu, cache=self.cache_spec(system), scheduler=self.scheduler,
                         kv_capacity_tokens=cap, gpu_memory_utilization=self.gpu_memory_utilization,
                         kv_dtype=self.kv_dtype, max_model_len=self.max_model_len,
                         sliding_window=self.sliding_window, latency=self.latency, engine=self.engine,
                         memory_sample_interval_s=self.memory_sample_interval_s)

    def title(self) -> str:
        """"<model> on <gpu>, <workload>" for figure and report titles."""
        reps = f" x{self.replicas} replicas ({self.router})" if self.replicas > 1 else ""
        return f"{self.model} on {self.gpu}{reps}, {self.workload.describe()}"

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (round-trips through `from_dict`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("workload", "scheduler"):
                v = {g.name: _plain(getattr(v, g.name)) for g in fields(v)}
            out[f.name] = _plain(v)
        return out

    def with_overrides(self, params: dict[str, Any]) -> Experiment:
        """A copy with overrides: top-level fields, `workload.X` / `scheduler.X`, or the short names
        `system` (one system), `rate` and `sampling` (workload fields)."""
        d = self.to_dict()
        for key, value in params.items():
            if key == "system":
                d["systems"] = [value]
            elif key in ("rate", "sampling", "num_requests", "preset", "trace"):
                d["workload"][key] = value
            elif "." in key:
                sect, _, sub = key.partition(".")
                if sect not in ("workload", "scheduler"):
                    raise ConfigError(f"override '{key}': unknown section '{sect}' (valid: workload, scheduler)")
                d[sect][sub] = value
            else:
                d[key] = value
        return from_dict(d)


def from_dict(data: dict[str, Any], source: str = "") -> Experiment:
    """Build and validate an Experiment from plain data (a parsed TOML file or `to_dict()` output).

    Unknown keys and bad values raise ConfigError naming `source` (a file name), the field and the
    valid choices; a misspelt key gets a suggestion.
    """
    pre = f"{source}: " if source else ""
    try:
        data = dict(data)
        data.pop("sweep", None)  # a sweep's axes (saved with its config); read by sweep_axes()
        wl = _section(data.pop("workload", {}) or {}, WorkloadConfig, "workload.")
        sch = _section(data.pop("scheduler", {}) or {}, SchedulerConfig, "scheduler.")
        top = _section(data, Experiment, "", skip=("workload", "scheduler"))
        if "systems" in top:
            s = top["systems"]
            top["systems"] = tuple([s] if isinstance(s, str) else s)
        if "window" in wl and wl["window"] is not None:
            wl["window"] = tuple(float(x) for x in wl["window"])
        return Experiment(workload=WorkloadConfig(**wl), scheduler=SchedulerConfig(**sch), **top)
    except (SpecError, ValueError, TypeError) as exc:
        msg = str(exc).replace("config field ", "field ")
        raise ConfigError(f"{pre}{msg}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment TOML file (FileNotFoundError / ConfigError with the file name)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: experiment file not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    return from_dict(data, source=str(p))


def parse_system(name: str, block_size: int = 16, placement: str = "first_fit",
                 prefix_caching: bool = False, semantics: str = "pagesim") -> CacheSpec:
    """'paged', 'paged-32', 'paged-16+prefix', 'paged-16@vllm-v0', 'max', 'pow2-best_fit',
    'contig-oracle-buddy' -> CacheSpec. A paged name's '@SEMANTICS' overrides `semantics`."""
    s = str(name).strip().lower()
    valid = ("paged[-B][+prefix][@pagesim|@vllm-v0|@vllm-v1], max, pow2, pow2-output, oracle (optionally "
             "contig- prefix and -first_fit/-best_fit/-buddy)")
    if s.startswith("paged"):
        rest, at, sem = s[len("paged"):].partition("@")
        if at:
            if sem not in CACHE_SEMANTICS:
                raise ConfigError(f"system '{name}': semantics '{sem}' not understood (valid: "
                                  f"{', '.join(CACHE_SEMANTICS)})")
            semantics = sem
        pc = prefix_caching
        if rest.endswith("+prefix"):
            pc, rest = True, rest[: -len("+prefix")]
        if rest:
            if not rest.startswith("-") or not rest[1:].isdigit():
                raise ConfigError(f"system '{name}' not understood (valid: {valid})")
            block_size = int(rest[1:])
        return PagedCacheSpec(block_size=block_size, prefix_caching=pc, semantics=semantics)
    s = s.removeprefix("contig-")
    # A policy name may itself hold a '-' ("pow2-output"): take the longest policy the name starts with.
    policy = next((p for p in sorted(CONTIG_POLICIES, key=len, reverse=True) if s == p or s.startswith(p + "-")), "")
    place = s[len(policy) + 1:] if policy else ""
    if not policy or (place and place not in CONTIG_PLACEMENTS):
        raise ConfigError(f"system '{name}' not understood (valid: {valid})")
    return ContiguousCacheSpec(policy=policy, placement=place or placement)


def parse_sampling(text: str) -> SamplingMix:
    """A sampling mode applied to every request ('greedy', 'n=K', 'beam=K', 'spec=K[@P]') or a mix
    (workloads.modes: a name such as 'mixed', or 'FRAC:beam:W,FRAC:parallel:N,FRAC:spec:K:P')."""
    t = str(text).strip().lower()
    kind, eq, val = t.partition("=")
    try:
        if t == "greedy":
            return SamplingMix()
        if eq and kind == "n" and int(val) >= 1:
            return SamplingMix(((1.0, SamplingMode(n=int(val))),))
        if eq and kind == "beam" and int(val) >= 1:
            return SamplingMix(((1.0, SamplingMode(beam_width=int(val))),))
        if eq and kind == "spec":
            k, _, p = val.partition("@")
            return SamplingMix(((1.0, SamplingMode(spec_k=int(k), spec_accept=float(p) if p else 0.7)),))
        if not eq:
            return parse_mix(t)
    except (ValueError, SpecError):
        pass
    raise ConfigError(f"sampling '{text}' not understood (valid: {SAMPLING_HELP})")


def sampling_columns(text: str | None) -> dict[str, int]:
    """`n` and `beam_width` of a uniform sampling mode (for sweep tables and the sharing plot); {} else."""
    if text is None:
        return {}
    mix = parse_sampling(text)
    if not mix.modes:
        return {"n": 1, "beam_width": 1}
    if len(mix.modes) == 1 and mix.modes[0][0] == 1.0:
        m = mix.modes[0][1]
        return {"n": m.n, "beam_width": m.beam_width}
    return {}


# --------------------------------------------------------------------------- helpers
def _section(data: dict[str, Any], cls: type, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    names = [f.name for f in fields(cls) if f.name not in skip]
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table of settings, got {data!r}")
    for k in data:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown field '{prefix}{k}'{hint} (valid: {', '.join(names)})")
    return dict(data)


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _bad(name: str, valid: str, value: object) -> ConfigError:
    return ConfigError(out_of_range(name, valid, value))


def replace_workload(exp: Experiment, **changes: Any) -> Experiment:
    """A copy of `exp` with workload fields changed (validated)."""
    return replace(exp, workload=replace(exp.workload, **changes))


def sweep_axes(path: str | Path) -> dict[str, list[Any]]:
    """The `[sweep.axes]` table of an experiment TOML file (name -> list of values); {} if absent."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    axes = (data.get("sweep") or {}).get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{p}: [sweep.axes] must be a table of NAME = [values]")
    out: dict[str, list[Any]] = {}
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{p}: sweep axis '{k}' = {v!r} (valid: a non-empty list of values)")
        out[k] = v
    return out
