"""Quantized weight formats (quant/formats.py), the policy (quant_policy.py), checkpoint
pieces (models/weight_utils.py) and GGUF blocks kept quantized (loader/gguf_quant.py):
errors bounded by the format's step, layouts as documented, slices that keep groups
whole, policy precedence and its file's round trip, clear errors for bad input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tessera.config import QuantConfig
from tessera.models.checkpoint_quant import gguf_spec, tessera_prefix
from tessera.models.weight_utils import dense, narrow, shape_of
from tessera.quant.formats import (QuantizedWeight, dequantize, pack_int4, quant_linear_ref,
                                   quantize, quantize_int4, unpack_int4)
from tessera.quant_policy import (HEAD, QuantPolicy, check_patterns, load_policy_file,
                                  parse_spec, policy_file_text, resolve_policy)


def weights(n=48, k=256, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def test_pack_int4_layout():
    q = torch.tensor([[1, 2, 15, 0]])
    assert pack_int4(q).tolist() == [[1 | 2 << 4, 15]]  # column 2j low, 2j + 1 high
    q = torch.randint(0, 16, (5, 64))
    assert torch.equal(unpack_int4(pack_int4(q)), q.to(torch.uint8))


@pytest.mark.parametrize("kind,group", [("int8", 0), ("int8", 32), ("fp8", 0), ("int4", 32),
                                        ("int4", 128)])
def test_quantize_error_is_within_the_step(kind, group):
    """int4 fitted from its minimum and maximum ("minmax"): every weight within half a step
    (the least-squares fit may clip a group's extremes: tests/unit/test_int4_fit.py)."""
    w = weights()
    if kind == "int4":
        qw = quantize_int4(w, group, torch.float32, fit="minmax")
    else:
        qw = quantize(kind, w, group, torch.float32)
    assert shape_of(qw) == tuple(w.shape) and qw.kind == kind
    err = (dequantize(qw) - w).abs()
    if kind == "fp8":  # 3 mantissa bits: half an ulp of e4m3 relative to the value
        assert (err <= w.abs() * 2 ** -4 + qw.scale[:, None] * 2 ** -9).all()
        return
    if group:  # half a step of each group's scale
        step = qw.scale.repeat_interleave(group, dim=1)
    else:
        step = qw.scale[:, None].expand_as(w)
    assert (err <= step * 0.5 + 1e-7).all()
    assert err.max() > 0  # something was rounded


def test_int4_offset_is_the_group_minimum_and_zero_rows_survive():
    w = weights(4, 64)
    w[1] = 0.0
    qw = quantize_int4(w, 32, torch.float32, fit="minmax")
    assert torch.allclose(qw.offset, w.reshape(4, 2, 32).amin(-1))
    assert torch.equal(dequantize(qw)[1], torch.zeros(64))
    assert torch.equal(dequantize(quantize("int8", w))[1], torch.zeros(64))


def test_group_must_divide_the_input_size():
    with pytest.raises(ValueError, match="multiple of the group size 128"):
        quantize("int4", weights(4, 96), 128)


def test_linear_ref_is_the_dequantized_product():
    w, x = weights(), torch.randn(3, 256)
    qw = quantize("int8", w)
    expect = x @ dequantize(qw).t()
    assert torch.allclose(quant_linear_ref(x, qw), expect, atol=1e-5)


@pytest.mark.parametrize("kind,group", [("int8", 0), ("int4", 32), ("int8", 32)])
def test_narrow_keeps_rows_and_whole_groups(kind, group):
    w = weights(16, 128)
    qw = quantize(kind, w, group, torch.float32)
    full = dequantize(qw)
    assert torch.equal(dense(narrow(qw, 0, 4, 8)), full[4:12])
    assert torch.equal(dense(narrow(qw, 1, 64, 64)), full[:, 64:])
    if group:
        with pytest.raises(ValueError, match="cuts the checkpoint's quantization groups"):
            narrow(qw, 1, 16, 64)


def test_gguf_blocks_equal_ggufs_dequantize():
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

    from tessera.models.loader.gguf_quant import gguf_quantized, permute_rows

    w = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    for qtype, kind in ((Q.Q8_0, "int8"), (Q.Q4_0, "int4"), (Q.Q4_1, "int4")):
        raw = gguf_quantize(w, qtype)
        tensor = type("T", (), {"data": raw, "tensor_type": qtype})()
        qw = gguf_quantized(tensor)
        assert (qw.kind, qw.group_size, qw.scale.dtype) == (kind, 32, torch.float16)
        expect = gguf_dequantize(raw, qtype)
        assert np.array_equal(dequantize(qw).numpy(), expect), qtype
        order = torch.tensor([5, 4, 3, 2, 1, 0])
        assert np.array_equal(dequantize(permute_rows(qw, order)).numpy(), expect[::-1])


def test_gguf_q4_k_blocks_equal_ggufs_dequantize():
    """Q4_K (gguf has no quantizer for it): random blocks of valid fp16 d / dmin and random
    6-bit scales and nibbles, read as int4 in groups of 32, dequantize exactly as gguf does."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize as gguf_dequantize

    from tessera.models.loader.gguf_quant import gguf_quantized

    rng = np.random.default_rng(0)
    rows, nb = 5, 3  # K = 768
    raw = rng.integers(0, 256, (rows, nb, 144), dtype=np.uint8)
    raw[..., 0:2] = (rng.random((rows, nb, 1)) * 0.01).astype(np.float16).view(np.uint8)
    raw[..., 2:4] = (rng.random((rows, nb, 1)) * 0.01).astype(np.float16).view(np.uint8)
    raw = raw.reshape(rows, nb * 144)
    tensor = type("T", (), {"data": raw, "tensor_type": Q.Q4_K})()
    qw = gguf_quantized(tensor)
    assert (qw.kind, qw.group_size, qw.scale.shape, qw.data.shape) == ("int4", 32, (5, 24),
                                                                       (5, 384))
    expect = gguf_dequantize(raw, Q.Q4_K)
    assert expect.shape == (5, 768)
    assert np.array_equal(dequantize(qw).numpy(), expect)


def test_the_loader_reads_every_type_the_metadata_calls_kept():
    from tessera.models.checkpoint_quant import _GGUF_KEPT
    from tessera.models.loader.gguf_quant import KEPT_TYPES
    assert set(KEPT_TYPES) == set(_GGUF_KEPT)


def test_gguf_types_map_to_the_nearest_format():
    assert [gguf_spec(t) for t in ("Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_0", "Q6_K", "F16",
                                   "Q3_K")] == [
        "int4/32", "int4/32", "int8/32", "int4/32", "int8", "int8", "none", "int4/32"]
    assert tessera_prefix("model.layers.2.self_attn.k_proj") == "model.layers.2.self_attn.qkv_proj"
    assert tessera_prefix("model.layers.2.mlp.up_proj") == "model.layers.2.mlp.gate_up_proj"


# -- policy --------------------------------------------------------------------------------
def test_policy_precedence():
    p = QuantPolicy("int8", rules=(("model.layers.0.*", "none"), ("*.down_proj", "int4")),
                    keep=("*.o_proj",), group_size=64,
                    exact=(("model.layers.5.mlp.gate_up_proj", "int4/32"),))
    assert p.spec_for("model.layers.0.mlp.down_proj") == "none"  # first rule wins
    assert p.spec_for("model.layers.1.mlp.down_proj") == "int4/64"
    assert p.spec_for("model.layers.1.self_attn.o_proj") == "none"  # kept
    assert p.spec_for("model.layers.1.mlp.gate") == "none"  # routers always
    assert p.spec_for("model.layers.1.self_attn.qkv_proj") == "int8"
    assert p.specs == {"int8", "none", "int4/64", "int4/32"}
    assert parse_spec("int4/32") == ("int4", 32) and parse_spec("fp8") == ("fp8", 0)


def test_the_lm_head_is_quantized_only_by_its_name():
    wide = QuantPolicy("int8", rules=(("*", "int4"),), group_size=64)
    assert wide.spec_for(HEAD) == "none"  # neither the default nor a glob reaches it
    assert wide.unmatched([HEAD]) == ["*"]  # a glob naming only the head names nothing
    asked = QuantPolicy("none", head="int8")
    assert asked.spec_for(HEAD) == "int8" and asked.quantized
    assert asked.spec_for("model.layers.0.mlp.down_proj") == "none"
    ruled = QuantPolicy("int8", rules=((HEAD, "int4"),), group_size=32)
    assert ruled.spec_for(HEAD) == "int4/32" and ruled.specs == {"int8", "int4/32"}
    assert ruled.unmatched([HEAD]) == [] and ruled.layer_specs == {"int8"}
    # the command line's option over the file's rule, "none" too
    assert dataclasses.replace(ruled, head="fp8").specs == {"int8", "fp8"}
    assert dataclasses.replace(ruled, head="none").specs == {"int8", "none"}
    kept = QuantPolicy("int8", keep=("lm_*",), head="int8")
    assert kept.spec_for(HEAD) == "none" and kept.specs == {"int8", "none"}
    # a pipeline stage without the head still has one in the model
    check_patterns(ruled, ["model.layers.1.self_attn.o_proj"], num_layers=2)
    cli = resolve_policy(QuantConfig(quantization="int4", lm_head_quantization="int8"))
    assert (cli.spec_for(HEAD), cli.spec_for("model.layers.0.mlp.down_proj")) == (
        "int8", "int4/128")
    with pytest.raises(ValueError, match="lm_head_quantization 'int2' is not supported"):
        QuantConfig(lm_head_quantization="int2")


def test_patterns_that_name_no_layer_are_refused():
    names = [f"model.layers.{i}.{m}" for i in (2, 3)  # a pipeline stage's layers
             for m in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj")]
    ok = QuantPolicy("int8", rules=(("model.layers.0.*", "none"),), keep=("*.o_proj",))
    check_patterns(ok, names, num_layers=4)  # layer 0 is on another stage: still a layer
    assert ok.unmatched(names) == ["model.layers.0.*"]
    bad = QuantPolicy("int8", rules=(("model.layers.7.*", "none"),), keep=("*.q_proj",))
    with pytest.raises(ValueError, match=r"'\*\.q_proj', 'model\.layers\.7\.\*' match no "
                                         r"linear layer.*model\.layers\.0\.mlp\.gate_up_proj"):
        check_patterns(bad, names, num_layers=4)


def test_policy_from_the_checkpoint_and_the_command_line():
    info = type("Info", (), {"quant_method": "gguf",
                             "quant_layers": {"model.layers.0.mlp.down_proj": "int4/32"}})()
    native = resolve_policy(QuantConfig(), info, native=True)
    assert native.spec_for("model.layers.0.mlp.down_proj") == "int4/32"
    assert resolve_policy(QuantConfig(), info, native=False).specs == {"none"}  # CPU: expand
    asked = resolve_policy(QuantConfig(quantization="int8"), info, native=True)
    assert asked.spec_for("model.layers.0.mlp.down_proj") == "int8"  # re-quantized
    fp8 = type("Info", (), {"quant_method": "fp8", "quant_layers": {"a.qkv_proj": "fp8"}})()
    assert resolve_policy(QuantConfig(), fp8, native=False).spec_for("a.qkv_proj") == "fp8"
    # a head the checkpoint holds quantized keeps its format, unless asked otherwise
    info.quant_layers[HEAD] = "int8/32"
    assert resolve_policy(QuantConfig(), info, native=True).spec_for(HEAD) == "int8/32"
    assert resolve_policy(QuantConfig(), info, native=True).layer_specs == {"int4/32", "none"}
    assert resolve_policy(QuantConfig(), info, native=False).spec_for(HEAD) == "none"
    assert resolve_policy(QuantConfig(lm_head_quantization="none"), info).spec_for(HEAD) == "none"
    assert resolve_policy(QuantConfig(quantization="int8"), info).spec_for(HEAD) == "none"
    # asked for the kind it is held in, it stays as held (not rounded per row again)
    for asked in (QuantConfig(lm_head_quantization="int8"),
                  QuantConfig(quantization="int4", lm_head_quantization="int8")):
        assert resolve_policy(asked, info, native=True).spec_for(HEAD) == "int8/32"
    assert resolve_policy(QuantConfig(lm_head_quantization="int8"), info,
                          native=False).spec_for(HEAD) == "int8"  # CPU: expanded, then rounded
    other = resolve_policy(QuantConfig(lm_head_quantization="int4"), info)  # another kind:
    assert other.spec_for(HEAD) == "int4/128"  # rounded (this info names no GGUF: group 128)
    assert resolve_policy(QuantConfig(lm_head_quantization="fp8"), info).spec_for(HEAD) == "fp8"


def test_policy_file_round_trip(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_file_text("int8", {"model.layers.0.mlp.down_proj": "none"},
                                     measured={"model.layers.0.mlp.down_proj": 0.5}))
    data = load_policy_file(str(path))
    assert data["quantization"] == "int8"
    assert data["layers"] == [("model.layers.0.mlp.down_proj", "none")]
    policy = resolve_policy(QuantConfig(quantization_policy=str(path)))
    assert policy.spec_for("model.layers.0.mlp.down_proj") == "none"
    assert policy.spec_for("model.layers.1.mlp.down_proj") == "int8"
    cli = resolve_policy(QuantConfig(quantization="fp8", quantization_policy=str(path)))
    assert cli.spec_for("model.layers.1.mlp.down_proj") == "fp8"  # the command line wins


@pytest.mark.parametrize("text,error", [
    ("quantization: int3\n", "'int3' is not a quantization"),
    ("layers:\n  '*.o_proj': int2\n", "layer '\\*.o_proj'"),
    ("quantization: int8\nextra: 1\n", "unknown field"),
    ("[1, 2\n", "does not parse"),
])
def test_bad_policy_files_are_named(tmp_path, text, error):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        resolve_policy(QuantConfig(quantization_policy=str(path)))


def test_missing_policy_file_and_bad_options():
    with pytest.raises(ValueError, match="no such file"):
        resolve_policy(QuantConfig(quantization_policy="/nonexistent/policy.yaml"))
    with pytest.raises(ValueError, match="quantization 'int3' is not supported"):
        QuantConfig(quantization="int3")
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128"):
        QuantConfig(quantization_group_size=100)


def test_quantized_weight_of_lazy_parts_reports_logical_shape():
    qw = QuantizedWeight("int4", torch.zeros(8, 32, dtype=torch.uint8), torch.ones(8, 2),
                         torch.zeros(8, 2), 32)
    assert shape_of(qw) == (8, 64) and qw.in_features == 64 and qw.out_features == 8


def test_fake_quantized_activations_per_token_and_per_group():
    """quant/fp8.py's emulation of W8A8's activations (the accuracy benchmark's fp8a8):
    per token it is quantize_rows_fp8_ref's values times their scales; per group of G
    columns each group has its own scale, so a group 2^16 smaller than its neighbours
    keeps its values where one scale a token leaves them to e4m3's subnormals; a G that
    does not divide K is refused."""
    from tessera.quant.fp8 import fake_quantize_activations, quantize_rows_fp8_ref
    x = torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(0))
    xq, sx = quantize_rows_fp8_ref(x.reshape(6, 64))
    assert torch.equal(fake_quantize_activations(x), (xq.float() * sx).view_as(x))
    x[..., 32:] *= 2.0 ** -16
    per_token, per_group = fake_quantize_activations(x), fake_quantize_activations(x, 32)
    small = x[..., 32:].abs()
    err_token = ((per_token[..., 32:] - x[..., 32:]).abs() / small).median()
    err_group = ((per_group[..., 32:] - x[..., 32:]).abs() / small).max()
    assert err_group <= 2 ** -4 < err_token  # e4m3's half step against most of a value
    for bad in (48, -32):
        with pytest.raises(ValueError, match=f"groups of {bad} do not divide 64"):
            fake_quantize_activations(x, bad)
