"""The skinny GEMM (decode steps of <= 16 rows) against its PyTorch reference, plain, with a
bias and gated (SiLU-and-mul in the epilogue); bad shapes refused; and tiny models run
through it (forced on, so the CPU interpreter runs it) still equal HF transformers'
greedy tokens. CPU: interpreter in float32/float16; GPU: bfloat16 too."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tessera import LLM, SamplingParams
from tessera.config import KernelConfig
from tessera.kernels import skinny_config
from tessera.kernels import skinny_gemm as skinny_module
from tessera.kernels.skinny_gemm import (SkinnyConfig, skinny_gemm, skinny_gemm_add_norm,
                                         skinny_gemm_ref, skinny_qkv_rope)
from tessera.layers.context import building, make_context
from tessera.models import llama as llama_module
from tests.conftest import hf_greedy, make_tiny_checkpoint

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SMALL = SkinnyConfig(block_n=32, block_k=64, num_warps=4, num_stages=2)


def rand(*shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def dense_method(**kernel):
    """The dense linear method a model built with these kernel switches would use."""
    return make_context(KernelConfig(**kernel), torch.device(DEVICE)).dense_method


def uses_skinny(method, x, w):
    return method.skinny(SimpleNamespace(weight=w, bias=None), x)  # a layer, as read


def close(got, ref, dtype):
    tol = TOL[dtype]
    return torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n,k", [(1, 96, 64), (3, 100, 200), (16, 64, 256), (2, 1, 64)])
@pytest.mark.parametrize("config", [None, SMALL])
@pytest.mark.parametrize("min_block_m", [16, 8])
def test_skinny_gemm_matches_reference(dtype, rows, n, k, config, min_block_m, monkeypatch):
    monkeypatch.setattr(skinny_module, "MIN_BLOCK_M", min_block_m)
    x = rand(rows, k, dtype=dtype)
    w = rand(n, k, dtype=dtype, seed=1, scale=k ** -0.5)
    b = rand(n, dtype=dtype, seed=2)
    assert close(skinny_gemm(x, w, config=config), skinny_gemm_ref(x, w), dtype)
    assert close(skinny_gemm(x, w, b, config=config), skinny_gemm_ref(x, w, b), dtype)
    w2 = rand(2 * n, k, dtype=dtype, seed=3, scale=k ** -0.5)
    got = skinny_gemm(x, w2, gated=True, config=config)
    assert got.shape == (rows, n)
    assert close(got, skinny_gemm_ref(x, w2, gated=True), dtype)


def test_config_overrides_apply_to_two_byte_weights_only(monkeypatch):
    deep = SkinnyConfig(block_n=32, block_k=128, num_warps=4, num_stages=8)
    monkeypatch.setattr(skinny_config, "CONFIG_OVERRIDES", {(4096, 4096, False): deep})
    assert skinny_config.pick_config(4096, 4096) == deep
    assert skinny_config.pick_config(4096, 4096, gated=True) != deep
    assert skinny_config.pick_config(4096, 4096, itemsize=4) != deep


def test_skinny_gemm_refuses_bad_shapes():
    x = rand(17, 64, dtype=torch.float32)
    w = rand(32, 64, dtype=torch.float32)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_gemm(x, w)
    with pytest.raises(ValueError, match="columns"):
        skinny_gemm(x[:2, :48], w)
    with pytest.raises(ValueError, match="gated"):
        skinny_gemm(x[:2], w[:31], gated=True)


def test_linear_picks_the_skinny_kernel_only_for_few_rows():
    w = rand(32, 64, dtype=torch.float32)
    always = dense_method(skinny_gemm="always")
    assert uses_skinny(always, rand(16, 64, dtype=torch.float32), w)
    assert not uses_skinny(always, rand(17, 64, dtype=torch.float32), w)
    assert not uses_skinny(dense_method(skinny_gemm="off"), rand(1, 64, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="mode"):
        KernelConfig(skinny_gemm="fast")


# each case ~16 s under the interpreter: three run in `make test`, the other three (modes
# the three cover in part) are `extended` (`pytest -m extended`; results in RESULTS.md)
EXTENDED = pytest.mark.extended


@pytest.mark.parametrize("arch,norm_fusion,stages,min_block_m", [
    ("llama", True, 1, 16),
    pytest.param("qwen2", True, 1, 16, marks=EXTENDED),  # qwen2: q/k/v biases, tied head
    ("llama", True, 2, 16),  # the layers run as two pipeline stages' shares: 1 + 2
    pytest.param("llama", False, 1, 16, marks=EXTENDED),
    pytest.param("llama", True, 1, 8, marks=EXTENDED),
    ("qwen2", True, 2, 1)])  # x's rows padded to 8 (or 1, 2, 4)
def test_models_through_the_skinny_gemm_equal_hf(arch, norm_fusion, stages, min_block_m,
                                                 tmp_path, monkeypatch):
    """Decode steps through the skinny kernels, with the norms split across the
    projections (kernels/norm_epilogue.py) or as kernels of their own; with two stages the
    second starts from the first's (hidden, residual), as under pipeline parallelism; x's
    rows padded to 16 for the MMA, or to fewer (skinny_gemm.MIN_BLOCK_M)."""
    monkeypatch.setattr(skinny_module, "MIN_BLOCK_M", min_block_m)
    hf_model = make_tiny_checkpoint(arch, str(tmp_path))
    calls = {"plain": 0, "gated": 0, "qkv_rope": 0, "add_norm": 0, "pending": 0,
             "rope_pending": 0}

    def counted(x, w, bias=None, gated=False, **norm):
        calls["gated" if gated else "plain"] += 1
        calls["pending"] += norm.get("norm_parts") is not None
        return skinny_gemm(x, w, bias, gated, **norm)

    def counted_rope(*args, **norm):
        calls["qkv_rope"] += 1
        calls["rope_pending"] += norm.get("norm_parts") is not None
        return skinny_qkv_rope(*args, **norm)

    def counted_add_norm(*args, **options):
        calls["add_norm"] += 1
        return skinny_gemm_add_norm(*args, **options)

    run_layers = llama_module.LlamaModel.run_layers

    def two_stages(self, layers, positions, hidden, residual, kv_caches, meta):
        hidden, residual = run_layers(self, layers[:1], positions, hidden, residual,
                                      kv_caches[:1], meta)
        return run_layers(self, layers[1:], positions, hidden, residual, kv_caches[1:], meta)
    monkeypatch.setattr(skinny_module, "skinny_gemm", counted)
    monkeypatch.setattr(skinny_module, "skinny_gemm_add_norm", counted_add_norm)
    monkeypatch.setattr(skinny_module, "skinny_qkv_rope", counted_rope)
    if stages == 2:
        monkeypatch.setattr(llama_module.LlamaModel, "run_layers", two_stages)
    prompts = [[5, 17, 99, 3], list(range(20, 33)), [300, 7, 7, 150, 42]]
    llm = LLM(str(tmp_path), skip_tokenizer_init=True, num_blocks=64, block_size=8,
              device=DEVICE, dtype="float32", skinny_gemm="always", norm_fusion=norm_fusion,
              kernel_backend="triton")  # as on CUDA: decode steps fuse q/k/v
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    for p, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf_model, p, 8)[0]
    assert calls["plain"] > 0 and calls["gated"] > 0 and calls["qkv_rope"] > 0
    if not norm_fusion:
        assert calls["add_norm"] == calls["pending"] == calls["rope_pending"] == 0
        return
    # per fused step of the 3 layers: o leaves a norm pending in every layer, down in every
    # layer but each stage's last; all gate/ups finish one, and the q/k/vs after a down
    layers = 3
    steps = calls["pending"] // layers
    assert steps > 0 and calls["pending"] == layers * steps
    assert calls["add_norm"] == (2 * layers - stages) * steps
    assert calls["rope_pending"] == (layers - stages) * steps


def test_rows_padded_for_the_mma():
    """A dense W pads x's rows to 16, a quantized one to 8 (measured: skinny_gemm's
    MIN_BLOCK_M / QUANT_MIN_BLOCK_M); more rows to their power of two, at most MAX_ROWS."""
    rows = skinny_module.block_rows
    assert [rows(m) for m in (1, 8, 9, 16)] == [16, 16, 16, 16]
    assert [rows(m, quantized=True) for m in (1, 5, 8, 9, 16)] == [8, 8, 8, 16, 16]


@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (28672, 4096), (128256, 4096),
                                 (96, 64)])
def test_prefetch_stays_within_its_budget(n, k):
    from tessera.kernels.l2_prefetch import PREFETCH_BYTES, prefetch_columns
    w = torch.empty(n, k, dtype=torch.bfloat16, device="meta")
    cols = prefetch_columns(w)
    assert cols == 0 or (cols >= 64 and cols & (cols - 1) == 0)  # whole 128-byte lines
    assert cols * n * 2 <= PREFETCH_BYTES and cols < 2 * k
    assert cols > 0 or 64 * n * 2 > PREFETCH_BYTES  # none only when one line per row is too much


def test_edge_cases_match_reference():
    x = rand(2, 8192, dtype=torch.float32)  # the default config of long rows (K >= 8192)
    w = rand(64, 8192, dtype=torch.float32, seed=1, scale=8192 ** -0.5)
    assert close(skinny_gemm(x, w), skinny_gemm_ref(x, w), torch.float32)
    b = rand(128, dtype=torch.float32, seed=2)[::2]  # a strided bias
    assert close(skinny_gemm(x[:, :64], w[:, :64], b), skinny_gemm_ref(x[:, :64], w[:, :64], b),
                 torch.float32)
    empty_k = torch.zeros(64, 0, device=DEVICE)
    assert torch.equal(skinny_gemm(x[:, :0], empty_k, b), b.expand(2, 64))  # K = 0: the bias
    assert skinny_gemm(x, w[:0]).shape == (2, 0)


def test_auto_mode_keeps_the_kernel_to_half_precision_on_cuda():
    w = rand(32, 64, dtype=torch.float16)
    auto = dense_method()
    assert not uses_skinny(auto, rand(2, 64, dtype=torch.float32), w)  # dtypes differ
    assert not uses_skinny(auto, rand(2, 64, dtype=torch.float32), w.float())  # fp32: cuBLAS
    if DEVICE == "cpu":
        assert not uses_skinny(auto, rand(2, 64, dtype=torch.float16), w)  # CPU: F.linear


def test_forward_gated_fuses_only_silu(monkeypatch):
    from tessera.layers.activation import SiluAndMul
    from tessera.layers.linear import MergedColumnParallelLinear
    with building(make_context(KernelConfig(skinny_gemm="always"), torch.device(DEVICE))):
        layer = MergedColumnParallelLinear(64, [48, 48]).to(DEVICE)
    layer.weight.data = rand(96, 64, dtype=torch.float32, scale=0.125)
    x = rand(3, 64, dtype=torch.float32, seed=1)
    fused = layer.forward_gated(x, SiluAndMul())
    relu_gated = layer.forward_gated(x, lambda h: torch.relu(h[:, :48]) * h[:, 48:])
    ref = skinny_gemm_ref(x, layer.weight, gated=True)
    assert close(fused, ref, torch.float32)
    h = x @ layer.weight.T
    assert close(relu_gated, torch.relu(h[:, :48]) * h[:, 48:], torch.float32)  # not SiLU


@pytest.mark.gpu
def test_pdl_on_and_off_give_the_same_tokens(tmp_path):
    """Every kernel waits for the one before it under PDL: bf16 greedy tokens are
    identical with it on and off (decode graphs captured each way)."""
    make_tiny_checkpoint("llama", str(tmp_path))
    prompts = [[5, 17, 99, 3], list(range(20, 45)), [300, 7, 7, 150, 42]]
    tokens = []
    for on in (False, True):
        llm = LLM(str(tmp_path), skip_tokenizer_init=True, num_blocks=64, block_size=8,
                  device="cuda", dtype="bfloat16", pdl=on)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
        tokens.append([o.outputs[0].token_ids for o in outs])
        del llm
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("k", [64, 4096, 8192, 14336, 28672])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_default_configs_fit_hopper_shared_memory(k, gated, itemsize):
    """The H100 sweep's largest working config held 120 KB; Hopper has 227 KB a block.
    (A config over it fails at launch, e.g. a 70B shape's gate/up with K = 8192.)"""
    from tessera.kernels.skinny_config import pick_config, shared_memory_bytes
    cfg = pick_config(4096, k, gated, itemsize)
    assert shared_memory_bytes(cfg, gated, itemsize) <= 160 * 1024
