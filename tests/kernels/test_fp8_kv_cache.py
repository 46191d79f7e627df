"""An fp8 (e4m3) KV cache: the write kernel stores what the reference stores (saturated,
rounded to nearest-even), the decode and prefill kernels read it as their references do,
and an engine with `kv_cache_dtype="fp8"` holds 4x the blocks of a float32 one and stays
close to it. CPU: interpreter in float32/float16; GPU: bfloat16 too."""
from __future__ import annotations

import pytest
import torch

from tessera import LLM, SamplingParams
from tessera.kernels.paged_decode_attention import (paged_decode_attention,
                                                    paged_decode_attention_ref)
from tessera.kernels.paged_prefill_attention import (paged_prefill_attention,
                                                     paged_prefill_attention_ref)
from tessera.kernels.reference import rotary_kv_write_ref
from tessera.kernels.rotary_kv_write import rotary_kv_write
from tessera.layers.rotary import RotaryEmbedding
from tessera.quant.kv_cache import FP8_MAX, resolve_kv_cache_dtype
from tests.conftest import make_tiny_checkpoint

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
FP8 = torch.float8_e4m3fn
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=dtype)


def fp8_cache(num_blocks, block_size, num_kv, head_dim, seed=1):
    return rand(2, num_blocks, block_size, num_kv, head_dim, seed=seed, scale=3.0).to(FP8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kernel_stores_what_the_reference_stores(dtype):
    num_q, num_kv, head_dim, tokens = 8, 2, 64, 6
    rope = RotaryEmbedding(head_dim, 256, 10000.0).to(DEVICE)
    qkv = rand(tokens, (num_q + 2 * num_kv) * head_dim, dtype=dtype, scale=60.0)
    qkv[0, num_q * head_dim] = 1000.0  # a key beyond e4m3's range: saturates, no NaN
    q, k, v = qkv.split([num_q * head_dim, num_kv * head_dim, num_kv * head_dim], dim=-1)
    q, k, v = (t.view(tokens, -1, head_dim) for t in (q, k, v))
    positions = torch.tensor([0, 3, 17, 100, 5, 255], device=DEVICE)
    slots = torch.tensor([0, 7, 2, 19, 12, 4], device=DEVICE)
    cache = torch.zeros(2, 5, 4, num_kv, head_dim, device=DEVICE).to(FP8)
    ref_cache = cache.clone()
    got_q = rotary_kv_write(q, k, v, positions, rope.cos_sin, cache, slots)
    ref_q = rotary_kv_write_ref(q, k, v, positions, rope.cos_sin, ref_cache, slots)
    assert torch.equal(got_q, ref_q)
    assert torch.equal(cache.view(torch.uint8), ref_cache.view(torch.uint8))  # bit for bit
    assert cache.float().abs().max() == FP8_MAX and not cache.float().isnan().any()
    widened = cache.float()[1].view(-1, num_kv, head_dim)[slots]  # values: within e4m3's step
    assert torch.allclose(widened, v.float().clamp(-FP8_MAX, FP8_MAX), rtol=1 / 16, atol=2**-9)


def test_write_kernel_rounds_hard_values_as_torch_does():
    """Values go through the kernel's V path (no rotation) and must land on the bits of
    torch's saturated cast: ties to even, just below a binade's top, subnormals, the
    edge of the range, beyond it, and NaN."""
    hard = [1.0625, 1.1875, 3 * 2**-10, 17.0, 100.0, 1.9999982, 0.03124997, 2**-6 - 2**-11,
            447.0, 464.0, 1000.0, -1000.0, -7.88, 0.3, 2**-12, float("nan")]
    vals = torch.tensor(hard + [0.0] * (64 - len(hard)))
    v = vals.view(1, 1, 64).to(DEVICE)
    k = torch.zeros(1, 1, 64, device=DEVICE)
    q = torch.zeros(1, 1, 64, device=DEVICE)
    rope = RotaryEmbedding(64, 16, 10000.0).to(DEVICE)
    cache = torch.zeros(2, 1, 4, 1, 64, device=DEVICE).to(FP8)
    rotary_kv_write(q, k, v, torch.tensor([0], device=DEVICE), rope.cos_sin, cache,
                    torch.tensor([2], device=DEVICE))
    got = cache[1, 0, 2, 0].cpu()
    want = vals.clamp(-FP8_MAX, FP8_MAX).to(FP8)
    n = len(hard) - 1
    assert torch.equal(got.view(torch.uint8)[:n], want.view(torch.uint8)[:n])
    if DEVICE == "cuda":  # a NaN stays NaN (the interpreter's fp8 cast makes it 384)
        assert torch.isnan(got.float()[n])


def test_layer_write_saturates_into_fp8():
    """The reference ops' write (the CPU path), at position 0 where rotation is identity."""
    cache = torch.zeros(2, 3, 4, 1, 8).to(FP8)
    k = torch.full((2, 1, 8), -900.0)
    v = torch.full((2, 1, 8), 0.3)
    cos_sin = RotaryEmbedding(8, 4, 10000.0).cos_sin
    rotary_kv_write_ref(k.clone(), k, v, torch.tensor([0, 0]), cos_sin, cache,
                        torch.tensor([1, 6]))
    assert (cache.float()[0].view(-1, 1, 8)[[1, 6]] == -FP8_MAX).all()
    assert (cache.float()[1].view(-1, 1, 8)[[1, 6]] == 0.3125).all()  # 0.3 on e4m3's grid


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_kernel_reads_an_fp8_cache(dtype):
    cache = fp8_cache(12, 8, 2, 64)
    q = rand(3, 8, 64, dtype=dtype, seed=2)
    tables = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:12].view(3, 4)
    tables, lens = tables.to(DEVICE), torch.tensor([5, 17, 32], device=DEVICE)
    ref = paged_decode_attention_ref(q, cache, tables, lens, 0.125)
    for splits in (None, 1):  # split along the context, and one program per head (direct)
        got = paged_decode_attention(q, cache, tables, lens, 0.125, num_splits=splits)
        assert torch.allclose(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_kernel_walks_several_fp8_tiles_whole_and_split(dtype):
    """~300 keys: several 128-key tiles when not split (launch_options), 64-key ones when
    split, the last tile partly past the end."""
    cache = fp8_cache(48, 16, 2, 64)
    q = rand(2, 8, 64, dtype=dtype, seed=4)
    tables = torch.randperm(48, generator=torch.Generator().manual_seed(1)).view(2, 24)
    tables, lens = tables.to(DEVICE), torch.tensor([300, 131], device=DEVICE)
    ref = paged_decode_attention_ref(q, cache, tables, lens, 0.125)
    for splits in (1, 3):
        got = paged_decode_attention(q, cache, tables, lens, 0.125, num_splits=splits)
        assert torch.allclose(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.gpu
def test_bf16_queries_over_fp8_keep_nan_and_a_long_context():
    """bf16 queries over an fp8 cache compute in fp16 (kernels/attention_tiles.py): a NaN
    query's row still comes out NaN, the other rows finite, and 4k keys of tiny weights (fp16
    flushes them) still match the float32 reference."""
    cache = fp8_cache(500, 16, 2, 128)
    q = rand(2, 8, 128, dtype=torch.bfloat16, seed=3)
    q[0, 1, 5] = float("nan")
    tables = torch.arange(500, device=DEVICE).view(2, 250)  # 4000 keys: 250 pages
    lens = torch.tensor([4000, 77], device=DEVICE)
    ref = paged_decode_attention_ref(q, cache, tables, lens, 128 ** -0.5)
    for splits in (None, 1):  # split (64-key tiles), and whole (128-key tiles, launch_options)
        got = paged_decode_attention(q, cache, tables, lens, 128 ** -0.5, num_splits=splits)
        assert torch.isnan(ref[0, 1]).all() and torch.equal(torch.isnan(got), torch.isnan(ref))
        ok = ~torch.isnan(ref)
        err = (got.float()[ok] - ref.float()[ok]).abs().max()
        assert torch.allclose(got.float()[ok], ref.float()[ok], atol=2e-2, rtol=2e-2), err


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_kernel_reads_an_fp8_cache(dtype):
    cache = fp8_cache(10, 16, 2, 32)
    q = rand(30, 8, 32, dtype=dtype, seed=2)
    tables = torch.arange(10, device=DEVICE, dtype=torch.int32).view(2, 5)
    lens = torch.tensor([25, 40], device=DEVICE, dtype=torch.int32)
    starts = torch.tensor([0, 20, 30], device=DEVICE, dtype=torch.int32)
    got = paged_prefill_attention(q, cache, tables, lens, starts, 20, 0.17)
    ref = paged_prefill_attention_ref(q, cache, tables, lens, starts, 0.17)
    assert torch.allclose(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_unknown_kv_cache_dtype_is_refused():
    with pytest.raises(ValueError, match="kv_cache_dtype 'int4'.*auto, fp8"):
        resolve_kv_cache_dtype("int4", torch.bfloat16, torch.device("cpu"))
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM("unused", kv_cache_dtype="fp4")


def test_engine_with_an_fp8_cache_stays_close(tmp_path):
    """Same prompts, float32 model: an fp8 block takes a quarter of the bytes; each step's
    chosen-token logprob stays within 0.1 of the float32 cache's; and (on CPU, where the
    reference path is the default) the Triton kernels over the fp8 cache give the
    reference path's tokens and logprobs."""
    make_tiny_checkpoint("llama", str(tmp_path))
    prompts = [[5, 17, 99, 3], list(range(20, 45)), [300, 7, 7, 150, 42]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    runs = [("auto", "auto", None), ("fp8", "fp8", None)]
    if DEVICE == "cpu":
        runs.append(("fp8-kernels", "fp8", True))
    outs, block_bytes = {}, {}
    for name, kv_dtype, kernels in runs:
        llm = LLM(str(tmp_path), skip_tokenizer_init=True, block_size=8, num_blocks=64,
                  device=DEVICE, dtype="float32", kv_cache_dtype=kv_dtype,
                  kernel_backend="triton" if kernels else "auto")
        runner = llm.engine.executor.runner
        block_bytes[name] = runner.bytes_per_block
        outs[name] = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        del llm, runner
    assert block_bytes["fp8"] * 4 == block_bytes["auto"]
    worst = 0.0
    for ref, got in zip(outs["auto"], outs["fp8"]):
        ref, got = ref.outputs[0], got.outputs[0]
        assert got.token_ids[:4] == ref.token_ids[:4]
        for step, (r, g) in enumerate(zip(ref.logprobs[:4], got.logprobs[:4])):
            tok = ref.token_ids[step]
            worst = max(worst, abs(r[tok].logprob - g[tok].logprob))
    assert 0 < worst < 0.1  # fp8 changes the numbers, a little
    for ref, got in zip(outs["fp8"], outs.get("fp8-kernels", [])):  # kernels = reference
        assert got.outputs[0].token_ids == ref.outputs[0].token_ids
        for r, g in zip(ref.outputs[0].logprobs, got.outputs[0].logprobs):
            assert all(abs(r[t].logprob - g[t].logprob) < 1e-3 for t in r if t in g)
