"""The int4 decode GEMV in CUDA (kernels/int4_gemv.py) against the PyTorch references and
the Triton skinny GEMM: plain, bias, gated, finishing a pending norm and leaving one, at
1-8 rows, bf16 and fp16 x, float16 and float32 scales, groups of 128 and 256, one and two
tiles a block, q/k/v with rotary and the KV-cache write (a cache in the model's dtype or
fp8), under CUDA graph capture; each GPU test with a block a tile and with persistent
blocks (at most 3 here, so that each takes several tiles, some one more than others).
GPU tests are marked gpu (NVRTC compiles the kernel there); on the CPU: the config rule and
the reasons a product stays with Triton."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import int4_gemv as module
from tessera.kernels.int4_gemv import (Int4Config, int4_gemv, int4_gemv_add_norm,
                                       int4_gemv_qkv_rope, pick_config, rope_why_not, why_not)
from tessera.kernels.int4_gemv_options import defines, step_columns
from tessera.kernels.int4_gemv_source import SOURCE
from tessera.kernels.norm_epilogue import pending_norm_ref
from tessera.kernels.reference import rms_norm_ref
from tessera.kernels.skinny_config import MAX_ROWS
from tessera.kernels.skinny_gemm import skinny_gemm, skinny_gemm_ref
from tessera.quant.formats import quantize
from tests.kernels.test_skinny_qkv_rope import qkv_case, unfused

GPU = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}
EPS = 1e-5


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("gpu"):
        metafunc.parametrize("tiling", ["tile_a_block", "persistent"], indirect=True)


@pytest.fixture(autouse=True)
def tiling(request, monkeypatch):
    """GPU tests: a block a tile, or persistent blocks, at most 3 (taking several tiles)."""
    if getattr(request, "param", None) == "persistent":
        monkeypatch.setattr(module, "PERSISTENT", True)
        monkeypatch.setattr(module, "PERSISTENT_GRID", 3)
    return getattr(request, "param", None)


def rand(*shape, dtype, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(device=DEVICE, dtype=dtype)


def weight(n, k, dtype, group=128, scale_dtype=None, seed=1):
    return quantize("int4", rand(n, k, dtype=dtype, seed=seed, scale=k ** -0.5), group,
                    scale_dtype)


def close(got, ref, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    return torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol)


def test_config_rule():
    # the 8B's products: 8 warps, two steps in flight (four for gate/up), two blocks an SM
    assert pick_config(4096, 4096, False) == Int4Config(1, 8, 2, 2)
    assert pick_config(14336, 4096, True) == Int4Config(1, 8, 4, 2)
    assert pick_config(4096, 14336, False) == Int4Config(1, 8, 2, 2)  # 112 steps, 14 a warp
    assert pick_config(64, 384, False) == Int4Config(1, 1, 2, 2)  # 3 steps: no even split >= 2
    module.CONFIG_OVERRIDES[("int4", 64, 384, False)] = Int4Config(2, 1, 1)
    module.CONFIG_OVERRIDES[("int4", 4096, 4096, False)] = (1, 8, 4, 2)  # a --variant literal
    try:
        assert pick_config(64, 384, False) == Int4Config(2, 1, 1)
        assert pick_config(4096, 4096, False).unroll == 4
    finally:
        module.CONFIG_OVERRIDES.clear()


def test_variants_name_every_mode():
    opts = defines(bf16=True, scale_kind=2, k=4096, group=128, tiles=1, warps=8, unroll=4,
                   gated=True, norm_in=True, norm_out=False, has_bias=False, pdl=True)
    assert "-DK_DIM=4096" in opts and "-DGATED=1" in opts and "-DNORM_OUT=0" in opts
    assert "int4_gemv" in SOURCE and "griddepcontrol.wait" in SOURCE


def test_a_rows_bytes_follow_its_format():
    # two columns a byte for int4, one for the 8-bit kinds (W's rows are addressed by it)
    def option(kind):
        return [o for o in defines(bf16=True, scale_kind=2, k=1024, group=128, tiles=1,
                                   warps=8, unroll=2, gated=False, norm_in=False,
                                   norm_out=False, has_bias=False, pdl=True, kind=kind)
                if o.startswith("-DROW_BYTES=")]
    assert option("int4") == ["-DROW_BYTES=512"]
    assert option("int8") == option("fp8") == ["-DROW_BYTES=1024"]
    # a step: 4 lanes x 16 bytes of a row (the source's STEP_COLS: 128 / 64 columns)
    assert [step_columns(kind) for kind in ("int4", "int8", "fp8")] == [128, 64, 64]


def test_products_it_does_not_take_say_why(monkeypatch):
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    qw = quantize("int4", torch.randn(64, 256), 128)
    assert why_not(x, torch.randn(64, 256)) == "not a weight of ['int4']"
    assert why_not(x, quantize("int8", torch.randn(64, 256))) == "not a weight of ['int4']"
    if DEVICE == "cpu":
        assert why_not(x, qw) == "not an NVIDIA GPU"
    monkeypatch.setattr(module, "ENABLED", False)
    assert "off" in why_not(x, qw)


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("group,scale_dtype", [(128, None), (256, torch.float32)])
def test_plain_and_bias_match_the_reference(dtype, rows, group, scale_dtype):
    n, k = 96, 1024
    x, qw = rand(rows, k, dtype=dtype), weight(n, k, dtype, group, scale_dtype)
    assert why_not(x, qw) is None
    b = rand(n, dtype=dtype, seed=2)
    for bias in (None, b):
        got = int4_gemv(x, qw, bias)
        assert close(got, skinny_gemm_ref(x, qw, bias), dtype)
        assert close(got, skinny_gemm(x, qw, bias), dtype)


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cfg", [Int4Config(1, 4, 2), Int4Config(2, 2, 4), Int4Config(1, 8, 1)])
def test_configs_give_the_same_product(dtype, cfg):
    n, k, rows = 128, 2048, 2
    x, qw = rand(rows, k, dtype=dtype), weight(n, k, dtype)
    module.CONFIG_OVERRIDES[("int4", n, k, False)] = cfg
    try:
        assert close(int4_gemv(x, qw), skinny_gemm_ref(x, qw), dtype)
    finally:
        module.CONFIG_OVERRIDES.clear()


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 5])
def test_gated(dtype, rows):
    k = 1024
    x, qw = rand(rows, k, dtype=dtype), weight(2 * 80, k, dtype)
    got = int4_gemv(x, qw, gated=True)
    assert got.shape == (rows, 80)
    assert close(got, skinny_gemm_ref(x, qw, None, True), dtype)


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gated_at_the_8bs_depth(dtype, tiling):
    """K 4096 gated: 4 steps a warp, all in flight (the 8B's gate/up), 5 tiles; persistent:
    on 3 blocks, the next tile's 4 steps loaded while the last one finishes."""
    k, rows = 4096, 2
    x, qw = rand(rows, k, dtype=dtype), weight(2 * 80, k, dtype)
    cfg = pick_config(80, k, True)
    assert (cfg.warps, cfg.unroll) == (8, 4)
    assert (module._persistent_blocks(x, cfg, k, "int4", 5) == 3) == (tiling == "persistent")
    assert close(int4_gemv(x, qw, gated=True), skinny_gemm_ref(x, qw, None, True), dtype)


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gated", [False, True])
def test_pending_norm_finished(dtype, gated):
    rows, k = 3, 1024
    s = rand(rows, k, dtype=dtype, seed=5, scale=3.0)
    g = rand(k, dtype=dtype, seed=4, scale=0.1, shift=1.0)
    pending = pending_norm_ref(s, g, 32, MAX_ROWS)
    qw = weight(160 if gated else 80, k, dtype)
    got = int4_gemv(pending.scaled, qw, gated=gated, norm_parts=pending.parts, eps=EPS)
    ref = skinny_gemm_ref(rms_norm_ref(s, g, EPS), qw, None, gated)
    assert close(got, ref, dtype, scale=2.0)


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,bias", [(1, False), (8, True)])
def test_add_norm_leaves_what_the_reference_does(dtype, rows, bias):
    n, k = 96, 1024
    x, qw = rand(rows, k, dtype=dtype), weight(n, k, dtype)
    b = rand(n, dtype=dtype, seed=2) if bias else None
    residual = rand(rows, n, dtype=dtype, seed=3)
    g = rand(n, dtype=dtype, seed=4, scale=0.1, shift=1.0)
    got = int4_gemv_add_norm(x, qw, b, residual, g)
    ref = pending_norm_ref(residual + skinny_gemm_ref(x, qw, b), g, 16, MAX_ROWS)
    assert close(got.residual, ref.residual, dtype)
    assert close(got.scaled, ref.scaled, dtype)
    assert got.parts.shape == ref.parts.shape  # one row of sums a 16-row block
    assert torch.allclose(got.parts, ref.parts, rtol=TOL[dtype] * 2, atol=TOL[dtype])
    assert torch.all(got.parts[:, rows:] == 0)


def test_persistent_blocks_are_taken_where_the_steps_fill_the_slots(monkeypatch):
    x = torch.zeros(1, 1024)
    monkeypatch.setattr(module, "PERSISTENT", True)
    cfg = pick_config(96, 1024, False)
    assert cfg.min_blocks == 1  # one block an SM: its registers hold the next tile's loads
    assert module._persistent_blocks(x, cfg, 1024, "int4", 6) == 6  # the SMs hold more
    monkeypatch.setattr(module, "PERSISTENT_GRID", 4)
    assert module._persistent_blocks(x, cfg, 1024, "int4", 6) == 4
    uneven = Int4Config(1, 1, 3)  # 8 steps a warp in slots of 3
    assert module._persistent_blocks(x, uneven, 1024, "int4", 6) == 0
    monkeypatch.setattr(module, "PERSISTENT", False)
    assert module._persistent_blocks(x, cfg, 1024, "int4", 6) == 0


@GPU
def test_under_cuda_graph_capture():
    dtype, rows, k, n = torch.bfloat16, 1, 2048, 256
    x, qw = rand(rows, k, dtype=dtype), weight(n, k, dtype)
    y = int4_gemv(x, qw)  # compiled and loaded before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = int4_gemv(x, qw)
    x.copy_(rand(rows, k, dtype=dtype, seed=9))
    graph.replay()
    torch.cuda.synchronize()
    assert close(y, skinny_gemm_ref(x, qw), dtype)


@GPU
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,head_dim,rows,bias", [((4, 2), 32, 3, False),
                                                      ((8, 2), 64, 5, True),
                                                      ((4, 1), 128, 1, False)])
@pytest.mark.parametrize("cache_dtype", ["model", "fp8"])
@pytest.mark.parametrize("pending", [False, True])
def test_qkv_rope_matches_the_unfused_ops(dtype, heads, head_dim, rows, bias, cache_dtype,
                                          pending):
    k = 512
    w, b, rope, positions, slots, kv = qkv_case(rows, k, *heads, head_dim, dtype, bias)
    if cache_dtype == "fp8":
        kv = kv.to(torch.float8_e4m3fn)
    qw = quantize("int4", w, 128)
    x = rand(rows, k, dtype=dtype, seed=5, scale=3.0 if pending else 1.0)
    parts, normed = None, x
    if pending:  # x is a pending norm's g * s, its 1/rms applied in the epilogue
        g = rand(k, dtype=dtype, seed=4, scale=0.1, shift=1.0)
        norm = pending_norm_ref(x, g, 32, MAX_ROWS)
        x, parts, normed = norm.scaled, norm.parts, rms_norm_ref(x, g, EPS)
    assert rope_why_not(x, qw, positions, rope.cos_sin, kv, slots, *heads) is None
    ref_kv = kv.clone()
    q = int4_gemv_qkv_rope(x, qw, b, positions, rope.cos_sin, kv, slots, *heads,
                           norm_parts=parts, eps=EPS)
    ref_q = unfused(normed, qw, b, positions, rope.cos_sin, ref_kv, slots, *heads)
    scale = 2.0 if pending else 1.0
    assert close(q, ref_q, dtype, scale)
    if cache_dtype == "fp8":  # one e4m3 step (2^-3 relative) apart at most
        assert torch.allclose(kv.float(), ref_kv.float(), rtol=0.13, atol=2e-2)
        assert (kv.float() != ref_kv.float()).float().mean() < 0.05
    else:
        assert close(kv, ref_kv, dtype, scale)


def test_rope_refusals_name_the_reason():
    if DEVICE == "cpu":
        x = torch.randn(1, 256, dtype=torch.bfloat16)
        qw = quantize("int4", torch.randn(96 * 4, 256), 128)
        kv = torch.zeros(2, 2, 4, 1, 96)
        assert rope_why_not(x, qw, torch.zeros(1, dtype=torch.long), torch.zeros(8, 96), kv,
                            torch.zeros(1, dtype=torch.long), 2, 1) == "not an NVIDIA GPU"


@GPU
def test_first_use_inside_cuda_graph_capture():
    """A variant compiled and loaded while a graph is captured (the engine's decode graphs
    are the first to run a product of a few rows)."""
    dtype, rows, k, n = torch.bfloat16, 2, 640, 48  # a K no other test compiles
    x, qw = rand(rows, k, dtype=dtype), weight(n, k, dtype)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = int4_gemv(x, qw)
    graph.replay()
    torch.cuda.synchronize()
    assert close(y, skinny_gemm_ref(x, qw), dtype)


@GPU
@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["plain", "bias", "gated", "norm_in", "add_norm", "rope"])
def test_byte_formats_behind_their_knob(monkeypatch, kind, dtype, mode):
    """int8 and fp8 per output row (ENABLED_KINDS): each mode against the references."""
    monkeypatch.setattr(module, "ENABLED_KINDS", {"int4", "int8", "fp8"})
    rows, k = 3, 512
    x = rand(rows, k, dtype=dtype)
    if mode == "rope":
        w, b, rope, positions, slots, kv = qkv_case(rows, k, 4, 2, 64, dtype, True)
        qw = quantize(kind, w)
        ref_kv = kv.clone()
        q = int4_gemv_qkv_rope(x, qw, b, positions, rope.cos_sin, kv, slots, 4, 2)
        ref_q = unfused(x, qw, b, positions, rope.cos_sin, ref_kv, slots, 4, 2)
        assert close(q, ref_q, dtype) and close(kv, ref_kv, dtype)
        return
    gated = mode == "gated"
    qw = quantize(kind, rand(160 if gated else 80, k, dtype=dtype, seed=1, scale=k ** -0.5))
    assert why_not(x, qw, gated) is None
    if mode == "add_norm":
        residual = rand(rows, 80, dtype=dtype, seed=3)
        g = rand(80, dtype=dtype, seed=4, scale=0.1, shift=1.0)
        got = int4_gemv_add_norm(x, qw, None, residual, g)
        ref = pending_norm_ref(residual + skinny_gemm_ref(x, qw), g, 16, MAX_ROWS)
        assert close(got.residual, ref.residual, dtype) and close(got.scaled, ref.scaled, dtype)
        assert torch.allclose(got.parts, ref.parts, rtol=TOL[dtype] * 2, atol=TOL[dtype])
        return
    bias = rand(80, dtype=dtype, seed=2) if mode == "bias" else None
    if mode == "norm_in":
        s = rand(rows, k, dtype=dtype, seed=5, scale=3.0)
        gw = rand(k, dtype=dtype, seed=4, scale=0.1, shift=1.0)
        pending = pending_norm_ref(s, gw, 32, MAX_ROWS)
        got = int4_gemv(pending.scaled, qw, norm_parts=pending.parts, eps=EPS)
        assert close(got, skinny_gemm_ref(rms_norm_ref(s, gw, EPS), qw), dtype, scale=2.0)
        return
    got = int4_gemv(x, qw, bias, gated=gated)
    assert close(got, skinny_gemm_ref(x, qw, bias, gated), dtype)


def test_linear_method_routes_each_product(monkeypatch):
    """quant/quantized.py's routing: each decode product goes to its int4_gemv entry with
    the right arguments where the matching why_not says None, else to the inherited
    (Triton) path. The kernel module is a recorder here: the kernels' own GPU tests above
    check what they compute."""
    from tessera.config import KernelConfig
    from tessera.layers.ops import ReferenceOps
    from tessera.quant.quantized import QuantizedLinearMethod
    from tessera.quant.unquantized import UnquantizedLinearMethod

    calls = []

    class Recorder:
        refuse = set()

        def why_not(self, x, w, gated=False):
            calls.append(("why_not", gated))
            return "no" if ("gated" if gated else "plain") in self.refuse else None

        def rope_why_not(self, x, w, *rope):
            calls.append(("rope_why_not", rope[-2:]))
            return "no" if "rope" in self.refuse else None

        def __getattr__(self, name):  # int4_gemv, int4_gemv_add_norm, int4_gemv_qkv_rope
            return lambda *a, **k: calls.append((name, k.get("gated", False))) or name

    method = QuantizedLinearMethod("int4", 128, KernelConfig(), ReferenceOps(),
                                   torch.device("cpu"))
    method.int4_gemv = Recorder()
    monkeypatch.setattr(method, "skinny", lambda layer, x: True)
    for name in ("apply", "apply_gated", "apply_qkv_rope", "apply_add_norm"):
        monkeypatch.setattr(UnquantizedLinearMethod, name,
                            lambda self, *a, _n=name, **k: calls.append(("triton", _n)) or "triton")
    layer = torch.nn.Module()
    layer.weight = layer.weight_scale = layer.weight_offset = torch.zeros(1)
    layer.bias = None
    x = torch.zeros(1, 8)
    assert method.apply(layer, x) == "int4_gemv"
    assert method.apply_gated(layer, x) == "int4_gemv" and ("int4_gemv", True) in calls
    assert ("why_not", True) in calls
    rope = (None, None, None, None, 4, 2)
    assert method.apply_qkv_rope(layer, x, *rope) == "int4_gemv_qkv_rope"
    assert ("rope_why_not", (4, 2)) in calls
    assert method.apply_add_norm(layer, x, None, None) == "int4_gemv_add_norm"
    Recorder.refuse = {"plain", "gated", "rope"}
    calls.clear()
    assert method.apply(layer, x) == "triton" and method.apply_gated(layer, x) == "triton"
    assert method.apply_qkv_rope(layer, x, *rope) == "triton"
    assert method.apply_add_norm(layer, x, None, None) == "triton"
    assert [c for c in calls if c[0] == "triton"] == [
        ("triton", "apply"), ("triton", "apply_gated"), ("triton", "apply_qkv_rope"),
        ("triton", "apply_add_norm")]


def test_a_pending_norms_parts_are_checked_before_any_launch():
    # a wrong parts tensor is refused by name on every entry that takes one (the kernel
    # would read past it), not handed to the GPU
    from tessera.kernels.norm_epilogue import checked_parts
    bad = torch.zeros(4, MAX_ROWS + 1)
    with pytest.raises(ValueError, match="pending norm's parts"):
        checked_parts(bad)
    with pytest.raises(ValueError, match="pending norm's parts"):
        checked_parts(torch.zeros(4, MAX_ROWS, dtype=torch.float16))
    good = torch.zeros(MAX_ROWS, 4).t()
    assert checked_parts(good).is_contiguous() and checked_parts(None) is None
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    qw = quantize("int4", torch.randn(64, 256), 128)
    with pytest.raises(ValueError, match="pending norm's parts"):
        int4_gemv(x, qw, norm_parts=bad)
