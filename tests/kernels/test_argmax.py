"""Row argmax (kernels/argmax.py) against torch.argmax: random rows of several widths
(one chunk, several, a ragged last one), ties across chunks (the first index wins),
rows of -inf, NaN (the first NaN wins, over +inf too), non-contiguous rows; fp32 and fp16
under the interpreter on the CPU, bf16 too on the GPU."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import argmax as argmax_mod
from tessera.kernels.argmax import argmax_rows
from tessera.kernels.reference import argmax_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(argmax_mod, "CHUNK", 64)  # several chunks from short rows


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, vocab", [(1, 50), (3, 64), (5, 300), (17, 1000)])
def test_random_rows_equal_torch(small_chunks, dtype, rows, vocab):
    torch.manual_seed(rows * vocab)
    x = torch.randn(rows, vocab, device=DEVICE).to(dtype)
    assert torch.equal(argmax_rows(x), argmax_ref(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_special_values_and_strides(small_chunks, dtype):
    x = torch.randn(8, 300, device=DEVICE).to(dtype)
    x[0, 70] = x[0, 250] = 100  # a tie across chunks: the first
    x[1, 10] = x[1, 11] = 100  # a tie within one
    x[2] = float("-inf")  # all -inf: index 0
    x[3, 200] = float("nan")  # NaN beats everything
    x[4, 5] = float("inf")
    x[4, 100] = float("nan")  # ... +inf in an earlier chunk too
    x[5, 299] = 100  # the ragged last chunk's last column
    x[6, 64:] = float("-inf")
    x[7, :] = 3  # all equal: index 0
    first_of_six = int(x[6, :64].float().argmax())
    assert argmax_rows(x).tolist() == [70, 10, 0, 200, 100, 299, first_of_six, 0]
    assert torch.equal(argmax_rows(x), argmax_ref(x))
    wide = torch.randn(4, 600, device=DEVICE).to(dtype)
    assert torch.equal(argmax_rows(wide[:, ::2]), argmax_ref(wide[:, ::2]))  # strided rows
    assert torch.equal(argmax_rows(wide[:, 100:400]), argmax_ref(wide[:, 100:400]))


def test_the_default_chunk_on_a_vocabulary_of_llama3():
    x = torch.randn(2, 128256, device=DEVICE)
    x[1, 128255] = 50
    assert torch.equal(argmax_rows(x), argmax_ref(x))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="argmax_rows takes"):
        argmax_rows(torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="argmax_rows takes"):
        argmax_rows(torch.zeros(2, 0, device=DEVICE))
    assert argmax_rows(torch.zeros(0, 5, device=DEVICE)).shape == (0,)
    with pytest.raises(ValueError, match="float64 is not taken"):
        argmax_rows(torch.zeros(2, 5, device=DEVICE, dtype=torch.float64))
