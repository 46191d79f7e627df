"""Quantized models end to end on the CPU: a 16-bit checkpoint quantized at load equals HF
transformers on the dequantized weights (the quantization is exactly what the formats
say, and nothing else changes); checkpoints already quantized (FP8 and GPTQ folders
written here by hand from their published layouts, a Q4_1 GGUF) load kept in their
format and equal their dequantized weights; the policy reaches the layers; bad
checkpoints and shapes get errors naming the layer."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tessera import LLM, SamplingParams
from tessera.quant.formats import dequantize, quantize
from tests.conftest import hf_greedy, make_tiny_checkpoint

NEW_TOKENS = 12
PROMPTS = [[5, 17, 99, 3], list(range(20, 50))]
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in LINEAR


def _dequantized(hf_model, kind: str, group: int):
    """A copy of the HF model whose linear weights are dequantize(quantize(W))."""
    ref = copy.deepcopy(hf_model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if _is_linear(name):
                p.copy_(dequantize(quantize(kind, p.float(), group, torch.float32)))
    return ref


def _runner(llm):
    return llm.engine.core.executor.worker.runner


def _greedy(llm):
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    return [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                                               params)]


def _assert_equal_hf(outs, hf_model):
    for prompt, got in zip(PROMPTS, outs):
        tokens, logprobs = hf_greedy(hf_model, prompt, NEW_TOKENS)
        assert got.token_ids == tokens
        for step, (tok, entry) in enumerate(zip(got.token_ids, got.logprobs)):
            assert abs(entry[tok].logprob - logprobs[step][tok].item()) < 1e-3


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp(f"tiny-q-{request.param}"))
    return folder, make_tiny_checkpoint(request.param, folder)


@pytest.mark.parametrize("kind", ["int8", "fp8", "int4"])
def test_quantized_at_load_equals_hf_on_dequantized_weights(tiny, kind):
    folder, hf_model = tiny
    group = 32 if kind == "int4" else 0
    llm = LLM(folder, skip_tokenizer_init=True, device="cpu", num_blocks=64,
              quantization=kind, quantization_group_size=32)
    _assert_equal_hf(_greedy(llm), _dequantized(hf_model, kind, group))
    by_precision = llm.engine.executor.info.weight_bytes
    assert set(by_precision) == {kind, "float32"}  # embeddings, norms stay full precision
    full = sum(p.numel() for n, p in hf_model.named_parameters() if _is_linear(n))
    per_weight = {"int8": 1, "fp8": 1, "int4": 0.5}[kind]
    scales = {"int8": 0.1, "fp8": 0.1, "int4": 8 / 32}[kind]  # fp32 scale (+ offset) / group
    assert full * per_weight < by_precision[kind] <= full * (per_weight + scales) + 4 * 2000


def test_w8a8_emulated_on_the_cpu_equals_hf_with_inputs_quantized_per_token(tiny,
                                                                           monkeypatch):
    """quantized.EMULATE_W8A8 (benchmarks/quant_accuracy.py's fp8a8): every fp8 layer's
    input quantized per token (quant/fp8.py's definition) before the product, as W8A8
    computes on a GPU; HF with the same weights and a hook doing that on every linear
    layer but the LM head gives the same tokens and logprobs."""
    from tessera.quant import quantized
    from tessera.quant.fp8 import quantize_rows_fp8_ref
    folder, hf_model = tiny
    monkeypatch.setattr(quantized, "EMULATE_W8A8", 0)
    llm = LLM(folder, skip_tokenizer_init=True, device="cpu", num_blocks=64,
              quantization="fp8")
    ref = _dequantized(hf_model, "fp8", 0)

    def per_token(module, args):
        x = args[0]
        xq, sx = quantize_rows_fp8_ref(x.reshape(-1, x.shape[-1]))
        return ((xq.float() * sx).to(x.dtype).view_as(x),)

    for name, module in ref.named_modules():
        if name.split(".")[-1] in LINEAR:
            module.register_forward_pre_hook(per_token)
    _assert_equal_hf(_greedy(llm), ref)


@pytest.mark.parametrize("kind", ["int8", "fp8", "int4"])
def test_quantized_lm_head_equals_hf_on_its_dequantized_weights(tiny, kind):
    """--lm-head-quantization alone: only the head is quantized (a tied model's head is a
    copy: its embedding stays exact), and the model equals HF with that head."""
    folder, hf_model = tiny
    llm = LLM(folder, skip_tokenizer_init=True, device="cpu", num_blocks=64,
              lm_head_quantization=kind, quantization_group_size=32)
    ref = copy.deepcopy(hf_model)
    head = ref.get_output_embeddings()
    with torch.no_grad():
        head.weight = torch.nn.Parameter(dequantize(quantize(
            kind, head.weight.float(), 32 if kind == "int4" else 0, torch.float32)))
    _assert_equal_hf(_greedy(llm), ref)
    model = _runner(llm).model
    assert model.lm_head.weight.dtype != torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model.model.layers["0"].mlp.down_proj.weight.dtype == torch.float32
    vocab, hidden = head.weight.shape
    by_precision = llm.engine.executor.info.weight_bytes
    assert set(by_precision) == {kind, "float32"}
    assert vocab * hidden * (0.5 if kind == "int4" else 1) < by_precision[kind] < (
        vocab * hidden * (0.76 if kind == "int4" else 1.1))  # + fp32 scales (+ offsets)


def test_keep_full_precision_and_policy_reach_the_layers(tiny_llama):
    folder, _ = tiny_llama
    llm = LLM(folder, skip_tokenizer_init=True, device="cpu", num_blocks=32,
              quantization="int8", keep_full_precision="*.down_proj,model.layers.0.*")
    layers = _runner(llm).model.model.layers
    assert layers["0"].self_attn.qkv_proj.weight.dtype == torch.float32
    assert layers["1"].self_attn.qkv_proj.weight.dtype == torch.int8
    assert layers["1"].mlp.down_proj.weight.dtype == torch.float32
    assert layers["2"].mlp.gate_up_proj.weight.dtype == torch.int8


def test_a_keep_pattern_that_names_no_layer_is_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"'\*\.q_proj' matches no linear layer"):
        LLM(tiny_llama[0], skip_tokenizer_init=True, device="cpu", num_blocks=16,
            quantization="int8", keep_full_precision="*.q_proj")


def test_int4_group_that_does_not_divide_names_the_layer(tiny_llama):
    folder, _ = tiny_llama  # hidden 64, intermediate 160
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.qkv_proj: int4 needs "
                                         r"the input size \(64 on this rank\)"):
        LLM(folder, skip_tokenizer_init=True, device="cpu", quantization="int4")
    with pytest.raises(ValueError, match=r"lm_head: int4 needs the input size \(64"):
        LLM(folder, skip_tokenizer_init=True, device="cpu", lm_head_quantization="int4")


def test_random_weights_quantized(tiny_llama):
    llm = LLM(tiny_llama[0], load_format="dummy", skip_tokenizer_init=True, device="cpu",
              num_blocks=16, quantization="int4", quantization_group_size=32)
    assert "int4" in llm.engine.executor.info.weight_bytes
    out = llm.generate({"prompt_token_ids": [1, 2, 3]},
                       SamplingParams(max_tokens=4, ignore_eos=True, temperature=0))[0]
    assert len(out.outputs[0].token_ids) == 4


# -- checkpoints already quantized ------------------------------------------------------
def _write_quantized_folder(src: str, dst: str, method: str, group: int = 32,
                            head: bool = False):
    """The tiny checkpoint rewritten as an fp8 (per-channel, fbgemm_fp8 names) or a GPTQ
    (4-bit, symmetric, AutoGPTQ's original zero-point storage) folder (head: its LM head
    quantized too); returns the dequantized state dict (what the folder stands for)."""
    os.makedirs(dst, exist_ok=True)
    state = load_file(os.path.join(src, "model.safetensors"))
    out, dequantized = {}, dict(state)
    for name, w in state.items():
        if not (_is_linear(name) or head and name == "lm_head.weight"):
            out[name] = w
            continue
        module = name[:-len(".weight")]
        if method == "fp8":
            qw = quantize("fp8", w)
            out[module + ".weight"] = qw.data
            out[module + ".weight_scale"] = qw.scale[:, None]
        else:
            n, k = w.shape
            scale = (w.reshape(n, k // group, group).abs().amax(-1) / 7).half()  # [N, K/G]
            s = scale.float().repeat_interleave(group, 1)
            q = (torch.round(w / s) + 8).clamp(0, 15).to(torch.int32)  # [N, K]
            packed = (q.t().reshape(k // 8, 8, n) << (4 * torch.arange(8))[None, :, None])
            out[module + ".qweight"] = packed.sum(1).to(torch.int32)  # [K / 8, N]
            zeros = torch.full((k // group, n // 8), 0, dtype=torch.int32)
            for j in range(8):
                zeros |= 7 << (4 * j)  # z - 1 = 7 in every nibble
            out[module + ".qzeros"] = zeros
            out[module + ".scales"] = scale.t().contiguous()
            out[module + ".g_idx"] = torch.arange(k, dtype=torch.int32) // group
            w = (q.float() - 8) * s
        dequantized[name] = w if method == "gptq" else dequantize(qw)
    save_file(out, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = (
        {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0} if method == "fp8" else
        {"quant_method": "gptq", "bits": 4, "group_size": group, "sym": True, "desc_act": False})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dequantized


@pytest.mark.parametrize("head", [False, True], ids=["head16", "head_quantized"])
@pytest.mark.parametrize("method,kind", [("fp8", "fp8"), ("gptq", "int4")])
def test_quantized_checkpoints_load_in_their_format(tiny_llama, tmp_path, method, kind, head):
    """Every layer the folder quantizes, its LM head too where it does (GPTQ's lm_head
    option), loads in that format as it is, and the model equals HF on those values."""
    folder, hf_model = tiny_llama
    dequantized = _write_quantized_folder(folder, str(tmp_path / method), method, head=head)
    llm = LLM(str(tmp_path / method), skip_tokenizer_init=True, device="cpu", num_blocks=64)
    assert set(llm.engine.executor.info.weight_bytes) == {kind, "float32"}
    lm_head = _runner(llm).model.lm_head
    assert lm_head.method.precision(lm_head) == (kind if head else "float32")
    ref = copy.deepcopy(hf_model)
    ref.load_state_dict(dequantized, strict=False)
    _assert_equal_hf(_greedy(llm), ref)


def test_quantized_checkpoint_missing_scales_names_the_layer(tiny_llama, tmp_path):
    folder, _ = tiny_llama
    dst = str(tmp_path / "fp8-broken")
    _write_quantized_folder(folder, dst, "fp8")
    state = load_file(os.path.join(dst, "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight_scale"]
    save_file(state, os.path.join(dst, "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj: the checkpoint "
                                         r"has weight but no weight_scale"):
        LLM(dst, skip_tokenizer_init=True, device="cpu", num_blocks=16)


@pytest.mark.parametrize("config,error", [
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise fp8"),
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "GPTQ with 8 bits"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}, "act-order"),
    ({"quant_method": "awq"}, "quant_method 'awq' is not supported"),
])
def test_unsupported_checkpoint_quantization_is_refused(tiny_llama, tmp_path, config, error):
    folder, _ = tiny_llama
    dst = tmp_path / "bad"
    dst.mkdir()
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = config
    (dst / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(folder, "model.safetensors"), dst / "model.safetensors")
    with pytest.raises(ValueError, match=error):
        LLM(str(dst), skip_tokenizer_init=True, device="cpu")


def test_gguf_q4_1_kept_as_it_is(smollm2_path):
    """The default model's Q4_1 matrices, as int4 in groups of 32 (a GGUF's default
    group), are copied, not re-fitted: they dequantize to exactly the weights the 16-bit
    load holds."""
    dense = _runner(LLM(smollm2_path, num_blocks=16)).model.model.layers["3"].mlp.down_proj
    kept = LLM(smollm2_path, num_blocks=16, quantization="int4")
    layer = _runner(kept).model.model.layers["3"].mlp.down_proj
    assert layer.weight.dtype == torch.uint8
    assert torch.equal(dequantize(layer.method.kernel_weight(layer)), dense.weight)


# -- mixture of experts -----------------------------------------------------------------
def _dequantized_folder(src: str, dst: str, kind: str) -> None:
    """src with every projection and expert matrix replaced by dequantize(quantize(W)),
    the routers, embeddings, LM head and norms as they are."""
    os.makedirs(dst, exist_ok=True)
    state = load_file(os.path.join(src, "model.safetensors"))
    for name, w in state.items():
        last = name.split(".")[-2] if name.endswith(".weight") else ""
        if w.dim() == 2 and (last in LINEAR or last in ("w1", "w2", "w3")):
            state[name] = dequantize(quantize(kind, w.float())).to(w.dtype)
    save_file(state, os.path.join(dst, "model.safetensors"))
    for f in os.listdir(src):
        if f.endswith(".json"):
            with open(os.path.join(src, f)) as a, open(os.path.join(dst, f), "w") as b:
                b.write(a.read())


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantized_experts_equal_the_dequantized_model(tiny_moe, tmp_path, kind):
    _, folder, _ = tiny_moe
    _dequantized_folder(folder, str(tmp_path / "deq"), kind)
    options = dict(skip_tokenizer_init=True, device="cpu", num_blocks=64)
    quantized = LLM(folder, quantization=kind, **options)
    experts = _runner(quantized).model.model.layers["0"].mlp.experts
    assert experts.w13.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[kind]
    assert _runner(quantized).model.model.layers["0"].mlp.gate.weight.dtype == torch.float32
    got, want = _greedy(quantized), _greedy(LLM(str(tmp_path / "deq"), **options))
    for a, b in zip(got, want):
        assert a.token_ids == b.token_ids
        for tok, x, y in zip(a.token_ids, a.logprobs, b.logprobs):
            assert abs(x[tok].logprob - y[tok].logprob) < 1e-4


@pytest.mark.parametrize("kind", ["int8", "fp8", "int4"])
def test_quantized_head_shards_pad_the_vocabulary_with_zero_logits(kind, monkeypatch):
    """A vocabulary of 385 over 4 ranks (shards of 97, the last holding 94 rows and 3 of
    padding), each shard quantized a slice at a time (ROWS_AT_ONCE made small): every
    padding logit is 0, and the real ones join to the whole head's."""
    from tessera.config import KernelConfig
    from tessera.layers import embedding
    from tessera.layers.context import building, make_context
    from tessera.quant import quantized
    from tessera.quant_policy import QuantPolicy
    vocab, hidden, ranks = 385, 64, 4
    g = torch.Generator().manual_seed(0)
    table, x = torch.randn(vocab, hidden, generator=g), torch.randn(3, hidden, generator=g)
    context = make_context(KernelConfig(kernel_backend="reference"), torch.device("cpu"),
                           QuantPolicy("none", head=kind, group_size=32))
    monkeypatch.setattr(quantized, "ROWS_AT_ONCE", 40)
    monkeypatch.setattr(embedding, "tp_size", lambda: ranks)
    shards = []
    for rank in range(ranks):
        monkeypatch.setattr(embedding, "tp_rank", lambda rank=rank: rank)
        with building(context):
            head = embedding.LMHead(vocab, hidden)
        head.weight.weight_loader(head.weight, table)
        shards.append(head.method.apply(head, x))  # [3, 97]: this rank's logits
    logits = torch.cat(shards, dim=1)
    assert logits.shape == (3, 4 * 97) and torch.all(logits[:, vocab:] == 0)
    group = 32 if kind == "int4" else 0
    want = x @ dequantize(quantize(kind, table, group, torch.float32)).T
    assert torch.allclose(logits[:, :vocab], want, atol=1e-4)
