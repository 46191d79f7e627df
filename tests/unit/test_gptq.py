"""GPTQ (quant/gptq.py) and calibration's pieces (quant/calibrate.py), on small matrices.

The GPTQ claims: with H = I (inputs uncorrelated, no damping) it is round-to-nearest
exactly; with correlated inputs its outputs' error over those inputs, tr((W - Q) H (W -
Q)^T), is well below round-to-nearest's; its result is a valid int4 weight (levels 0..15,
the scales' dtype asked for, what dequantizes is s q + o); inputs never seen are no
problem; a Hessian of the wrong shape or with non-finite entries is refused.
"""
from __future__ import annotations

import types

import pytest
import torch

from tessera.quant import formats
from tessera.quant.calibrate import check_calibration, deferred_int4, hessian_chunks
from tessera.quant.gptq import HessianRecorder, gptq_int4, output_error


def _correlated(t: int, k: int, seed: int = 0) -> torch.Tensor:
    """x [t, k]: inputs with correlated columns of unequal size, as a layer's are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    return (torch.randn(t, k, generator=g) @ mix) * (torch.rand(k, generator=g) * 3 + 0.1)


def _weight(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("fit", ["lsq", "minmax"])
def test_identity_hessian_is_round_to_nearest(fit, act_order):
    w = _weight(64, 256)
    got = gptq_int4(w, torch.eye(256), 64, damp=0.0, fit=fit, act_order=act_order)
    want = formats.quantize_int4(w, 64, fit=fit)
    assert torch.equal(got.data, want.data)
    assert torch.equal(got.scale, want.scale) and torch.equal(got.offset, want.offset)


@pytest.mark.parametrize("fit", ["lsq", "minmax"])
@pytest.mark.parametrize("group", [32, 128])
def test_less_output_error_than_round_to_nearest(fit, group):
    w, x = _weight(128, 256), _correlated(1024, 256)
    h = x.t() @ x
    gptq = output_error(w, gptq_int4(w, h, group, fit=fit), h)
    rtn = output_error(w, formats.quantize_int4(w, group, fit=fit), h)
    assert gptq < 0.8 * rtn, (gptq, rtn)  # measured 0.60 (lsq, 128)
    # largest inputs first: less still where the inputs' sizes differ this much
    act = output_error(w, gptq_int4(w, h, group, fit=fit, act_order=True), h)
    assert act < gptq, (act, gptq)


def test_a_valid_int4_weight():
    w, x = _weight(48, 128), _correlated(256, 128)
    qw = gptq_int4(w, x.t() @ x, 32, scale_dtype=torch.float16, act_order=True)
    assert qw.kind == "int4" and qw.group_size == 32
    assert qw.data.shape == (48, 64) and qw.data.dtype == torch.uint8
    assert qw.scale.shape == qw.offset.shape == (48, 4) and qw.scale.dtype == torch.float16
    q = formats.unpack_int4(qw.data).float().reshape(48, 4, 32)
    want = q * qw.scale.float()[..., None] + qw.offset.float()[..., None]
    assert torch.equal(formats.dequantize(qw), want.reshape(48, 128))
    # every weight lands near its own (the compensation moves errors, it does not pile them)
    assert (formats.dequantize(qw) - w).abs().max() < 0.5 * w.abs().max()


def test_inputs_never_seen():
    w, x = _weight(32, 128), _correlated(256, 128)
    x[:, 40:60] = 0.0  # these inputs are always zero: H's rows and columns are 0
    h = x.t() @ x
    qw = gptq_int4(w, h, 32)
    assert torch.isfinite(formats.dequantize(qw)).all()
    assert output_error(w, qw, h) < output_error(w, formats.quantize_int4(w, 32), h)


def test_bad_input_is_refused():
    w = _weight(16, 128)
    with pytest.raises(ValueError, match="does not fit a weight of 128 columns"):
        gptq_int4(w, torch.eye(64), 32)
    with pytest.raises(ValueError, match="multiple of the group size 48"):
        gptq_int4(w, torch.eye(128), 48)
    bad = torch.eye(128)
    bad[3, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        gptq_int4(w, bad, 32)
    with pytest.raises(ValueError, match="unknown int4 fit"):
        gptq_int4(w, torch.eye(128), 32, fit="nearest")


class _Dense:
    def __init__(self):
        self.calls = 0

    def apply_many(self, layer, x):
        self.calls += 1
        return x @ layer.weight.t()

    def fuses_rope(self, layer, x):
        return True

    def precision(self, layer):
        return "bfloat16"


def test_recorder_sums_inputs_and_computes_densely():
    layer = types.SimpleNamespace(weight=torch.randn(3, 4))
    inner = _Dense()
    rec = HessianRecorder(inner, 4, torch.device("cpu"))
    xs = [torch.randn(5, 4), torch.randn(2, 4)]
    for x in xs:
        torch.testing.assert_close(rec.apply(layer, x), x @ layer.weight.t())
    both = torch.cat(xs)
    torch.testing.assert_close(rec.hessian, both.t() @ both)
    assert rec.tokens == 7 and inner.calls == 2
    assert not (rec.fuses_rope(layer, xs[0]) or rec.fuses_gated(layer, xs[0])
                or rec.fuses_norms(layer, xs[0]))  # every input comes through apply
    assert rec.precision(layer) == "bfloat16"  # the rest is the dense method's


def test_hessian_chunks_fit_the_budget():
    layers = [types.SimpleNamespace(in_features=k) for k in (64, 64, 128, 64)]
    sizes = lambda chunks: [[l.in_features for l in c] for c in chunks]  # noqa: E731
    assert sizes(hessian_chunks(layers, 4 * 64 * 64 * 2)) == [[64, 64], [128], [64]]
    assert sizes(hessian_chunks(layers, 1)) == [[64], [64], [128], [64]]  # one at least
    assert sizes(hessian_chunks(layers, 1 << 30)) == [[64, 64, 128, 64]]


def test_int4_layers_load_dense_for_calibration():
    from tessera.config import KernelConfig
    from tessera.layers.context import make_context
    from tessera.quant_policy import QuantPolicy
    policy = QuantPolicy("int4", (("*.down_proj", "int8"),), ("*.o_proj",), 64)
    context = make_context(KernelConfig(), torch.device("cpu"), policy)
    load, deferred = deferred_int4(context)
    assert load.linear_method("model.layers.0.mlp.gate_up_proj") is context.dense_method
    assert load.linear_method("model.layers.0.mlp.down_proj").kind == "int8"
    assert load.linear_method("model.layers.0.self_attn.o_proj") is context.dense_method
    assert list(deferred) == ["model.layers.0.mlp.gate_up_proj"]
    method = deferred["model.layers.0.mlp.gate_up_proj"]
    assert (method.kind, method.group_size) == ("int4", 64)
    assert "model.layers.0.mlp.down_proj" in context.layer_names  # patterns still checked


def test_calibration_needs_int4_and_no_offload():
    from tessera.quant_policy import QuantPolicy
    config = types.SimpleNamespace(offload=types.SimpleNamespace(cpu_offload_gb=0.0))
    with pytest.raises(ValueError, match="no layer is int4"):
        check_calibration(config, QuantPolicy("int8"))
    with pytest.raises(ValueError, match="an int4 LM head is not calibrated"):
        check_calibration(config, QuantPolicy("int8", head="int4"))  # nothing to calibrate
    check_calibration(config, QuantPolicy("none", (("*.mlp.*", "int4"),)))
    config.offload.cpu_offload_gb = 2.0
    with pytest.raises(ValueError, match="cpu_offload_gb"):
        check_calibration(config, QuantPolicy("int4"))


def test_calibration_options_are_checked(tmp_path):
    from tessera.config import QuantConfig
    with pytest.raises(ValueError, match="no such file"):
        QuantConfig(quantization="int4", quantization_calibration=str(tmp_path / "none.txt"))
    text = tmp_path / "calibration.txt"
    text.write_text("x = 1\n")
    with pytest.raises(ValueError, match="calibration_tokens must be at least 2"):
        QuantConfig(quantization="int4", quantization_calibration=str(text), calibration_tokens=1)
    assert QuantConfig(quantization_calibration=str(text)).calibration_tokens == 4096
