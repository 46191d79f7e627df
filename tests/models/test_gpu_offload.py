"""On a CUDA GPU, in bf16: offloaded layers (pinned memory, copied on a side stream inside
the decode CUDA graphs; or a file, eagerly) give the resident model's tokens, greedy and
seeded sampling, with batches that run as graphs and steps that mix prefill and decode.

Run on the lent GPU machine (`pytest -m gpu`); results go in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import pytest
import torch

from tessera import LLM, SamplingParams

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 17, 99, 3], list(range(20, 77)), [1] + list(range(100, 131))] * 3
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
SAMPLED = SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True, seed=11)


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    import transformers
    from tests.conftest import TINY
    folder = str(tmp_path_factory.mktemp("gpu-deep-llama"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**TINY, "num_hidden_layers": 8, "hidden_size": 256,
                                      "intermediate_size": 512})
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def _run(folder, **kw):
    llm = LLM(folder, skip_tokenizer_init=True, dtype="bfloat16", num_blocks=256, **kw)
    try:
        out = []
        for params in (GREEDY, SAMPLED):
            outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
            out.append([o.outputs[0].token_ids for o in outs])
        runner = llm.engine.core.executor.runner
        return out, runner.graphs.replays if runner.graphs else 0
    finally:
        llm.engine.executor.shutdown()


@pytest.mark.parametrize("where", ["pinned", "dir"])
def test_offload_on_gpu_equals_resident(deep_llama, where, tmp_path):
    resident, _ = _run(deep_llama)
    kw = dict(cpu_offload_gb=1e-3)
    if where == "dir":
        kw["offload_dir"] = str(tmp_path)
    got, replays = _run(deep_llama, **kw)
    assert got == resident
    if where == "pinned":
        assert replays > 0  # the copies ran inside the decode graphs
    else:
        assert replays == 0  # a file store runs eagerly
