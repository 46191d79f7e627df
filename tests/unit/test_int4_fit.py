"""int4's least-squares group fit (quant/int4_fit.py, formats.quantize_int4): never worse
than min-max per group, exact on weights already on a 4-bit grid (a GGUF Q4_1 block, a
K-quant sub-block whose q spans fewer than 16 levels), constant groups kept, the same in
chunks as whole, and a lower error than min-max on Gaussian and heavy-tailed weights."""
from __future__ import annotations

import pytest
import torch

from tessera.quant import int4_fit
from tessera.quant.formats import dequantize, quantize, quantize_int4
from tessera.quant.int4_fit import fit_int4, minmax_int4, squared_error


def gaussian(n=64, k=512, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02


def heavy(n=64, k=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.02 / torch.rand(n, k, generator=g).clamp_min(0.05)


def mse(w, qw):
    return (dequantize(qw) - w).square().mean().item()


@pytest.mark.parametrize("make", [gaussian, heavy])
@pytest.mark.parametrize("group", [32, 128])
def test_each_group_is_no_worse_than_min_max(make, group):
    w = make()
    groups = w.reshape(w.shape[0], -1, group)
    fitted = squared_error(groups, *fit_int4(groups))
    plain = squared_error(groups, *minmax_int4(groups))
    assert (fitted <= plain * (1 + 1e-5) + 1e-12).all()
    assert fitted.sum() < 0.9 * plain.sum()  # measured 0.80-0.87 of min-max's


@pytest.mark.parametrize("mean", [1.0, 10.0])
def test_groups_far_from_zero_are_no_worse_than_min_max(mean):
    """A group's mean large against its spread: the error from the sums must not cancel
    into choosing a worse candidate (the fit is of w less the group's minimum)."""
    w = mean + 0.01 * torch.randn(2000, 32, generator=torch.Generator().manual_seed(3))
    fitted = squared_error(w, *fit_int4(w))
    plain = squared_error(w, *minmax_int4(w))
    assert (fitted <= plain * (1 + 1e-3) + 1e-12).all()
    assert fitted.sum() < 0.95 * plain.sum()


def test_no_rows():
    qw = quantize_int4(torch.zeros(0, 64), 32, torch.float32)
    assert qw.data.shape == (0, 32) and qw.scale.shape == (0, 2)


@pytest.mark.parametrize("make", [gaussian, heavy])
def test_the_stored_weight_beats_min_max(make):
    w = make()
    for group in (32, 64, 128):
        lsq = quantize_int4(w, group, torch.float16, fit="lsq")
        plain = quantize_int4(w, group, torch.float16, fit="minmax")
        assert mse(w, lsq) < 0.92 * mse(w, plain), group
        assert (lsq.scale.dtype, lsq.offset.dtype, lsq.data.dtype) == (
            torch.float16, torch.float16, torch.uint8)


def test_weights_on_a_four_bit_grid_come_back_exactly():
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(16, 4, 1, generator=g) * 0.01 + 0.001
    offset = -torch.rand(16, 4, 1, generator=g) * 0.05
    q = torch.randint(0, 16, (16, 4, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # a Q4_1 block: its minimum and maximum on the grid's ends
    w = (q * scale + offset).reshape(16, 128)
    qw = quantize_int4(w, 32, torch.float32)
    assert torch.allclose(dequantize(qw), w, rtol=0, atol=1e-6)
    # a K-quant sub-block: the fitted q span only 12 of the 16 levels
    q = torch.randint(2, 14, (16, 4, 32), generator=g).float()
    q[..., 0], q[..., 1] = 2, 13
    w = (q * scale + offset).reshape(16, 128)
    qw = quantize_int4(w, 32, torch.float32)
    assert torch.allclose(dequantize(qw), w, rtol=0, atol=1e-6)
    assert (dequantize(quantize_int4(w, 32, torch.float32, fit="minmax")) - w).abs().max() > 1e-5


def test_constant_and_zero_groups_survive():
    w = gaussian(4, 64)
    w[1] = 0.0
    w[2, :32] = 0.25
    qw = quantize("int4", w, 32, torch.float32)
    out = dequantize(qw)
    assert torch.equal(out[1], torch.zeros(64))
    assert torch.allclose(out[2, :32], torch.full((32,), 0.25))
    assert torch.isfinite(qw.scale).all() and torch.isfinite(qw.offset).all()


def test_chunks_give_the_whole_fit(monkeypatch):
    w = heavy(32, 256)
    whole = quantize_int4(w, 64, torch.float32)
    monkeypatch.setattr(int4_fit, "ROW_CHUNK_ELEMENTS", 64 * 7)  # 7 groups a chunk
    chunked = quantize_int4(w, 64, torch.float32)
    assert torch.equal(whole.data, chunked.data)
    assert torch.equal(whole.scale, chunked.scale) and torch.equal(whole.offset, chunked.offset)


def test_unknown_fit_is_refused():
    with pytest.raises(ValueError, match="unknown int4 fit 'best'"):
        quantize_int4(gaussian(4, 64), 32, fit="best")
