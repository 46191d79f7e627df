"""Pipeline parallelism on CPU (gloo): layers split into stages that pass hidden states
on, one micro-batch per stage in flight; PP=2 (balanced and with an explicit partition)
and TP=2 x PP=2 give the greedy tokens of one process (fp32, chunked prefill and decodes
mixed); tied embeddings (Qwen2) over 3 stages too, and with an int8 LM head over 2."""
from __future__ import annotations

import pytest

from tessera import LLM, SamplingParams

PROMPTS = [[5, 17, 99, 3], list(range(20, 60)), [300, 7, 7, 150, 42]]
PARAMS = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def _tokens(folder, **kw):
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, max_num_batched_tokens=16, **kw)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS)
        assert llm.engine.stats()["free_blocks"] == 64
        pp = kw.get("pipeline_parallel_size", 1)
        if pp > 1:  # several micro-batches were in the pipeline at once
            assert 2 <= llm.engine.core.max_in_flight <= pp
        return [o.outputs[0].token_ids for o in outs]
    finally:
        if hasattr(llm.engine.executor, "shutdown"):
            llm.engine.executor.shutdown()


@pytest.mark.parametrize("layout", [dict(pipeline_parallel_size=2),
                                    dict(pipeline_parallel_size=2, pp_layer_partition="1,2"),
                                    dict(pipeline_parallel_size=2, tensor_parallel_size=2)])
def test_pipeline_equals_single_process(tiny_llama, layout):
    folder, _ = tiny_llama
    assert _tokens(folder, **layout) == _tokens(folder)


def test_pipeline_with_tied_embeddings(tmp_path):
    from tests.conftest import make_tiny_checkpoint
    make_tiny_checkpoint("qwen2", str(tmp_path))  # tied: the last stage's head loads the table
    assert _tokens(str(tmp_path), pipeline_parallel_size=3) == _tokens(str(tmp_path))
    # a quantized head (its own copy of the table, quantized where it loads) likewise
    head = dict(lm_head_quantization="int8")
    assert _tokens(str(tmp_path), pipeline_parallel_size=2, **head) == _tokens(str(tmp_path),
                                                                              **head)
