"""A checkpoint's own quantization, read from its metadata (no weights, no torch).

Objects: CheckpointQuant (method: "" | "gguf" | "fp8" | "gptq" | "gptq_v2"; layers: Tessera layer
prefix -> format spec), `checkpoint_quant(kind, path)`, `tessera_prefix(hf_module)`,
`gguf_spec(type_name)`, SPEC_ORDER; `safetensors_files(folder)` (sharded through
model.safetensors.index.json, or every *.safetensors; pickle files are refused, never
read) and `safetensors_names(folder)` (from the files' JSON headers).
Format specs (quant_policy.py takes them as rules): "none", "int8" (per channel), "fp8",
"int8/G" and "int4/G" (groups of G along K).
- GGUF (the header's tensor types): Q4_0 / Q4_1 / Q4_K -> int4/32 and Q8_0 -> int8/32,
  read as they are (loader/gguf_quant.py); the other quantized types are dequantized at
  load and re-quantized to the nearest format: 2-3-bit K-quants, the IQ and TQ types ->
  int4/32, 5- and 6-bit -> int8 per channel; F16/BF16/F32 -> none.
- A Hugging Face folder's config.json `quantization_config`: quant_method fp8 /
  fbgemm_fp8 / compressed-tensors (float 8-bit weights per channel or per tensor, no
  weight_block_size) -> fp8 on every layer whose `weight_scale` the safetensors headers
  list; gptq (4 bits, group 32/64/128, desc_act false) -> int4/G where `qweight` is.
A stacked Tessera layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj) whose parts differ
takes the most precise of their formats (SPEC_ORDER). The LM head (quant_policy.py HEAD)
is listed where the checkpoint holds it in a format read as it is: a GGUF's output.weight
(or, tied, token_embd.weight) of a kept type, a folder's `lm_head.qweight` /
`lm_head.weight_scale`; the head then keeps those exact values in fewer bytes (a GGUF's
other types are dequantized for a 16-bit head, as before). Anything else is refused with a
message naming what (block-wise fp8, 8-bit GPTQ, act-order GPTQ, other methods).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import struct

from tessera.quant_policy import HEAD

SPEC_ORDER = ("none", "int8/32", "int8", "fp8", "int8/64", "int8/128", "int4/32", "int4/64",
              "int4/128")  # most precise first
_STACKED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
            "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
_LINEAR = re.compile(r"^(model\.layers\.\d+\.(?:self_attn|mlp|mlp\.shared_expert)\.\w+_proj)"
                     r"\.(\w+)$")
_GGUF_KEPT = {"Q4_0": "int4/32", "Q4_1": "int4/32", "Q4_K": "int4/32", "Q8_0": "int8/32"}
_GGUF_TO_INT4 = ("Q2_K", "Q3_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                 "IQ4_NL", "IQ4_XS", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0")


@dataclasses.dataclass
class CheckpointQuant:
    method: str = ""  # "" (16/32-bit), "gguf", "fp8", "gptq"
    layers: dict[str, str] = dataclasses.field(default_factory=dict)  # prefix -> spec


def tessera_prefix(hf_module: str) -> str:
    """model.layers.3.self_attn.q_proj -> model.layers.3.self_attn.qkv_proj."""
    head, _, last = hf_module.rpartition(".")
    return f"{head}.{_STACKED.get(last, last)}"


def _merge(layers: dict[str, str], prefix: str, spec: str) -> None:
    old = layers.get(prefix)
    layers[prefix] = spec if old is None else min(old, spec, key=SPEC_ORDER.index)


def gguf_spec(type_name: str) -> str:
    if type_name in _GGUF_KEPT:
        return _GGUF_KEPT[type_name]
    if type_name in ("F32", "F16", "BF16", "F64"):
        return "none"
    return "int4/32" if type_name in _GGUF_TO_INT4 else "int8"


def checkpoint_quant(kind: str, path: str) -> CheckpointQuant:
    if kind == "gguf":
        return _gguf(path)
    if kind == "hf":
        return _hf(path)
    return CheckpointQuant()


def _gguf(path: str) -> CheckpointQuant:
    from tessera.models.gguf_meta import open_reader
    from tessera.models.gguf_names import hf_name
    layers: dict[str, str] = {}
    heads: dict[str, str] = {}  # the head's tensor (or, tied, the embedding's) -> its type
    for tensor in open_reader(path).tensors:
        name = hf_name(tensor.name)
        match = _LINEAR.match(name or "")
        if match and match.group(2) == "weight":
            _merge(layers, tessera_prefix(match.group(1)), gguf_spec(tensor.tensor_type.name))
        elif name in ("lm_head.weight", "model.embed_tokens.weight"):
            heads[name] = tensor.tensor_type.name
    head = heads.get("lm_head.weight", heads.get("model.embed_tokens.weight"))
    if head in _GGUF_KEPT:  # read as it is: the same values as dequantized, fewer bytes
        layers[HEAD] = _GGUF_KEPT[head]
    if set(layers.values()) <= {"none"}:
        return CheckpointQuant()
    return CheckpointQuant("gguf", layers)


def _fp8_method(qc: dict, where: str) -> None:
    if qc.get("weight_block_size"):
        raise ValueError(f"{where}: block-wise fp8 (weight_block_size "
                         f"{qc['weight_block_size']}) is not supported; per-channel or "
                         f"per-tensor fp8 checkpoints are.")
    if qc.get("quant_method") == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            if w.get("num_bits") != 8 or w.get("type") != "float" or w.get("strategy") not in (
                    "channel", "tensor"):
                raise ValueError(f"{where}: compressed-tensors weights {w} are not supported; "
                                 f"8-bit float per channel or per tensor are.")


def _gptq_spec(qc: dict, where: str) -> str:
    bits, group = qc.get("bits"), qc.get("group_size")
    if bits != 4:
        raise ValueError(f"{where}: GPTQ with {bits} bits is not supported; 4-bit is.")
    if group not in (32, 64, 128):
        raise ValueError(f"{where}: GPTQ group_size {group} is not supported; 32, 64 or 128 "
                         f"are.")
    if qc.get("desc_act"):
        raise ValueError(f"{where}: GPTQ with desc_act (act-order) is not supported.")
    return f"int4/{group}"


def _hf(folder: str) -> CheckpointQuant:
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        qc = json.load(f).get("quantization_config")
    if not qc:
        return CheckpointQuant()
    where = f"{config_path} quantization_config"
    method = qc.get("quant_method")
    if method in ("fp8", "fbgemm_fp8", "compressed-tensors"):
        _fp8_method(qc, where)
        method, spec, marker = "fp8", "fp8", "weight_scale"
    elif method == "gptq":
        spec, marker = _gptq_spec(qc, where), "qweight"
        if qc.get("checkpoint_format") == "gptq_v2":  # zero points stored as they are
            method = "gptq_v2"
    else:
        raise ValueError(f"{where}: quant_method {method!r} is not supported; Tessera reads "
                         f"fp8 (per channel) and gptq (4-bit) checkpoints, and quantizes "
                         f"16-bit ones itself (--quantization).")
    layers: dict[str, str] = {}
    for name in safetensors_names(folder):
        match = _LINEAR.match(name)
        if match and match.group(2) == marker:
            _merge(layers, tessera_prefix(match.group(1)), spec)
        elif name == f"{HEAD}.{marker}":  # a head quantized too (GPTQ's lm_head option)
            layers[HEAD] = spec
    if not layers:
        raise ValueError(f"{where} says {method}, but no layer of the checkpoint has a "
                         f"{marker!r} tensor.")
    return CheckpointQuant(method, layers)


def safetensors_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(folder, n) for n in names]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that are missing: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        pickled = glob.glob(os.path.join(folder, "*.bin")) + glob.glob(os.path.join(folder, "*.pt"))
        extra = " (found pickle *.bin/*.pt files, which Tessera never loads)" if pickled else ""
        raise FileNotFoundError(f"No *.safetensors weights in {folder!r}{extra}.")
    return files


def safetensors_names(folder: str) -> list[str]:
    """Every tensor name in the folder's safetensors files, from their JSON headers."""
    names: list[str] = []
    for file in safetensors_files(folder):
        with open(file, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        names += [n for n in header if n != "__metadata__"]
    return names
