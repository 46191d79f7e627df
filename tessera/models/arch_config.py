"""ArchConfig: the shape of a decoder-only transformer, whatever file it came from.

Objects: ArchConfig; Architecture (one registered architecture: its name, its translation
of a Hugging Face `config.json`, and the model class that serves it, named as
"module:Class" so that nothing here imports torch); `rope_settings` and `base_fields`,
the parts of a translation every family shares. Families declare their architectures
beside their model (models/llama_config.py for models/llama.py); models/registry.py
collects them. Both the legacy (`rope_theta` + `rope_scaling`) and the transformers-5
(`rope_parameters`) ways of writing RoPE settings are understood.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass
class ArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    sliding_window: int | None = None  # Mistral: a query sees keys with q_pos - k_pos < window
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str | None = None  # the checkpoint's own dtype, e.g. "bfloat16"
    # Mixture of experts (Mixtral, Qwen2-MoE); num_experts == 0: a dense model
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's always-on expert (0: none)
    norm_topk_prob: bool = True  # renormalize the top-k routing weights
    moe_layers: tuple[int, ...] = ()  # layers whose MLP is the MoE block
    # MobileLLM-style block repetition: (i, j) pairs, layer i runs layer j's weights (j < i,
    # j not itself shared) with its own KV cache; config.json's "layer_share": {"i": j}
    layer_share: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        self.eos_token_ids = tuple(self.eos_token_ids)  # lists when read back from JSON
        self.moe_layers = tuple(self.moe_layers)
        self.layer_share = tuple(sorted((int(i), int(j)) for i, j in self.layer_share))
        shared = dict(self.layer_share)
        for i, j in self.layer_share:
            if not 0 <= j < i < self.num_layers or j in shared:
                raise ValueError(f"layer_share {i} -> {j}: a layer may run the weights of an "
                                 f"earlier layer of its own (0 <= j < i < {self.num_layers}, "
                                 "j not shared itself).")
            if (i in self.moe_layers) != (j in self.moe_layers):
                raise ValueError(f"layer_share {i} -> {j}: one is a MoE layer, the other not.")
        if len(shared) != len(self.layer_share):
            raise ValueError("layer_share names a layer twice.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})."
            )
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ("default", "linear", "llama3"):
            raise ValueError(
                f"RoPE scaling {rope_type!r} is not supported (supported: default, linear, llama3)."
            )

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per token over all layers, at 1 byte per element."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def num_parameters(self, active_only: bool = False) -> int:
        """All parameters; with active_only, those one token reads (its top-k experts)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = (h + self.attention_bias) * (q + 2 * kv) + q * h + 2 * h  # + 2 norms
        experts = self.num_experts_per_tok if active_only else self.num_experts
        moe_mlp = h * self.num_experts + experts * 3 * h * self.moe_intermediate_size
        if self.shared_expert_intermediate_size:
            moe_mlp += 3 * h * self.shared_expert_intermediate_size + h
        n_moe = len(self.moe_layers)
        mlps = n_moe * moe_mlp + (self.num_layers - n_moe) * 3 * h * self.intermediate_size
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * attention + mlps + embed + h


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str  # as config.json's "architectures" names it
    from_hf: Callable[[dict[str, Any]], ArchConfig]  # config.json contents -> ArchConfig
    model_class: str  # "module:Class", imported only where the model is built


def rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = cfg.get("rope_parameters")
    if params:  # transformers >= 5
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(cfg.get("rope_theta", 10000.0))
        scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else None
    if scaling is not None:
        scaling.setdefault("rope_type", scaling.pop("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None
    return theta, scaling


def base_fields(arch: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The ArchConfig fields every decoder-only family writes the same way in config.json
    (KeyError for a missing required one: the registry names it)."""
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    theta, scaling = rope_settings(cfg)
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return dict(
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos_ids),
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        layer_share=tuple((int(i), int(j)) for i, j in (cfg.get("layer_share") or {}).items()),
    )
