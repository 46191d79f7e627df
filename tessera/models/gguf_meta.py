"""Reading llama.cpp GGUF files' metadata: model shape and tokenizer (no torch).

Public objects:
- `read_gguf_arch(path) -> ArchConfig`: the model shape from GGUF metadata
  (`general.architecture` `llama` -> LlamaForCausalLM, Mistral files included;
  `qwen2` -> Qwen2ForCausalLM with q/k/v biases).
- `load_gguf_tokenizer(path)`: the transformers tokenizer stored in the file, with its
  chat template and BOS-adding forced to the file's `tokenizer.ggml.add_bos_token`.
- `GGUF_ARCHITECTURES`: GGUF architecture name -> ArchConfig architecture.
- `open_reader`, `gguf_architecture`, `dequantize_tensor`: shared with the weight reader
  (models/loader/gguf.py).

Flow: `open_reader` (checks the path and the GGUF magic) -> `GGUFReader` (memory-mapped)
-> metadata via `_field`. Shapes: GGUF lists dims innermost first; the reader's arrays (and
`dequantize`'s output) are already in numpy/HF order (out_features, in_features).
Llama 3 style RoPE scaling is stored by llama.cpp as a `rope_freqs` tensor of per-frequency
divisors; `_llama3_scaling_from_rope_freqs` recovers equivalent `rope_scaling` settings.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from tessera.models.arch_config import ArchConfig

GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def open_reader(path: str):
    """A GGUFReader for `path`, with clear errors for a missing or non-GGUF file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (starts with {magic!r}, expected b'GGUF').")
    stat = os.stat(path)
    try:
        return _cached_reader(path, stat.st_mtime_ns, stat.st_size)
    except Exception as e:  # truncated or otherwise corrupt file
        raise ValueError(f"Cannot read GGUF file {path}: {e}") from e


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime_ns: int, size: int):
    """Parsing the metadata takes seconds (49k-token vocabularies): config and weights
    share one memory-mapped reader per file version."""
    from gguf import GGUFReader
    return GGUFReader(path)


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _decimal(value: float) -> float:
    """A float32 metadata value as the decimal it was written from (9.99999975e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def gguf_architecture(reader, path: str) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF architecture {arch!r} in {path} is not supported. "
            f"Supported: {', '.join(GGUF_ARCHITECTURES)}."
        )
    return arch


def read_gguf_arch(path: str) -> ArchConfig:
    """Build the ArchConfig of the model stored in the GGUF file at `path`."""
    reader = open_reader(path)
    arch = gguf_architecture(reader, path)

    def need(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ValueError(f"GGUF file {path} lacks the metadata key {arch}.{key!s}.")
        return value

    hidden, num_heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = _field(reader, f"{arch}.attention.key_length") or _field(
        reader, f"{arch}.rope.dimension_count") or hidden // num_heads
    tensors = {t.name: t for t in reader.tensors}
    vocab_size = _field(reader, f"{arch}.vocab_size")
    if vocab_size is None and "tokenizer.ggml.tokens" in reader.fields:
        vocab_size = len(reader.fields["tokenizer.ggml.tokens"].data)
    if vocab_size is None and "token_embd.weight" in tensors:
        vocab_size = int(tensors["token_embd.weight"].shape[-1])  # GGUF shape is (hidden, vocab)
    if vocab_size is None:
        raise ValueError(f"GGUF file {path} gives no vocabulary size.")
    theta = _decimal(_field(reader, f"{arch}.rope.freq_base", 10000.0))
    eos_ids = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token = _field(reader, f"tokenizer.ggml.{key}")
        if token is not None and int(token) not in eos_ids:
            eos_ids.append(int(token))
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    return ArchConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv") or num_heads),
        head_dim=int(head_dim),
        rms_norm_eps=_decimal(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=theta,
        rope_scaling=_rope_scaling(reader, arch, tensors, theta, int(head_dim), path),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 4096)),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias=arch == "qwen2" or "blk.0.attn_q.bias" in tensors,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(eos_ids),
    )


def _rope_scaling(reader, arch, tensors, theta, head_dim, path) -> dict[str, Any] | None:
    kind = _field(reader, f"{arch}.rope.scaling.type")
    if kind not in (None, "none"):
        scaling: dict[str, Any] = {"rope_type": kind}
        factor = _field(reader, f"{arch}.rope.scaling.factor")
        if factor is not None:
            scaling["factor"] = _decimal(factor)
        original = _field(reader, f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    if "rope_freqs.weight" in tensors:
        divisors = dequantize_tensor(tensors["rope_freqs.weight"]).reshape(-1).astype(np.float64)
        return _llama3_scaling_from_rope_freqs(divisors, theta, head_dim, path)
    return None


def _llama3_scaling_from_rope_freqs(divisors, theta, head_dim, path) -> dict[str, Any] | None:
    """Llama-3 `rope_scaling` reproducing llama.cpp's per-frequency divisors.

    llama.cpp stores 1 for high frequencies, `factor` for low ones and
    1 / ((1 - s) / factor + s) in between, with s = original / wavelength / (high - low)
    - low / (high - low). Only those two ratios matter, so low_freq_factor is fixed at 1
    and the other two settings are fitted to the in-between divisors, then checked.
    """
    if np.allclose(divisors, 1.0):
        return None
    wavelengths = 2 * math.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor = float(divisors.max())
    middle = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    if middle.sum() >= 2:
        smooth = (1 / divisors[middle] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelengths[middle], smooth, 1)  # smooth = a/w - b
        if slope > 0 and intercept < 0:
            span = -1 / intercept  # high_freq_factor - low_freq_factor, with low = 1
            scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                       "high_freq_factor": round(1.0 + span, 6),
                       "original_max_position_embeddings": int(round(slope * span))}
            if np.allclose(_llama3_divisors(scaling, wavelengths), divisors, rtol=1e-4):
                return scaling
    raise ValueError(
        f"GGUF file {path} has a rope_freqs tensor that does not match Llama-3 RoPE scaling; "
        "custom RoPE frequency factors are not supported."
    )


def _llama3_divisors(scaling: dict[str, Any], wavelengths: np.ndarray) -> np.ndarray:
    """What llama.cpp's converter writes to rope_freqs for these llama3 settings."""
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original, factor = scaling["original_max_position_embeddings"], scaling["factor"]
    smooth = (original / wavelengths - low) / (high - low)
    middle = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelengths < original / high, 1.0,
                    np.where(wavelengths > original / low, factor, middle))


def dequantize_tensor(tensor) -> np.ndarray:
    """float32 array of `tensor` in HF shape (GGUF dims reversed)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    if tensor.tensor_type in (Q.F64, Q.I8, Q.I16, Q.I32, Q.I64):
        values = np.asarray(tensor.data, dtype=np.float32)  # plain numbers: just cast
    else:
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as e:
            raise ValueError(
                f"GGUF tensor {tensor.name!r} uses the type {tensor.tensor_type.name}, "
                f"which the installed gguf package cannot dequantize ({e})."
            ) from e
    shape = tuple(int(d) for d in reversed(tensor.shape))
    # np.array copies: F32 data is otherwise a read-only view of the memory map.
    return np.array(values, dtype=np.float32).reshape(shape)


def load_gguf_tokenizer(path: str):
    """The transformers tokenizer stored in the GGUF file, BOS-adding as the file says."""
    from transformers import AutoTokenizer

    reader = open_reader(path)
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token")
    template = _field(reader, "tokenizer.chat_template")
    del reader
    tokenizer = AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    if template and not tokenizer.chat_template:
        tokenizer.chat_template = template
    if add_bos is not None:
        _force_add_bos(tokenizer, bool(add_bos))
    return tokenizer


def _adds_bos(tokenizer) -> bool:
    with_special = tokenizer("a").input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    return len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id


def _force_add_bos(tokenizer, add_bos: bool) -> None:
    """Make plain encoding add a BOS exactly when `add_bos`, and check that it does.

    The `add_bos_token` setter rebuilds the post-processor on transformers' TokenizersBackend
    (and LlamaTokenizerFast); for other fast tokenizers the post-processor is rebuilt here.
    """
    if tokenizer.bos_token_id is None:
        if add_bos:
            raise ValueError("The GGUF asks for a BOS token but its tokenizer defines none.")
        return
    try:
        tokenizer.add_bos_token = add_bos
    except (AttributeError, ValueError):
        pass
    if _adds_bos(tokenizer) != add_bos and getattr(tokenizer, "backend_tokenizer", None):
        from tokenizers import processors

        ids, plain = tokenizer("a").input_ids, tokenizer("a", add_special_tokens=False).input_ids
        adds_eos = len(ids) > len(plain) and ids[-1] == tokenizer.eos_token_id
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
        head, tail = (f"{bos} " if add_bos else ""), (f" {eos}" if adds_eos else "")
        special = ([(bos, tokenizer.bos_token_id)] if add_bos else []) + (
            [(eos, tokenizer.eos_token_id)] if adds_eos else [])
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{head}$A{tail}", pair=f"{head}$A{tail} $B:1{tail}",
            special_tokens=special)
    if _adds_bos(tokenizer) != add_bos:
        raise RuntimeError(f"Could not make the tokenizer {'add' if add_bos else 'omit'} BOS.")
