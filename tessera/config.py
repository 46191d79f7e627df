"""EngineConfig: one composed, validated configuration for an engine; it travels to every
process as JSON.

Objects: ModelConfig (which checkpoint, dtype, device), CacheConfig (paged KV cache),
SchedulerConfig (token budget per step, sequences per step), ParallelConfig (TP/PP/EP,
which executor), OffloadConfig (decoder layers kept in CPU memory or a file),
KernelConfig (which kernels run: the switches of the fast paths), QuantConfig (quantized
weights: the method, the layers kept 16-bit, a policy file),
SpeculativeConfig (speculative decoding: a draft model or n-gram drafts, how many tokens),
ModelInfo (the checkpoint's metadata, resolved once by the front end:
frontend/model_info.py; the draft model's too) and EngineConfig, which holds them all.
`EngineConfig.from_kwargs(**kw)` routes flat keyword arguments (the ones `LLM(...)` and the
CLI take) to the right part; each part validates itself in `__post_init__` and raises
ValueError naming the field. `to_json()` / `from_json()` carry the whole config, the
resolved ModelInfo included, to the engine process and the workers (never pickle).
Every field's help text (`help=`) is the CLI's (cli_args.py). No torch here: device and
dtype names are turned into torch objects by the worker (worker/device.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from tessera.models.arch_config import ArchConfig

DTYPE_NAMES = ("auto", "float32", "fp32", "float", "bfloat16", "bf16", "float16", "fp16", "half")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")
LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")
STRUCTURED_BACKENDS = ("auto", "llguidance")
KERNEL_BACKENDS = ("auto", "triton", "reference")
KERNEL_MODES = ("auto", "off", "always")
EXECUTORS = ("auto", "uni", "mp", "ray")
RAY_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
QUANTIZATIONS = ("none", "int8", "fp8", "int4")
SPEC_METHODS = ("draft", "ngram")
MAX_SPEC_TOKENS = 16


def _field(default: Any, help: str, choices: Optional[tuple] = None) -> Any:
    """A config field with its CLI help and, where the set is fixed, its choices."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class ModelConfig:
    model: Optional[str] = _field(
        None, "HF folder, .gguf file, or a named shape with --load-format dummy")
    tokenizer: Optional[str] = _field(None, "tokenizer folder or .gguf (default: the model's)")
    chat_template: Optional[str] = _field(
        None, "Jinja chat template, or a file holding one (default: the tokenizer's)")
    generation_config: str = _field(
        "auto", "default sampling parameters: auto (the checkpoint's generation_config.json), "
                "none (Tessera's; the checkpoint's EOS ids still apply), or a folder or file "
                "with a generation_config.json (default: auto)")
    dtype: str = _field("auto", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, "
                                "float16", DTYPE_NAMES)
    device: str = _field("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    load_format: str = _field("auto", "auto, safetensors, gguf, dummy (random weights)",
                              LOAD_FORMATS)
    max_model_len: Optional[int] = _field(None, "context length (default: the model's)")
    seed: int = _field(0, "seeds dummy weights and unseeded sampling")
    skip_tokenizer_init: bool = _field(False, "no tokenizer: token ids in and out")
    allow_control_tokens_in_messages: bool = _field(
        False, "a chat message's text may spell control tokens (<|im_start|> ...) that become "
               "real ones, so a client can forge turns (default: they stay text)")
    structured_outputs_backend: str = _field(
        "auto", "the token masks' grammar library: auto (xgrammar for the JSON schemas whose "
                "masks it makes soundly, llguidance for the rest) or llguidance",
        STRUCTURED_BACKENDS)
    enforce_eager: bool = _field(False, "no CUDA graphs for decode steps")
    cpu_threads: Optional[int] = _field(
        None, "intra-op threads of a CPU engine (default: the physical cores given to the "
              "process, shared among its ranks)")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(
                f"dtype {self.dtype!r} is not supported; choose auto, float32, bfloat16 or float16."
            )
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format {self.load_format!r} is not one of {LOAD_FORMATS}.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r} is not supported; choose auto, cpu or cuda.")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}.")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}.")
        if self.structured_outputs_backend not in STRUCTURED_BACKENDS:
            raise ValueError(f"structured_outputs_backend {self.structured_outputs_backend!r} "
                             f"is not one of {STRUCTURED_BACKENDS}.")


@dataclasses.dataclass
class CacheConfig:
    block_size: int = _field(16, "tokens per KV block (a power of two)")
    gpu_memory_utilization: float = _field(0.90, "share of GPU memory Tessera may use in all")
    cpu_kv_cache_gb: float = _field(1.0, "KV cache size on CPU, GB")
    num_blocks: Optional[int] = _field(None, "overrides the computed number of KV blocks")
    enable_prefix_caching: bool = _field(True, "reuse KV blocks of identical prompt prefixes")
    kv_cache_dtype: str = _field("auto", "auto (the model's dtype) or fp8 (float8 e4m3: half "
                                         "of bf16)", KV_CACHE_DTYPES)

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}.")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}."
            )
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}.")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype {self.kv_cache_dtype!r} is not supported; choose "
                             f"one of {', '.join(KV_CACHE_DTYPES)}.")


# defaults of the scheduler's batch limits: (plain, under weight offload): an offloaded step
# moves its layers whatever the batch, so under offload larger batches come nearly free
BATCH_DEFAULTS = {"max_num_batched_tokens": (2048, 16384), "max_num_seqs": (256, 512)}


@dataclasses.dataclass
class SchedulerConfig:
    max_num_batched_tokens: Optional[int] = _field(
        None, "token budget of one step: prefill chunks + decodes (default: 2048; 16384 with "
              "weight offload)")
    max_num_seqs: Optional[int] = _field(
        None, "requests in one step (default: 256; 512 with weight offload)")
    max_waiting: int = _field(4096, "bounded queue: more waiting requests are refused (503)")
    # schedule step N+1 while step N runs on the device (its sampled tokens stay there
    # and feed N+1): the CPU side of a step leaves the GPU's critical path. Off with
    # pipeline parallelism, which keeps disjoint micro-batches in flight instead.
    async_scheduling: bool = _field(True, "schedule the next step while one runs")
    price_per_hour: float = _field(
        0.0, "dollars per device-hour (an engine of TP x PP devices costs that many): each "
             "response's usage carries its request's share (cost_usd), /metrics the totals")

    def __post_init__(self) -> None:
        self.defaulted = {name for name in BATCH_DEFAULTS if getattr(self, name) is None}
        for name in self.defaulted:
            setattr(self, name, BATCH_DEFAULTS[name][0])
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_waiting"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.price_per_hour >= 0:
            raise ValueError(f"price_per_hour must be >= 0, got {self.price_per_hour}.")


@dataclasses.dataclass
class ParallelConfig:
    tensor_parallel_size: int = _field(1, "Megatron-style: heads and MLP columns split over "
                                          "ranks")
    pipeline_parallel_size: int = _field(1, "layers split into stages")
    data_parallel_size: int = _field(1, "replicas of the whole model (each TP x PP devices, "
                                        "an engine process of its own) behind one endpoint; "
                                        "a router balances them (tessera serve)")
    collective_timeout_s: float = _field(60.0, "a collective or a step slower than this is an "
                                               "error")
    enable_expert_parallel: bool = _field(False, "MoE: whole experts per TP rank, not expert "
                                                 "slices")
    pp_layer_partition: str = _field("", "layers per pipeline stage, e.g. 15,17 (default: "
                                         "balanced)")
    distributed_executor_backend: str = _field(
        "auto", "auto (one process for one rank, else mp), uni (this process), mp (a worker "
                "process per rank), ray (a Ray actor per rank, across the cluster's nodes)",
        EXECUTORS)
    ray_address: Optional[str] = _field(
        None, "the Ray cluster to join (default: RAY_ADDRESS, else the one `ray start` began "
              "on this host, else a new local one)")
    ray_placement_strategy: str = _field(
        "PACK", "how Ray places the ranks' bundles on nodes: PACK (few nodes), SPREAD, "
                "STRICT_PACK (one node), STRICT_SPREAD (a node each)", RAY_STRATEGIES)
    distributed_init_host: str = _field("127.0.0.1", "address the ranks' process group meets "
                                                     "at (rank 0's host)")

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.pp_layer_partition:
            parts = self.pp_layer_partition.split(",")
            if len(parts) != self.pipeline_parallel_size or not all(
                    p.strip().isdigit() and int(p) > 0 for p in parts):
                raise ValueError(f"pp_layer_partition {self.pp_layer_partition!r} must list "
                                 f"{self.pipeline_parallel_size} positive layer counts.")
        if self.distributed_executor_backend not in EXECUTORS:
            raise ValueError(f"distributed_executor_backend {self.distributed_executor_backend!r}"
                             f" is not one of {EXECUTORS}.")
        if self.distributed_executor_backend == "uni" and self.world_size > 1:
            raise ValueError("distributed_executor_backend 'uni' runs one rank; "
                             f"{self.world_size} ranks need 'mp'.")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclasses.dataclass
class OffloadConfig:
    """Weights and KV beyond device memory (models/loader/offload.py,
    layers/weight_stream.py; engine/kv_cache/host_tier.py, worker/kv_host_tier.py)."""
    cpu_offload_gb: float = _field(
        0.0, "GiB of device memory to free per GPU by keeping whole decoder layers in pinned "
             "CPU memory, copied in layer by layer each step on a side stream")
    offload_dir: Optional[str] = _field(
        None, "keep the offloaded layers (--cpu-offload-gb) in a file in this directory, "
              "read ahead into pinned buffers, instead of in CPU memory")
    kv_offload_gb: float = _field(
        0.0, "GiB of pinned CPU memory (per GPU) for a second level of the prefix cache: KV "
             "blocks evicted from the device are copied there and back on a hit instead of "
             "being recomputed")

    def __post_init__(self) -> None:
        for name in ("cpu_offload_gb", "kv_offload_gb"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.offload_dir is None:
            return
        if not self.cpu_offload_gb:
            raise ValueError("offload_dir needs cpu_offload_gb > 0: it holds the layers "
                             "cpu_offload_gb offloads.")
        where = self.offload_dir
        while where and not os.path.exists(where):
            where = os.path.dirname(os.path.abspath(where).rstrip("/"))
        if os.path.exists(self.offload_dir) and not os.path.isdir(self.offload_dir):
            raise ValueError(f"offload_dir {self.offload_dir!r} is not a directory.")
        if not os.access(where or ".", os.W_OK | os.X_OK):
            raise ValueError(f"offload_dir {self.offload_dir!r} is not writable "
                             f"({where!r} is not).")


@dataclasses.dataclass
class KernelConfig:
    """Which kernels a worker runs; fixed when its model is built (layers/ops.py)."""
    kernel_backend: str = _field(
        "auto", "auto (Triton kernels on CUDA, the PyTorch references elsewhere), triton "
                "(everywhere; on CPU only under TRITON_INTERPRET=1), reference", KERNEL_BACKENDS)
    skinny_gemm: str = _field("auto", "products of <= 16 rows through the skinny GEMM: auto "
                                      "(Hopper+, bf16/fp16), off, always", KERNEL_MODES)
    qkv_rope: bool = _field(True, "decode steps: rotary + KV-cache write in the q/k/v "
                                  "projection's epilogue")
    norm_fusion: bool = _field(True, "decode steps: RMSNorms inside the projections around "
                                     "them")
    fused_moe: str = _field("auto", "MoE steps of <= 512 tokens through the grouped Triton "
                                    "GEMMs: auto (CUDA), off, always", KERNEL_MODES)
    pdl: bool = _field(True, "programmatic dependent launch between decode kernels (Hopper+)")

    def __post_init__(self) -> None:
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend {self.kernel_backend!r} is not one of "
                             f"{KERNEL_BACKENDS}.")
        for name in ("skinny_gemm", "fused_moe"):
            if getattr(self, name) not in KERNEL_MODES:
                raise ValueError(f"{name} mode must be one of {KERNEL_MODES}, got "
                                 f"{getattr(self, name)!r}.")


@dataclasses.dataclass
class QuantConfig:
    """How linear layers store their weights (quant_policy.py resolves it per layer)."""
    quantization: Optional[str] = _field(
        None, "quantize a 16-bit checkpoint's linear layers at load: none, int8 (weight-only, "
              "per channel), fp8 (e4m3 per channel; fp8 activations on GPUs of compute "
              "capability 8.9+), int4 (weight-only, groups along K) (default: the policy "
              "file's, else none)", QUANTIZATIONS)
    keep_full_precision: str = _field(
        "", "comma-separated glob patterns of layer names kept 16-bit, e.g. "
            "'model.layers.0.*,*.down_proj' (embeddings and MoE routers always are; the LM "
            "head is unless --lm-head-quantization)")
    lm_head_quantization: Optional[str] = _field(
        None, "the LM head's method: none (the default), int8, fp8 or int4 (its own copy of a "
              "tied embedding; its accuracy cost: benchmarks/quant_accuracy.py's '+head' methods)",
        QUANTIZATIONS)
    quantization_policy: Optional[str] = _field(
        None, "a policy file (YAML/JSON, as `tessera quant-sensitivity` writes): the method "
              "per layer pattern")
    quantization_group_size: Optional[int] = _field(
        None, "int4: weights per scale along the input dimension, 32, 64 or 128 (default: 32 "
              "for a GGUF checkpoint, whose 4-bit blocks are 32 wide, else 128)")
    quantization_calibration: Optional[str] = _field(
        None, "a text file: the int4 layers are quantized by GPTQ (quant/gptq.py) against the "
              "inputs this text gives them, the model loaded 16-bit first (slower start-up; "
              "measured against rounding each weight alone: benchmarks/RESULTS.md)")
    calibration_tokens: int = _field(
        4096, "tokens of the calibration text to use, in windows of up to 512 (default: 4096)")

    def __post_init__(self) -> None:
        if self.quantization_calibration is not None and not os.path.isfile(
                self.quantization_calibration):
            raise ValueError(f"quantization_calibration {self.quantization_calibration!r}: no "
                             f"such file.")
        if self.calibration_tokens < 2:
            raise ValueError(f"calibration_tokens must be at least 2, got "
                             f"{self.calibration_tokens}.")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization {self.quantization!r} is not supported; choose one "
                             f"of {', '.join(QUANTIZATIONS)}.")
        if self.lm_head_quantization not in (None,) + QUANTIZATIONS:
            raise ValueError(f"lm_head_quantization {self.lm_head_quantization!r} is not "
                             f"supported; choose one of {', '.join(QUANTIZATIONS)}.")
        if self.quantization_group_size not in (None, 32, 64, 128):
            raise ValueError(f"quantization_group_size must be 32, 64 or 128, got "
                             f"{self.quantization_group_size}.")


@dataclasses.dataclass
class SpeculativeConfig:
    """Speculative decoding (spec_decode/): drafts proposed each step, verified by the
    target in one pass; off unless a method or a draft model is given."""
    speculative_model: Optional[str] = _field(
        None, "draft model (HF folder or .gguf with the target's tokenizer): it proposes "
              "tokens that the model verifies in one pass")
    speculative_method: Optional[str] = _field(
        None, "draft (a --speculative-model; the default when one is given) or ngram "
              "(prompt lookup: drafts copied from earlier text of the same request)",
        SPEC_METHODS)
    num_speculative_tokens: int = _field(4, "drafts per step, at most (1..16)")
    speculative_quantization: Optional[str] = _field(
        None, "quantize the draft model's linear layers at load (as --quantization does "
              "the model's): a draft step reads fewer bytes", QUANTIZATIONS)
    ngram_min: int = _field(1, "ngram: shortest suffix matched")
    ngram_max: int = _field(4, "ngram: longest suffix matched (tried first)")
    speculative_max_batch: int = _field(
        32, "no drafts in a step of more requests than this: at large batch a step is "
            "compute-bound and verifying drafts costs more than it saves")
    speculative_adaptive: bool = _field(
        True, "drafts per request from its running acceptance rate")

    def __post_init__(self) -> None:
        if self.speculative_method is not None and self.speculative_method not in SPEC_METHODS:
            raise ValueError(f"speculative_method {self.speculative_method!r} is not one of "
                             f"{', '.join(SPEC_METHODS)}.")
        if self.speculative_method == "ngram" and self.speculative_model:
            raise ValueError("speculative_method 'ngram' drafts without a model; drop "
                             f"speculative_model {self.speculative_model!r}, or use method "
                             "'draft'.")
        if (self.speculative_quantization is not None
                and self.speculative_quantization not in QUANTIZATIONS):
            raise ValueError(f"speculative_quantization {self.speculative_quantization!r} is "
                             f"not one of {', '.join(QUANTIZATIONS)}.")
        if self.speculative_quantization and not self.speculative_model:
            raise ValueError("speculative_quantization applies to a speculative_model.")
        if self.speculative_method == "draft" and not self.speculative_model:
            raise ValueError("speculative_method 'draft' needs a speculative_model.")
        if not 1 <= self.num_speculative_tokens <= MAX_SPEC_TOKENS:
            raise ValueError(f"num_speculative_tokens must be in 1..{MAX_SPEC_TOKENS}, got "
                             f"{self.num_speculative_tokens}.")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) and ngram_max ({self.ngram_max}) "
                             "must satisfy 1 <= ngram_min <= ngram_max.")
        if self.speculative_max_batch < 1:
            raise ValueError(f"speculative_max_batch must be >= 1, got "
                             f"{self.speculative_max_batch}.")

    @property
    def method(self) -> Optional[str]:
        """"draft", "ngram", or None (no speculation)."""
        if self.speculative_method:
            return self.speculative_method
        return "draft" if self.speculative_model else None


@dataclasses.dataclass
class ModelInfo:
    """The checkpoint's metadata, resolved once (frontend/model_info.py) and shipped with
    the config: no other process reads the checkpoint's config again."""
    kind: str  # "hf" | "gguf" | "dummy"
    path: str  # folder, file, or shape name
    arch: ArchConfig  # eos_token_ids: the model's, its generation config's and tokenizer's
    max_model_len: int  # the one context length: asked for, or the model's
    generation_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the checkpoint's own quantization (models/checkpoint_quant.py): "" | gguf | fp8 | gptq,
    # and each quantized linear layer's format spec ("int4/32", "fp8", ...)
    quant_method: str = ""
    quant_layers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        return cls(**{**d, "arch": ArchConfig(**d["arch"])})


PARTS = (("model", ModelConfig), ("cache", CacheConfig), ("scheduler", SchedulerConfig),
         ("parallel", ParallelConfig), ("offload", OffloadConfig), ("kernel", KernelConfig),
         ("quant", QuantConfig), ("speculative", SpeculativeConfig))


@dataclasses.dataclass
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    kernel: KernelConfig = dataclasses.field(default_factory=KernelConfig)
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    speculative: SpeculativeConfig = dataclasses.field(default_factory=SpeculativeConfig)
    offload: OffloadConfig = dataclasses.field(default_factory=OffloadConfig)
    model_info: Optional[ModelInfo] = None  # filled by the front end, before any process starts
    draft_info: Optional[ModelInfo] = None  # the draft model's, with speculative_model

    def __post_init__(self) -> None:
        if self.offload.kv_offload_gb:
            if not self.cache.enable_prefix_caching:
                raise ValueError("kv_offload_gb needs enable_prefix_caching: the host tier "
                                 "finds blocks by their prefix hash.")
            if self.speculative.method == "draft":
                raise ValueError("kv_offload_gb does not work with a draft model yet: the "
                                 "draft's KV cache is not copied to the host tier.")
        if self.offload.cpu_offload_gb:  # limits left to their defaults favour large batches
            for name in self.scheduler.defaulted:
                setattr(self.scheduler, name, BATCH_DEFAULTS[name][1])
            self.scheduler.defaulted = set()

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineConfig":
        """speculative_config={"model": ..., "method": ..., "num_speculative_tokens": ...}
        (vLLM's shape) is taken as the speculative_* options."""
        kwargs.update(_speculative_kwargs(kwargs.pop("speculative_config", None)))
        parts = {}
        for name, part_cls in PARTS:
            fields = {f.name for f in dataclasses.fields(part_cls)}
            parts[name] = part_cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
        if kwargs:
            raise TypeError(f"Unknown engine option(s): {', '.join(sorted(kwargs))}.")
        return cls(**parts)

    @property
    def info(self) -> ModelInfo:
        """The resolved metadata (an error if the front end has not resolved it yet)."""
        if self.model_info is None:
            raise RuntimeError("the model's metadata is not resolved yet "
                               "(frontend.model_info.resolve_config)")
        return self.model_info

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        d = json.loads(text)
        parts = {name: part_cls(**d[name]) for name, part_cls in PARTS}
        info, draft = d.get("model_info"), d.get("draft_info")
        return cls(**parts, model_info=ModelInfo.from_dict(info) if info else None,
                   draft_info=ModelInfo.from_dict(draft) if draft else None)


def _speculative_kwargs(spec: Optional[dict[str, Any]]) -> dict[str, Any]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise TypeError("speculative_config must be a dict, e.g. {'method': 'ngram', "
                        "'num_speculative_tokens': 4}.")
    short = {"model": "speculative_model", "method": "speculative_method"}
    names = {f.name for f in dataclasses.fields(SpeculativeConfig)} - set(short.values())
    out = {}
    for key, value in spec.items():
        name = short.get(key, key)
        if name not in names and key not in short:
            raise TypeError(f"unknown speculative_config key {key!r}; known: model, method, "
                            f"{', '.join(sorted(names))}.")
        out[name] = value
    return out
