"""Weights stored once: a layer that runs another's weights (`layer_share`, MobileLLM-style
block repetition) and identical tensors in a checkpoint (found by content at load) keep
one copy, and the outputs still equal HF transformers on the same (repeated) weights.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from tessera import LLM, SamplingParams
from tests.conftest import TINY, hf_greedy

PROMPTS = [[5, 17, 99, 3], list(range(20, 60))]
NEW_TOKENS = 24
REPEATS = {3: 1, 5: 2}  # layer -> the layer whose weights it runs


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """An HF Llama of 6 layers whose layers 3 and 5 are copies of layers 1 and 2, and whose
    untied LM head equals its embedding: (folder, HF model)."""
    import transformers
    folder = str(tmp_path_factory.mktemp("repeated"))
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(**{**TINY, "num_hidden_layers": 6},
                                   tie_word_embeddings=False)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for i, j in REPEATS.items():
            for mine, theirs in zip(model.model.layers[i].parameters(),
                                    model.model.layers[j].parameters()):
                mine.copy_(theirs)
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    model.save_pretrained(folder)
    return folder, model


def _with_share(folder: str, dest: str, drop_shared: bool) -> str:
    """A copy of the checkpoint whose config.json declares the sharing; with drop_shared
    the shared layers' tensors are left out of the file (stored once on disk too)."""
    from safetensors.torch import load_file, save_file
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg["layer_share"] = {str(i): j for i, j in REPEATS.items()}
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(cfg, f)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    if drop_shared:
        tensors = {k: v for k, v in tensors.items()
                   if not any(k.startswith(f"model.layers.{i}.") for i in REPEATS)}
    save_file(tensors, os.path.join(dest, "model.safetensors"))
    return dest


def _generate(folder: str):
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, device="cpu")
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    return llm, [o.outputs[0].token_ids for o in outs]


def _stored_bytes(model) -> int:
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes()
                for p in model.parameters()}
    return sum(storages.values())


def test_identical_tensors_are_stored_once(repeated):
    folder, hf = repeated
    llm, got = _generate(folder)
    assert got == [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS]
    model = llm.engine.core.executor.runner.model
    layers = model.decoder_layers()
    for i, j in REPEATS.items():
        mine, theirs = layers[i], layers[j]
        assert mine is not theirs  # no layer_share: found by content
        for a, b in ((mine.self_attn.qkv_proj.weight, theirs.self_attn.qkv_proj.weight),
                     (mine.mlp.down_proj.weight, theirs.mlp.down_proj.weight)):
            assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    h, inter, q = TINY["hidden_size"], TINY["intermediate_size"], TINY["hidden_size"]
    kv = TINY["num_key_value_heads"] * h // TINY["num_attention_heads"]
    per_layer = 4 * (h * (q + 2 * kv) + q * h + 3 * h * inter)  # float32, norms too small
    head = 4 * TINY["vocab_size"] * h
    assert model.dedup_saved_bytes == len(REPEATS) * per_layer + head
    assert llm.engine.core.executor.info.memory["weights_deduplicated"] == \
        model.dedup_saved_bytes


@pytest.mark.parametrize("drop_shared", [False, True])
def test_layer_share_runs_one_copy_and_equals_hf(repeated, tmp_path, drop_shared):
    folder, hf = repeated
    shared = _with_share(folder, str(tmp_path / "shared"), drop_shared)
    llm, got = _generate(shared)
    assert got == [hf_greedy(hf, p, NEW_TOKENS)[0] for p in PROMPTS]
    runner = llm.engine.core.executor.runner
    layers = runner.model.decoder_layers()
    for i, j in REPEATS.items():
        assert layers[i] is layers[j]
    assert len(runner.kv_caches) == 6  # each depth its own KV cache
    plain, _ = _generate(folder)
    plain_model = plain.engine.core.executor.runner.model
    # both keep one copy of the matrices; dedup leaves the (tiny) norms of repeated layers
    norms = len(REPEATS) * 2 * TINY["hidden_size"] * 4
    assert _stored_bytes(plain_model) - _stored_bytes(runner.model) == norms
    unique = {id(p) for p in runner.model.parameters()}
    assert len(unique) < len({id(p) for p in plain_model.parameters()})


def test_layer_share_is_validated():
    from tessera.models.arch_config import ArchConfig
    base = dict(architecture="LlamaForCausalLM", vocab_size=8, hidden_size=8,
                intermediate_size=8, num_layers=4, num_heads=2, num_kv_heads=2, head_dim=4)
    assert ArchConfig(**base, layer_share=[[3, 1]]).layer_share == ((3, 1),)
    for bad in ([(1, 3)], [(3, 3)], [(4, 1)], [(2, 1), (3, 2)]):
        with pytest.raises(ValueError, match="layer_share"):
            ArchConfig(**base, layer_share=bad)


def test_offload_skips_shared_layers():
    from tessera.models.loader.offload import layer_bytes
    from tessera.models.llama import LlamaForCausalLM
    from tessera.models.arch_config import ArchConfig
    arch = ArchConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=16,
                      intermediate_size=32, num_layers=6, num_heads=2, num_kv_heads=2,
                      head_dim=8, layer_share=((3, 1), (5, 2)))
    with torch.device("meta"):
        model = LlamaForCausalLM(arch)
    assert sorted(layer_bytes(model)) == [0, 4]  # 1, 2, 3, 5 run at two depths
