"""The Llama family (Llama 2/3, Mistral, Qwen2): pure PyTorch built from `layers/`.

Objects: LlamaAttention, LlamaMLP, SparseMoeBlock, LlamaDecoderLayer, LlamaModel,
LlamaForCausalLM.
Flow: input_ids [T] + positions [T] (ragged, all sequences packed) -> embedding ->
layers (RMSNorm with fused residual add, attention over the paged KV cache, gated MLP or
MoE block; on decode steps of a few rows of a dense model the norms run inside the
projections around them: `LlamaDecoderLayer.forward_fused_norms`) -> final norm ->
hidden [T, hidden]; `compute_logits` runs the LM head only on the rows that sample.
Under pipeline parallelism a rank builds only its stage's part (`LlamaModel.run_layers`
runs its layers). `load_weights` maps Hugging Face names onto the stacked q/k/v and
gate/up parameters through each parameter's weight_loader, skipping other stages' tensors.
Qwen2 differs only by q/k/v biases; Mistral only by its sliding window.
Weight sharing: with `layer_share` (i -> j, MobileLLM's block repetition) layer i is layer
j's module under a second index, with its own KV cache. Weight offload: decoder layers the
context places in CPU memory (`LayerContext.home`) are copied in by `weight_stream`
(layers/weight_stream.py), which `run_layers` tells when each layer starts and ends.
The model never calls a kernel nor reads a layer's weight: the fused decode paths are the
linear layers' epilogues (layers/linear.py), the rest runs through the ops the layers were
built with (layers/ops.py). `kv_cache_specs()` gives each local layer's KV-cache shape.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from tessera.layers.activation import SiluAndMul
from tessera.layers.attention import Attention, AttentionMetadata
from tessera.layers.context import current
from tessera.layers.embedding import LMHead, VocabEmbedding
from tessera.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear, ReplicatedLinear,
                                   RowParallelLinear)
from tessera.layers.moe import FusedMoE
from tessera.layers.norm import RMSNorm
from tessera.layers.rotary import RotaryEmbedding
from tessera.distributed.parallel_state import layer_range, pp_stage
from tessera.models.arch_config import ArchConfig
from tessera.models.interface import KVCacheSpec
from tessera.models.weight_utils import dense, shape_of

# A checkpoint's expert tensor: Mixtral's experts.E.w1/w3/w2, Qwen2-MoE's gate/up/down_proj
_EXPERT = re.compile(r"\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
_EXPERT_KIND = {"w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up", "w2": "down",
                "down_proj": "down"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.")
# (our parameter, checkpoint name part, shard id)
_STACKED = (("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
            ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1))


def default_weight_loader(param: nn.Parameter, loaded, shard_id=None) -> None:
    if tuple(param.shape) != shape_of(loaded):
        raise ValueError(f"checkpoint shape {shape_of(loaded)} does not fit parameter shape "
                         f"{tuple(param.shape)}")
    param.data.copy_(dense(loaded, param.dtype))


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ArchConfig, rotary_emb: RotaryEmbedding, prefix: str):
        super().__init__()
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads,
                                          cfg.num_kv_heads, bias=cfg.attention_bias,
                                          prefix=f"{prefix}.qkv_proj")
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = cfg.head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size,
                                        prefix=f"{prefix}.o_proj")
        self.attn = Attention(self.num_heads, cfg.head_dim, self.num_kv_heads, rotary_emb,
                              cfg.sliding_window)  # one cos/sin table shared by all layers

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata):
        return self.o_proj(self.attend(positions, hidden, kv_cache, meta))

    def attend(self, positions, hidden, kv_cache, meta: AttentionMetadata, pending=None,
               eps: float = 0.0):
        """hidden [T, H] -> attention output [T, Hq * D], before o_proj. pending, eps:
        hidden is the scaled input of the RMSNorm the layer before left pending."""
        if pending is not None or (meta.decode_only and self.qkv_proj.fuses_rope(hidden)):
            # a few decode tokens: rotary and the cache write in the projection's epilogue
            q = self.qkv_proj.forward_qkv_rope(hidden, positions, self.attn.rotary_emb.cos_sin,
                                               kv_cache, meta.slot_mapping, pending,
                                               eps)  # [T, Hq, D]
            return self.attn.attend(q, kv_cache, meta)
        qkv = self.qkv_proj(hidden)  # [T, (Hq + 2 Hkv) * D]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        return self.attn(positions, q, k, v, kv_cache, meta)


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, prefix: str):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [intermediate] * 2,
                                                       prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(intermediate, hidden, prefix=f"{prefix}.down_proj")
        self.act = SiluAndMul()

    def forward(self, x):
        return self.down_proj(self.gate_up_proj.forward_gated(x, self.act))  # silu(g) * u


class SparseMoeBlock(nn.Module):
    """Router + experts (Mixtral), plus a gated shared expert (Qwen2-MoE)."""

    def __init__(self, cfg: ArchConfig, prefix: str):
        super().__init__()
        self.gate = ReplicatedLinear(cfg.hidden_size, cfg.num_experts, bias=False,
                                     prefix=f"{prefix}.gate")
        self.experts = FusedMoE(cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size,
                                cfg.moe_intermediate_size, cfg.norm_topk_prob,
                                f"{prefix}.experts")
        self.shared_expert = self.shared_expert_gate = None
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = LlamaMLP(cfg.hidden_size, cfg.shared_expert_intermediate_size,
                                          f"{prefix}.shared_expert")
            self.shared_expert_gate = ReplicatedLinear(cfg.hidden_size, 1, bias=False,
                                                       prefix=f"{prefix}.shared_expert_gate")

    def forward(self, x):
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, rotary_emb: RotaryEmbedding, index: int):
        super().__init__()
        prefix = f"model.layers.{index}"
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, rotary_emb, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = (SparseMoeBlock(cfg, f"{prefix}.mlp") if index in cfg.moe_layers
                    else LlamaMLP(cfg.hidden_size, cfg.intermediate_size, f"{prefix}.mlp"))

    def _input_norm(self, hidden, residual):
        """(normed input, residual): the first layer's input is its own residual."""
        if residual is None:
            return self.input_layernorm(hidden), hidden
        return self.input_layernorm(hidden, residual)

    def forward(self, positions, hidden, residual, kv_cache, meta):
        hidden, residual = self._input_norm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual

    def forward_fused_norms(self, positions, hidden, residual, kv_cache, meta,
                            next_norm: RMSNorm | None):
        """A decode step of a few rows with no norm kernel (the linear layers' add-norm
        epilogue): o_proj adds to the residual and leaves the post-attention norm pending
        (a PendingNorm: scaled, parts, residual) for gate/up; with next_norm (the next
        layer's input norm) down_proj does the same for the next q/k/v, and the layer
        returns (PendingNorm, None); without, (MLP output, residual).
        hidden: the PendingNorm the layer before left, or [T, H] (the first layer here)."""
        if isinstance(hidden, torch.Tensor):
            (x, residual), pending = self._input_norm(hidden, residual), None
        else:
            x, pending, residual = hidden.scaled, hidden, hidden.residual
        attn, post_norm = self.self_attn, self.post_attention_layernorm
        out = attn.attend(positions, x, kv_cache, meta, pending,
                          self.input_layernorm.eps)  # [T, Hq * D]
        post = attn.o_proj.forward_add_norm(out, residual, post_norm)
        h = self.mlp.gate_up_proj.forward_gated(post.scaled, self.mlp.act, post,
                                                post_norm.eps)  # [T, I]
        down = self.mlp.down_proj
        if next_norm is None:
            return down(h), post.residual
        return down.forward_add_norm(h, post.residual, next_norm), None


class LlamaModel(nn.Module):
    """One pipeline stage's share: the embedding on the first stage, layers [start, end),
    the final norm on the last (all of it with one stage)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        stage = pp_stage()
        self.first, self.last = stage.first, stage.last
        self.start, self.end = layer_range(cfg.num_layers)
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size) if self.first else None
        rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                 cfg.rope_scaling)
        self.layers = nn.ModuleDict()
        shares = dict(cfg.layer_share)
        for i in range(self.start, self.end):
            j = shares.get(i)
            if j is not None and j >= self.start:  # the same weights, its own KV cache
                self.layers[str(i)] = self.layers[str(j)]
                continue
            with current().home(i):  # offloaded layers are built in CPU memory
                self.layers[str(i)] = LlamaDecoderLayer(cfg, rotary, i)
        self.weight_stream = None  # offloaded layers' copies (layers/weight_stream.py)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if self.last else None
        self.dense = bool(self.layers) and all(isinstance(layer.mlp, LlamaMLP)
                                               for layer in self.layers.values())

    def forward(self, input_ids, positions, kv_caches, meta, intermediate=None):
        """First stage: token ids in; later stages: (hidden, residual) of the previous one.
        Last stage: normed hidden [T, H] out; others: (hidden, residual) for the next."""
        if self.first:
            hidden, residual = self.embed_tokens(input_ids), None
        else:
            hidden, residual = intermediate
        hidden, residual = self.run_layers(list(self.layers.values()), positions, hidden,
                                           residual, kv_caches, meta)
        if not self.last:
            return hidden, residual
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def run_layers(self, layers: list, positions, hidden, residual, kv_caches, meta):
        """(hidden, residual) through these layers (each with its KV cache) -> (hidden,
        residual) after the last: what a pipeline stage does between its ends."""
        fused = self._fuses_norms(hidden, meta)
        stream = self.weight_stream  # offloaded layers wait for their weights' copy
        if stream is not None:
            stream.begin()
        for i, (layer, kv_cache) in enumerate(zip(layers, kv_caches)):
            if stream is not None:
                stream.before(i)
            if fused:
                following = layers[i + 1].input_layernorm if i + 1 < len(layers) else None
                hidden, residual = layer.forward_fused_norms(positions, hidden, residual,
                                                             kv_cache, meta, following)
            else:
                hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
            if stream is not None:
                stream.after(i)
        if stream is not None:
            stream.end()
        return hidden, residual

    def _fuses_norms(self, hidden: torch.Tensor, meta) -> bool:
        """A decode step of few rows whose layers are all dense, where the projections
        can hold the norms (QKVParallelLinear.fuses_norms)."""
        return (self.dense and meta.decode_only
                and self.layers[str(self.start)].self_attn.qkv_proj.fuses_norms(hidden))


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = LMHead(cfg.vocab_size, cfg.hidden_size) if self.model.last else None
        if (cfg.tie_word_embeddings and self.model.first and self.model.last
                and not self.lm_head.quantized):  # a quantized head holds its own copy
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def num_local_layers(self) -> int:
        return len(self.model.layers)

    @property
    def weight_stream(self):
        """The offloaded layers' copies (layers/weight_stream.py), or None."""
        return self.model.weight_stream

    def decoder_layers(self) -> dict[int, nn.Module]:
        """This rank's decoder layers by global index (a shared layer under each index)."""
        return {int(i): layer for i, layer in self.model.layers.items()}

    def kv_cache_specs(self) -> list[KVCacheSpec]:
        """This rank's KV-cache shape of each local layer, in order."""
        return [KVCacheSpec(layer.self_attn.num_kv_heads, layer.self_attn.head_dim,
                            layer.self_attn.attn.sliding_window)
                for layer in self.model.layers.values()]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[torch.Tensor], meta: AttentionMetadata, intermediate=None):
        """input_ids, positions: [T] -> hidden states [T, hidden] (or, before the last
        pipeline stage, (hidden, residual) for the next stage)."""
        return self.model(input_ids, positions, kv_caches, meta, intermediate)

    def compute_logits(self, hidden: torch.Tensor, as_float: bool = True) -> torch.Tensor:
        return self.lm_head(hidden, as_float)  # [N, vocab] float32 (or the model's dtype)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor in self._with_shares(self._tied_head(weights)):
            if "rotary_emb.inv_freq" in name:
                continue
            if not self._owns(name):
                continue  # another pipeline stage's tensor
            name = name.replace(".block_sparse_moe.", ".mlp.")  # Mixtral's name for the block
            expert = _EXPERT.search(name)
            if expert:
                e, kind = int(expert.group(1)), _EXPERT_KIND[expert.group(2)]
                target = name[:expert.start()] + (".experts.w2" if kind == "down"
                                                  else ".experts.w13")
                param = params[target]
                param.weight_loader(param, tensor, (e, kind))  # copy_ converts the dtype
                loaded.add(f"{target}:{e}:{kind}")
                continue
            for ours, theirs, shard in _STACKED:
                if f".{theirs}." in name:
                    target = name.replace(theirs, ours)
                    break
            else:
                target, shard = name, None
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} matches no parameter of "
                                 f"{self.config.architecture}")
            loader = getattr(param, "weight_loader", default_weight_loader)
            loader(param, tensor, shard)
            loaded.add(target if shard is None else f"{target}:{shard}")
        self._check_complete(loaded)

    def _tied_head(self, weights):
        """A tied checkpoint's tensors with its embedding also under `lm_head.weight` where
        this stage's head holds its own rows (a last stage without the embedding, or a
        quantized head); the checkpoint's own lm_head.weight (some tied ones keep a copy)
        is not read."""
        if not self.config.tie_word_embeddings:
            yield from weights
            return
        embed = self.model.embed_tokens
        own_head = self.lm_head is not None and (embed is None
                                                 or self.lm_head.weight is not embed.weight)
        for name, tensor in weights:
            if name == "lm_head.weight":
                continue
            if name == "model.embed_tokens.weight" and own_head:
                yield "lm_head.weight", tensor
            yield name, tensor

    def _with_shares(self, weights):
        """The checkpoint's tensors, and a shared layer's (`layer_share`: i runs j's
        weights) under its own name where this pipeline stage holds i but not j; a shared
        layer's own tensors, if the checkpoint has them, are not read."""
        shares = dict(self.config.layer_share)
        sharers: dict[int, list[int]] = {}
        for i, j in shares.items():
            if self.model.start <= i < self.model.end and not self.model.start <= j:
                sharers.setdefault(j, []).append(i)
        for name, tensor in weights:
            layer = _LAYER.match(name)
            index = int(layer.group(1)) if layer else None
            if index in shares:
                continue
            yield name, tensor
            for i in sharers.get(index, ()):
                yield f"model.layers.{i}.{name[layer.end():]}", tensor

    def _owns(self, name: str) -> bool:
        layer = _LAYER.match(name)
        if layer:
            return self.model.start <= int(layer.group(1)) < self.model.end
        if name.startswith("model.embed_tokens."):
            return self.model.embed_tokens is not None
        if name.startswith("model.norm."):
            return self.model.norm is not None
        if name.startswith("lm_head."):
            return self.lm_head is not None
        return True

    def _check_complete(self, loaded: set[str]) -> None:
        missing = []
        for name, param in self.named_parameters():
            if getattr(param, "derived", False):
                continue  # filled with another tensor (a quantized weight's scales)
            if name.endswith(("qkv_proj.weight", "qkv_proj.bias")):
                parts = [f"{name}:{s}" for s in "qkv"]
            elif name.endswith("gate_up_proj.weight"):
                parts = [f"{name}:0", f"{name}:1"]
            elif name.endswith((".experts.w13", ".experts.w2")):
                kinds = ("down",) if name.endswith("w2") else ("gate", "up")
                parts = [f"{name}:{e}:{k}" for e in range(self.config.num_experts) for k in kinds]
            else:
                parts = [name]
            missing += [p for p in parts if p not in loaded]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"checkpoint lacks {len(missing)} tensor(s): {shown}")
