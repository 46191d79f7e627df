"""Structured outputs' bitmask on the logits (kernels/token_bitmask.py) against its
definition (kernels/reference.py `apply_token_bitmask_ref`): vocabularies that are and
are not multiples of 32 and of the block, a mask wider than the vocabulary, rows with no
token or every token allowed, logits rows wider than the vocabulary (a row stride);
a mask with a row stride of its own, an empty batch; fp32 and fp16 under the interpreter
on the CPU, bf16 too on the GPU. Bad shapes (a mask too narrow for the vocabulary, not
2-D, not int32, other rows) are refused."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import token_bitmask
from tessera.kernels.reference import apply_token_bitmask_ref
from tessera.kernels.token_bitmask import apply_token_bitmask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(token_bitmask, "BLOCK", 64)  # several programs per row


def random_mask(rows: int, words: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2**31, 2**31 - 1, (rows, words), generator=g,
                         dtype=torch.int32).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, vocab, extra_words", [(1, 50, 0), (3, 64, 0), (5, 300, 2),
                                                      (17, 1000, 0)])
def test_equals_definition(small_blocks, dtype, rows, vocab, extra_words):
    torch.manual_seed(vocab)
    logits = torch.randn(rows, vocab, device=DEVICE).to(dtype)
    mask = random_mask(rows, (vocab + 31) // 32 + extra_words, vocab)
    mask[0] = 0  # nothing allowed
    if rows > 1:
        mask[1] = -1  # everything allowed
    want = logits.clone()
    apply_token_bitmask_ref(want, mask)
    apply_token_bitmask(logits, mask)
    assert torch.equal(logits, want)
    assert torch.isinf(logits[0]).all() and (logits[0] < 0).all()
    if rows > 1:
        assert torch.isfinite(logits[1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_wider_than_the_vocabulary(small_blocks, dtype):
    wide = torch.randn(4, 200, device=DEVICE).to(dtype)
    logits = wide[:, :150]  # row stride 200: the columns past 150 are not touched
    mask = random_mask(4, 5, 7)
    want = logits.clone()
    apply_token_bitmask_ref(want, mask)
    before = wide[:, 150:].clone()
    apply_token_bitmask(logits, mask)
    assert torch.equal(logits, want)
    assert torch.equal(wide[:, 150:], before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_mask_with_its_own_row_stride_and_an_empty_batch(small_blocks, dtype):
    logits = torch.randn(3, 100, device=DEVICE).to(dtype)
    words = random_mask(3, 8, 11)[:, :4]  # rows of 8 words, 4 of them read
    want = logits.clone()
    apply_token_bitmask_ref(want, words)
    apply_token_bitmask(logits, words)
    assert torch.equal(logits, want)
    apply_token_bitmask(logits[:0], words[:0])  # nothing to do


def test_bad_shapes_are_refused():
    logits = torch.zeros(2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="int32"):
        apply_token_bitmask(logits, torch.zeros(2, 2, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="int32"):
        apply_token_bitmask(logits, torch.zeros(3, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r">= 2"):  # too narrow: tokens 32-63 unread
        apply_token_bitmask(logits, torch.zeros(2, 1, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="int32"):  # not [N, W]
        apply_token_bitmask(logits, torch.zeros(4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="unit column stride"):
        apply_token_bitmask(logits.t(), torch.zeros(64, 1, dtype=torch.int32, device=DEVICE))
