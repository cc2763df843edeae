"""Named model and GPU presets, KV storage dtypes, and KV-pool sizing from a GPU memory budget.

A `ModelSpec` carries the architecture numbers the memory model and the latency model need; a `GPUSpec`
carries the vendor data-sheet figures (memory, HBM bandwidth, dense fp16 FLOP/s, PCIe, NVLink).
`kv_capacity_tokens` turns (model, GPU, utilization, KV dtype) into token slots for the KV pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.request import SpecError

GiB = 1 << 30

# Bytes per stored KV element. fp32 is accepted for kernels/tests; serving uses fp16/bf16/fp8/int8.
KV_DTYPES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8_e4m3": 1, "int8": 1}

# Scale granularities for the 1-byte dtypes (`"int8:per_head"`). Scales are stored as fp32 (as vLLM's
# k_scale / v_scale), separately for K and V:
#   per_tensor: one scale per layer for K and one for V -> no per-token cost (the default for fp8/int8);
#   per_kv_head: one static scale per layer per KV head -> no per-token cost either;
#   per_head:   one scale per token per KV head (a group of head_dim values) -> 4 bytes per head per token;
#   per_block:  one scale per block per KV head -> 4 / block_size bytes per head per token.
KV_SCALES: tuple[str, ...] = ("per_tensor", "per_kv_head", "per_head", "per_block")
SCALE_BYTES = 4


def parse_kv_dtype(kv_dtype: str) -> tuple[str, str | None]:
    """Split `"int8:per_block"` into ("int8", "per_block"); plain 1-byte names get "per_tensor".

    Raises SpecError naming the valid dtypes and scale granularities.
    """
    base, _, scale = str(kv_dtype).lower().partition(":")
    if base not in KV_DTYPES:
        raise SpecError(f"kv_dtype {kv_dtype!r}: unknown dtype (valid: {', '.join(KV_DTYPES)}, "
                        f"optionally ':<scale>' for fp8_e4m3/int8 with scale in {', '.join(KV_SCALES)})")
    if KV_DTYPES[base] > 1:
        if scale:
            raise SpecError(f"kv_dtype {kv_dtype!r}: a scale granularity applies only to fp8_e4m3/int8")
        return base, None
    scale = scale or "per_tensor"
    if scale not in KV_SCALES:
        raise SpecError(f"kv_dtype {kv_dtype!r}: unknown scale granularity {scale!r} "
                        f"(valid: {', '.join(KV_SCALES)})")
    return base, scale


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer, as far as KV memory and step latency depend on it.

    Invariants (checked by `check_invariants`): num_heads * head_dim == hidden_size, num_heads is a
    multiple of num_kv_heads (GQA/MQA), every size is positive, sliding_window is None or >= 1.
    `num_params` is the published parameter count; `estimate_params()` recomputes it from the
    architecture (weights of the matmuls and embeddings, without biases and norms) as a cross-check.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_params: int
    weight_dtype_bytes: int
    max_model_len: int
    sliding_window: int | None = None
    gated_mlp: bool = True  # SwiGLU (Llama, Mistral): 3 matrices; OPT's ReLU MLP: 2
    tie_word_embeddings: bool = False  # OPT ties the LM head to the input embedding

    def check_invariants(self) -> None:
        """Raise SpecError naming the model and field if the architecture numbers are inconsistent."""
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "num_params", "weight_dtype_bytes", "max_model_len"):
            if getattr(self, f) < 1:
                raise SpecError(f"model {self.name}: field '{f}' must be >= 1, got {getattr(self, f)}")
        if self.num_heads * self.head_dim != self.hidden_size:
            raise SpecError(f"model {self.name}: num_heads * head_dim != hidden_size")
        if self.num_heads % self.num_kv_heads:
            raise SpecError(f"model {self.name}: num_heads must be a multiple of num_kv_heads")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise SpecError(f"model {self.name}: sliding_window must be None or >= 1")

    def kv_bytes_per_token(self, kv_dtype: str = "fp16", *, block_size: int | None = None) -> float:
        """K and V bytes one token occupies over all layers: 2 * layers * kv_heads * head_dim * bytes(dtype).

        Plus the scale overhead of quantized dtypes (see KV_SCALES): `"int8:per_head"` adds
        2 * layers * kv_heads * 4 bytes; `"int8:per_block"` adds that divided by `block_size` (required).
        Fractional only for per_block scales.
        """
        base, scale = parse_kv_dtype(kv_dtype)
        heads = 2 * self.num_layers * self.num_kv_heads
        data = heads * self.head_dim * KV_DTYPES[base]
        if scale == "per_head":
            return float(data + heads * SCALE_BYTES)
        if scale == "per_block":
            if not block_size or block_size < 1:
                raise SpecError(f"kv_dtype {kv_dtype!r} needs block_size >= 1 (a per-block scale)")
            return data + heads * SCALE_BYTES / block_size
        return float(data)

    def weight_bytes(self) -> int:
        """Bytes of all weights (num_params * weight_dtype_bytes)."""
        return self.num_params * self.weight_dtype_bytes

    def layer_matmul_params(self) -> int:
        """Weights of one layer's matmuls: Q, K, V, O projections and the MLP (no biases, no norms)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * (self.num_heads * d) * 2 + h * (self.num_kv_heads * d) * 2
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return attn + mlp

    def estimate_params(self) -> int:
        """Parameter count from the architecture (embedding, layers, untied LM head), without biases/norms."""
        emb = self.vocab_size * self.hidden_size
        return emb * (1 if self.tie_word_embeddings else 2) + self.num_layers * self.layer_matmul_params()

    def activation_bytes(self, num_tokens: int, num_seqs: int = 256) -> int:
        """Peak activation memory of one forward pass over `num_tokens` tokens (the sizing reserve).

        Rule: each token holds about 4 hidden-size vectors (residual, norm output, attention output, QKV)
        and 2 intermediate-size vectors (MLP up/gate) at weight precision, plus fp32 logits for
        `num_seqs` sampled sequences. It is a reserve estimate, as vLLM's profiling run measures it.
        """
        per_token = (4 * self.hidden_size + 2 * self.intermediate_size) * self.weight_dtype_bytes
        return num_tokens * per_token + num_seqs * self.vocab_size * 4


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """One accelerator, vendor data-sheet figures.

    memory_bytes: HBM capacity (the data sheets' "GB" of HBM are binary: 40 GB = 40 GiB);
    hbm_bandwidth_Bps: peak HBM bandwidth, bytes/s (decimal);
    fp16_flops: dense (no 2:4 sparsity) fp16/bf16 tensor-core FLOP/s;
    pcie_bandwidth_Bps: effective host<->device bandwidth, one direction (used for swapping);
    nvlink_bandwidth_Bps: GPU<->GPU bandwidth, one direction (used for tensor-parallel all-reduce).
    """

    name: str
    memory_bytes: int
    hbm_bandwidth_Bps: float
    fp16_flops: float
    pcie_bandwidth_Bps: float
    nvlink_bandwidth_Bps: float = 0.0

    def check_invariants(self) -> None:
        """Raise SpecError naming the GPU and field if a figure is not positive."""
        for f in ("memory_bytes", "hbm_bandwidth_Bps", "fp16_flops", "pcie_bandwidth_Bps"):
            if not getattr(self, f) > 0:
                raise SpecError(f"gpu {self.name}: field '{f}' must be > 0, got {getattr(self, f)}")


def _model(name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
           params: int, max_len: int, **kw: object) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=hidden // heads, intermediate_size=inter, vocab_size=vocab, num_params=params,
                     weight_dtype_bytes=2, max_model_len=max_len, **kw)  # type: ignore[arg-type]


# Architectures from the models' published Hugging Face config.json files; num_params as published
# (counted from the checkpoints). All fp16/bf16 weights.
MODELS: dict[str, ModelSpec] = {m.name.lower(): m for m in (
    # facebook/opt-13b: ReLU MLP, tied LM head, learned positions (2048).
    _model("OPT-13B", 40, 5120, 40, 40, 20480, 50272, 12_853_473_280, 2048,
           gated_mlp=False, tie_word_embeddings=True),
    _model("Llama-2-7B", 32, 4096, 32, 32, 11008, 32000, 6_738_415_616, 4096),
    _model("Llama-2-13B", 40, 5120, 40, 40, 13824, 32000, 13_015_864_320, 4096),
    _model("Llama-2-70B", 80, 8192, 64, 8, 28672, 32000, 68_976_648_192, 4096),  # GQA, 8 KV heads
    _model("Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8_030_261_248, 8192),  # GQA, 8 KV heads
    # mistralai/Mistral-7B-v0.1: GQA, sliding-window attention over the last 4096 tokens.
    _model("Mistral-7B", 32, 4096, 32, 8, 14336, 32000, 7_241_732_096, 32768, sliding_window=4096),
)}

# Figures from the NVIDIA data sheets: "NVIDIA A100 Tensor Core GPU" data sheet (SXM4 40GB: 1,555 GB/s;
# SXM4 80GB: 2,039 GB/s; FP16 tensor 312 TFLOPS dense, 624 with sparsity; NVLink 600 GB/s; PCIe Gen4
# 64 GB/s both directions), "NVIDIA H100 Tensor Core GPU" data sheet (H100 SXM 80GB: 3.35 TB/s; FP16
# tensor 1,979 TFLOPS with sparsity = 989 dense; NVLink 900 GB/s; PCIe Gen5 128 GB/s both directions),
# "NVIDIA H200 Tensor Core GPU" data sheet (H200 SXM 141GB: 4.8 TB/s, same compute and links as H100 SXM).
# PCIe: effective one-direction copy bandwidth of pinned memory, ~25 GB/s (Gen4 x16) / ~50 GB/s (Gen5 x16).
# NVLink: half of the data sheets' bidirectional figure.
GPUS: dict[str, GPUSpec] = {g.name.lower(): g for g in (
    GPUSpec("A100-40GB", 40 * GiB, 1555e9, 312e12, 25e9, 300e9),
    GPUSpec("A100-80GB", 80 * GiB, 2039e9, 312e12, 25e9, 300e9),
    GPUSpec("H100-SXM", 80 * GiB, 3.35e12, 989e12, 50e9, 450e9),
    GPUSpec("H200", 141 * GiB, 4.8e12, 989e12, 50e9, 450e9),
)}


def _lookup(kind: str, table: dict, name: str) -> object:
    key = str(name).strip().lower()
    if key not in table:
        valid = ", ".join(v.name for v in table.values())
        raise SpecError(f"unknown {kind} {name!r} (valid: {valid})")
    return table[key]


def get_model(name: str | ModelSpec) -> ModelSpec:
    """The model preset named `name` (case-insensitive); a ModelSpec passes through.

    Raises SpecError (a ValueError) listing the valid names.
    """
    if isinstance(name, ModelSpec):
        return name
    return _lookup("model", MODELS, name)  # type: ignore[return-value]


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """The GPU preset named `name` (case-insensitive); a GPUSpec passes through.

    Raises SpecError (a ValueError) listing the valid names.
    """
    if isinstance(name, GPUSpec):
        return name
    return _lookup("gpu", GPUS, name)  # type: ignore[return-value]


def check_tensor_parallel(model: ModelSpec, tensor_parallel: int) -> None:
    """Raise SpecError unless tensor_parallel is an integer >= 1 dividing the model's KV heads.

    Sharding splits the KV heads evenly over the GPUs; replicated KV heads are not modelled.
    """
    if (not isinstance(tensor_parallel, int) or isinstance(tensor_parallel, bool) or tensor_parallel < 1
            or model.num_kv_heads % tensor_parallel):
        raise SpecError(f"tensor_parallel = {tensor_parallel!r} out of range (valid: an integer >= 1 dividing "
                        f"num_kv_heads = {model.num_kv_heads} of {model.name})")


def default_activation_bytes(model: ModelSpec) -> int:
    """The default activation reserve: one profiling forward pass of max(max_model_len, 2048) tokens
    (vLLM's default max_num_batched_tokens) with 256 sequences' logits (its default max_num_seqs)."""
    return model.activation_bytes(max(model.max_model_len, 2048), 256)


def kv_capacity_tokens(model: ModelSpec, gpu: GPUSpec, *, gpu_memory_utilization: float = 0.9,
                       kv_dtype: str = "fp16", activation_bytes: int | None = None,
                       block_size: int | None = None, tensor_parallel: int = 1) -> int:
    """KV-cache token slots left on `tensor_parallel` GPUs after weights and the activation reserve.

    Rule (per GPU, vLLM's sizing): memory_bytes * gpu_memory_utilization - weight_bytes / tp
    - activation reserve; the KV of one token is split evenly over the tp GPUs, so
    tokens = floor(tp * per_gpu_free / kv_bytes_per_token(kv_dtype)). The reserve defaults to
    `default_activation_bytes(model)`. OPT-13B on one A100-40GB: 36 GiB - 23.9 GiB weights
    - 0.3 GiB reserve = 11.8 GiB, about 15.4K slots of 800 KiB (the vLLM paper: ~12 GB, ~15.7K).

    Raises SpecError when an option is out of range or the weights do not fit (naming the numbers).
    """
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise SpecError(f"gpu_memory_utilization = {gpu_memory_utilization!r} out of range (valid: (0, 1])")
    check_tensor_parallel(model, tensor_parallel)
    act = default_activation_bytes(model) if activation_bytes is None else int(activation_bytes)
    if act < 0:
        raise SpecError(f"activation_bytes = {activation_bytes!r} out of range (valid: >= 0)")
    budget = gpu.memory_bytes * gpu_memory_utilization
    free = budget - model.weight_bytes() / tensor_parallel - act
    if free <= 0:
        raise SpecError(
            f"model {model.name} does not fit on {tensor_parallel} x {gpu.name}: per GPU "
            f"{budget / GiB:.1f} GiB usable ({gpu_memory_utilization:.0%}) < "
            f"{model.weight_bytes() / tensor_parallel / GiB:.1f} GiB weights + {act / GiB:.2f} GiB "
            f"activations (raise tensor_parallel or gpu_memory_utilization)")
    return int(tensor_parallel * free // model.kv_bytes_per_token(kv_dtype, block_size=block_size))
