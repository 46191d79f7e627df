"""On a CUDA GPU, in bf16: quantized models through the Triton kernels (the skinny decode
GEMM with its epilogues, the tiled GEMM for prefill, fp8 x fp8 through torch._scaled_mm)
equal HF transformers on the dequantized weights, within bf16's tolerance (fp8's prefill
also quantizes activations, so its tolerance is wider); the fp8 W8A8 product equals its
float32 reference. Run on the lent GPU machine (`pytest -m gpu`)."""
from __future__ import annotations

import copy

import pytest
import torch

from tessera import LLM
from tessera.quant.formats import dequantize, quantize
from tests.models.test_gpu_parity import PROMPTS, _compare

pytestmark = pytest.mark.gpu

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _dequantized_bf16(hf_model, kind: str, group: int, head: bool = False):
    """The HF model with its linear layers' weights (with head: the LM head's too, its own
    copy where tied) dequantize(quantize(W)), quantized on the GPU as the engine quantizes
    them at load (int4's least-squares fit may pick another step for a group where the
    CPU's and the GPU's float sums differ in a near-tie)."""
    ref = copy.deepcopy(hf_model)

    def rounded(w):
        return dequantize(quantize(kind, w.float().cuda(), group, torch.float16)).cpu()

    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(".weight") and name.split(".")[-2] in LINEAR:
                p.copy_(rounded(p))
        if head:
            out = ref.get_output_embeddings()
            out.weight = torch.nn.Parameter(rounded(out.weight))
    return ref.to("cuda", torch.bfloat16)


@pytest.mark.parametrize("head", [False, True], ids=["head16", "head_quantized"])
@pytest.mark.parametrize("kind", ["int8", "int4", "fp8"])
def test_quantized_tiny_models_bf16_equal_hf(tiny_model, kind, head):
    arch, folder, hf_model = tiny_model
    group = 32 if kind == "int4" else 0
    llm = LLM(folder, skip_tokenizer_init=True, dtype="bfloat16", device="cuda",
              num_blocks=256, max_num_batched_tokens=32, quantization=kind,
              quantization_group_size=32, lm_head_quantization=kind if head else None)
    kernels = llm.engine.executor.info.kernels
    assert kernels["skinny_gemm"] == "on", kernels
    _compare(llm, _dequantized_bf16(hf_model, kind, group, head), PROMPTS,
             logprob_tol=0.3 if kind == "fp8" else 0.05)


def test_fp8_w8a8_equals_its_reference():
    from tessera.quant.fp8 import w8a8_linear, w8a8_linear_ref, w8a8_supported
    if not w8a8_supported(torch.device("cuda")):
        pytest.skip("fp8 x fp8 needs compute capability 8.9+")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 1024, generator=g) * 0.02
    x = torch.randn(37, 1024, generator=g).to("cuda", torch.bfloat16)
    qw = quantize("fp8", w)
    qw = qw._replace(data=qw.data.cuda(), scale=qw.scale.cuda())
    bias = torch.randn(512, generator=g).to("cuda", torch.bfloat16)
    got, want = w8a8_linear(x, qw, bias), w8a8_linear_ref(x, qw, bias)
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_a_gguf_q8_0_head_read_as_it_is_equals_hf():
    """A tiny llama GGUF (tied: its Q8_0 token_embd is the head) on the GPU keeps the head
    int8 in groups of 32 (its exact values, through the quantized kernels) and equals HF
    on the same dequantized weights in bf16."""
    import tempfile

    import numpy as np
    import transformers

    from tests.models import test_gguf_loader as g
    hf_weights, tensors = g._tiny_model("llama", np.random.default_rng(0), with_bias=False)
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/tiny.gguf"
        g._write_gguf(path, "llama", tensors)
        llm = LLM(path, skip_tokenizer_init=True, dtype="bfloat16", device="cuda",
                  num_blocks=256, max_num_batched_tokens=32)
    head = llm.engine.core.executor.worker.runner.model.lm_head
    assert head.weight.dtype == torch.int8 and head.method.group_size == 32
    config = transformers.LlamaConfig(
        vocab_size=g.VOCAB, hidden_size=g.HIDDEN, intermediate_size=g.FFN,
        num_hidden_layers=g.N_LAYER, num_attention_heads=g.N_HEAD,
        num_key_value_heads=g.N_KV, head_dim=g.HEAD_DIM, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(config)
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in hf_weights.items()}, strict=False)
    _compare(llm, hf.to("cuda", torch.bfloat16).eval(), PROMPTS)
