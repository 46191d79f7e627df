"""The device-side MoE kernels (kernels/fused_moe.py) against the per-expert PyTorch loop:
top-1 and top-2, balanced and skewed routing, a rank holding a subset of the experts (or
none of a step's), block sizes 16-64; the alignment's layout, its one-program kernel equal
to the PyTorch ops; tiles within shared memory; tiny MoE models through
the kernels equal HF transformers' greedy tokens; on CUDA a MoE model's decode steps are
captured in CUDA graphs. CPU: interpreter in float32/float16; GPU: bfloat16 too."""
from __future__ import annotations

import pytest
import torch

from tessera import LLM, SamplingParams
from tessera.kernels import fused_moe as fused_moe_module
from tessera.kernels.fused_moe import (align_by_expert, align_by_expert_ref, block_rows,
                                       fused_moe, fused_moe_ref, pick_config)
from tessera.layers.moe import route
from tests.conftest import hf_greedy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def case(tokens, experts, top_k, hidden, inter, local, dtype, seed=0, skew=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    w13 = torch.randn(local, 2 * inter, hidden, generator=g) * hidden ** -0.5
    w2 = torch.randn(local, hidden, inter, generator=g) * inter ** -0.5
    logits = torch.randn(tokens, experts, generator=g)
    logits[:, 0] += skew  # skew: most tokens pick expert 0
    weights, ids = route(logits, top_k, True, dtype)
    to = dict(device=DEVICE, dtype=dtype)
    return x.to(**to), w13.to(**to), w2.to(**to), weights.to(DEVICE), ids.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,experts,top_k,first,local,skew", [
    (1, 8, 2, 0, 8, 0.0),  # a decode step: one row per chosen expert
    (7, 8, 2, 0, 8, 0.0),
    (40, 4, 2, 0, 4, 0.0),  # 20 rows per expert: 32-row blocks
    (70, 4, 1, 0, 4, 3.0),  # skewed: one expert takes most, 64-row blocks
    (9, 8, 2, 4, 4, 0.0),  # a rank with experts 4..7 (expert parallelism)
])
def test_fused_moe_matches_reference(dtype, tokens, experts, top_k, first, local, skew):
    x, w13, w2, weights, ids = case(tokens, experts, top_k, 64, 48, local, dtype, skew=skew)
    got = fused_moe(x, w13, w2, weights, ids, first)
    ref = fused_moe_ref(x, w13, w2, weights, ids, first)
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    assert got.abs().sum() > 0


def test_a_rank_without_any_of_the_steps_experts_adds_nothing():
    x, w13, w2, weights, ids = case(3, 8, 2, 64, 48, 4, torch.float32)
    ids = ids % 4  # every assignment goes to experts 0..3
    assert not fused_moe(x, w13, w2, weights, ids, first_expert=4).any()


def test_alignment_lists_each_local_assignment_once_in_expert_runs():
    ids = torch.tensor([[2, 0], [2, 5], [1, 2], [7, 2]], device=DEVICE)  # experts 0..3 local
    sorted_ids, block_expert = align_by_expert(ids, first=0, num_local=4, block_m=4)
    flat = ids.flatten().tolist()
    rows = sorted_ids.view(-1, 4).tolist()
    seen = [a for row in rows for a in row if a < len(flat)]
    assert sorted(seen) == [a for a, e in enumerate(flat) if e < 4]  # 5 and 7: not here
    for block, expert in enumerate(block_expert.tolist()):
        members = [a for a in rows[block] if a < len(flat)]
        assert all(flat[a] == expert for a in members)  # a block holds one expert's rows
        if not members:
            assert expert == 4  # unused blocks name no expert
    assert block_rows(2, 8) == 16 and block_rows(8 * 40, 8) == 64


@pytest.mark.parametrize("tokens,experts,top_k,first,local,block_m", [
    (1, 8, 2, 0, 8, 16), (13, 8, 2, 0, 8, 16), (40, 4, 2, 0, 4, 32), (9, 8, 2, 4, 4, 16),
    (100, 60, 4, 0, 60, 16), (30, 8, 2, 2, 3, 64)])
def test_the_one_program_alignment_equals_the_pytorch_ops(tokens, experts, top_k, first, local,
                                                         block_m):
    g = torch.Generator().manual_seed(tokens)
    ids = torch.rand(tokens, experts, generator=g).topk(top_k, dim=-1).indices.to(DEVICE)
    got = align_by_expert(ids, first, local, block_m)
    ref = align_by_expert_ref(ids, first, local, block_m)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_a_large_step_aligns_with_the_pytorch_ops(monkeypatch):
    monkeypatch.setattr(fused_moe_module, "ALIGN_KERNEL_MAX", 0)  # too big for one program
    x, w13, w2, weights, ids = case(7, 8, 2, 64, 48, 8, torch.float32)
    torch.testing.assert_close(fused_moe(x, w13, w2, weights, ids),
                               fused_moe_ref(x, w13, w2, weights, ids))


@pytest.mark.parametrize("limit_kb", [220, 156, 91])  # H100, A100, sm_89, less the margin
def test_tiles_fit_shared_memory(limit_kb):
    for gated in (True, False):
        for block_m in (16, 32, 64):
            for itemsize in (2, 4):
                cfg = pick_config(gated, block_m, itemsize, limit_kb << 10)
                panels = 2 if gated else 1
                smem = cfg.num_stages * (block_m + panels * cfg.block_n) * cfg.block_k * itemsize
                assert smem <= limit_kb << 10 and cfg.num_stages >= 2
    tuned = fused_moe_module.TUNED[True, 16]
    assert pick_config(True, 16, 2, 220 << 10) == tuned  # the H100 keeps the tuned tiles


@pytest.mark.gpu
def test_compiled_kernels_fit_this_gpu():
    x, w13, w2, weights, ids = case(200, 8, 2, 256, 512, 8, torch.bfloat16)  # 64-row blocks
    fused_moe(x, w13, w2, weights, ids)
    limit = fused_moe_module.shared_memory_bytes(x.device) + fused_moe_module.SMEM_MARGIN
    compiled = [k for cache in fused_moe_module._moe_gemm.device_caches.values()
                for k in cache[0].values()]
    assert compiled and all(k.metadata.shared <= limit for k in compiled)


@pytest.mark.parametrize("mode", ["always", "off"])
def test_tiny_moe_models_through_the_kernels_equal_hf(tiny_moe, mode, monkeypatch):
    arch, folder, hf_model = tiny_moe
    calls = []
    monkeypatch.setattr(fused_moe_module, "fused_moe",
                        lambda *a: calls.append(1) or fused_moe(*a))
    prompts = [[5, 17, 99, 3], list(range(20, 33))]
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, device=DEVICE,
              dtype="float32", fused_moe=mode)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    for p, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf_model, p, 8)[0], arch
    assert bool(calls) == (mode == "always")
    with pytest.raises(ValueError, match="mode"):
        LLM(folder, skip_tokenizer_init=True, fused_moe="fast")


@pytest.mark.gpu
def test_moe_decode_steps_are_captured_in_cuda_graphs(tiny_moe):
    """Decode steps replay graphs and give, token for token, what eager steps and HF
    (fp32, CPU) give."""
    arch, folder, hf_model = tiny_moe
    prompts = [{"prompt_token_ids": p} for p in ([5, 17, 99, 3], list(range(20, 60)))]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = {}
    for eager in (False, True):
        llm = LLM(folder, skip_tokenizer_init=True, num_blocks=256, device="cuda",
                  dtype="float32", enforce_eager=eager)
        graphs = llm.engine.core.executor.runner.graphs
        assert (graphs is None) == eager, arch
        before = graphs.replays if graphs else 0  # warm-up steps may replay too
        outs[eager] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        if graphs:
            assert graphs.replays - before >= 6, "the decode steps replayed graphs"
    assert outs[False] == outs[True], arch
    assert outs[False] == [hf_greedy(hf_model, p["prompt_token_ids"], 8)[0] for p in prompts]

@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantized_experts_against_the_reference(kind):
    """int8 / fp8 experts with per-channel scales: the kernels widen and scale them as the
    reference's dequantized matrices say."""
    from tessera.quant.formats import quantize

    dtype = torch.float16 if DEVICE == "cpu" else torch.bfloat16
    g = torch.Generator().manual_seed(3)
    e, hidden, inter, tokens, top_k = 4, 64, 48, 5, 2
    x = (torch.randn(tokens, hidden, generator=g) * 0.5).to(DEVICE, dtype)
    parts = []
    for shape in ((e, 2 * inter, hidden), (e, hidden, inter)):
        w = torch.randn(*shape, generator=g) * 0.1
        qs = [quantize(kind, w[i]) for i in range(e)]
        parts.append((torch.stack([q.data for q in qs]).to(DEVICE),
                      torch.stack([q.scale for q in qs]).to(DEVICE)))
    (w13, s13), (w2, s2) = parts
    ids = torch.randint(0, e, (tokens, top_k), generator=g).to(DEVICE)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=g), -1).to(DEVICE, dtype)
    got = fused_moe(x, w13, w2, weights, ids, 0, s13, s2)
    want = fused_moe_ref(x, w13, w2, weights, ids, 0, s13, s2)
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)
