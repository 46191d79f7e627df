"""Weight offload on the CPU: layers kept in a host store (memory or a file) and copied into
two slots each step give the tokens the resident model gives; the store is what the model
reads; the plan, the errors, the scheduler's defaults under offload.
(On the CPU the copies are plain copies; the GPU path is tests/models/test_gpu_offload.py.)
"""
from __future__ import annotations

import os

import pytest
import torch

from tessera import LLM
from tessera.config import EngineConfig
from tessera.models.loader.offload import OffloadPlan, plan_offload, spread
from tessera.models.loader.offload_store import GiB, fits_host
from tessera.sampling_params import SamplingParams

PROMPTS = [[1, 5, 9, 33, 70], [1, 100, 200], [1, 7] * 20]
GREEDY = SamplingParams(max_tokens=16, temperature=0)
SAMPLED = SamplingParams(max_tokens=16, temperature=0.9, seed=7)
TINY_BUDGET = 1e-4  # GiB: four layers of the 8-layer tiny model (two slots kept)


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory):
    """A tiny Llama of 8 layers (offload needs four or more)."""
    import transformers
    from tests.conftest import TINY
    folder = str(tmp_path_factory.mktemp("deep-llama"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**TINY, "num_hidden_layers": 8})
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def _tokens(llm: LLM, params=GREEDY) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params)
    return [o.outputs[0].token_ids for o in outs]


def _run(folder: str, params=GREEDY, **kw) -> list[list[int]]:
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=64, **kw)
    try:
        return _tokens(llm, params)
    finally:
        llm.engine.executor.shutdown()


@pytest.fixture(scope="module")
def resident(deep_llama):
    return _run(deep_llama), _run(deep_llama, SAMPLED)


@pytest.mark.parametrize("where", ["memory", "dir"])
def test_offloaded_layers_give_the_resident_tokens(deep_llama, resident, where, tmp_path):
    kw = dict(cpu_offload_gb=TINY_BUDGET)
    if where == "dir":
        kw["offload_dir"] = str(tmp_path / "offload")
    llm = LLM(deep_llama, skip_tokenizer_init=True, num_blocks=64, **kw)
    runner = llm.engine.core.executor.runner
    stream = runner.weight_stream
    try:
        assert stream is not None and stream.count == 4
        assert _tokens(llm) == resident[0]
        assert _tokens(llm, SAMPLED) == resident[1]
        memory = llm.engine.core.executor.info.memory
        if where == "dir":
            assert memory["weights_disk"] == stream.bytes_per_step
            assert os.listdir(tmp_path / "offload") == [os.path.basename(stream.store.path)]
        else:
            assert memory["weights_cpu"] == stream.bytes_per_step
        assert memory["offload_step_bytes"] == stream.bytes_per_step
    finally:
        llm.engine.executor.shutdown()
    if where == "dir":
        assert os.listdir(tmp_path / "offload") == []  # the file goes with the engine


def test_the_model_reads_the_store(deep_llama, resident):
    """Zeroing one offloaded layer in the store changes the output: the slots are refilled
    from the store every step, never kept."""
    llm = LLM(deep_llama, skip_tokenizer_init=True, num_blocks=64, cpu_offload_gb=TINY_BUDGET)
    stream = llm.engine.core.executor.runner.weight_stream
    try:
        offset, nbytes = stream.store.layout[2]
        stream.store.tensor[offset:offset + nbytes].zero_()
        assert _tokens(llm) != resident[0]
    finally:
        llm.engine.executor.shutdown()


def test_offload_parameters_view_the_slots(deep_llama):
    llm = LLM(deep_llama, skip_tokenizer_init=True, num_blocks=64, cpu_offload_gb=TINY_BUDGET)
    runner = llm.engine.core.executor.runner
    try:
        stream = runner.weight_stream
        layers = runner.model.decoder_layers()
        offloaded = [i for i in layers if stream.positions.get(list(layers).index(i)) is not None]
        assert len(offloaded) == 4 and offloaded == sorted(offloaded)
        slot_ptrs = [s.untyped_storage().data_ptr() for s in stream.slots]
        for j, i in enumerate(offloaded):
            weight = layers[i].self_attn.qkv_proj.weight
            assert weight.untyped_storage().data_ptr() == slot_ptrs[j % 2]
            assert layers[i].input_layernorm.weight.untyped_storage().data_ptr() not in slot_ptrs
        resident = [i for i in layers if i not in offloaded]
        for i in resident:
            assert layers[i].mlp.down_proj.weight.untyped_storage().data_ptr() not in slot_ptrs
        # the device keeps the resident layers and two slots: less than the whole model
        memory = llm.engine.core.executor.info.memory
        whole = sum(p.numel() * p.element_size() for p in runner.model.parameters())
        assert memory["weights_device"] <= whole - (len(offloaded) - 2) * stream.slots[0].numel()
    finally:
        llm.engine.executor.shutdown()


@pytest.mark.parametrize("layout", [dict(tensor_parallel_size=2),
                                    dict(pipeline_parallel_size=2)], ids=["tp2", "pp2"])
def test_offload_under_parallelism(deep_llama, resident, layout):
    """Each rank offloads its own share (PP: four of each stage's four layers)."""
    assert _run(deep_llama, cpu_offload_gb=TINY_BUDGET, **layout) == resident[0]


def test_offload_of_quantized_layers(deep_llama):
    """int8 layers (data and scales) travel like 16-bit ones."""
    assert (_run(deep_llama, quantization="int8", cpu_offload_gb=TINY_BUDGET / 2)
            == _run(deep_llama, quantization="int8"))


def test_offload_of_moe_experts(tmp_path):
    import transformers
    from tests.conftest import TINY
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(**{**TINY, "num_hidden_layers": 6}, num_local_experts=4,
                                     num_experts_per_tok=2)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path))
    assert (_run(str(tmp_path), cpu_offload_gb=5e-4) == _run(str(tmp_path)))


def test_offload_file_is_a_safetensors_file(deep_llama, tmp_path):
    from safetensors import safe_open
    from tessera.models.loader.offload_store import FileStore
    layout = [(0, 8192), (8192, 4096)]
    store = FileStore(str(tmp_path), layout, torch.device("cpu"))
    store.writable(0).copy_(torch.arange(8192, dtype=torch.int32).to(torch.uint8))
    store.writable(1).fill_(7)
    store.finish_loading()
    with safe_open(store.path, framework="pt") as f:
        assert f.get_tensor("layer.0").shape == (8192,)
        assert torch.equal(f.get_tensor("layer.1"), torch.full((4096,), 7, dtype=torch.uint8))
    assert store.data_start % 4096 == 0
    first = store.source(0).clone()  # read ahead in the order steps use them
    store.release(0, None)
    assert torch.equal(first, torch.arange(8192, dtype=torch.int32).to(torch.uint8))
    assert torch.equal(store.source(1), torch.full((4096,), 7, dtype=torch.uint8))
    store.release(1, None)
    store.close()
    assert not os.path.exists(store.path)


def test_plan_spreads_an_even_number_of_layers():
    nbytes = {i: GiB for i in range(32)}
    plan = plan_offload(nbytes, 8)
    assert len(plan.layers) == 10 and plan.freed_bytes == 8 * GiB  # ten out, two slots in
    assert plan.layers == spread(list(range(32)), 10)
    gaps = {b - a for a, b in zip(plan.layers, plan.layers[1:])}
    assert gaps <= {3, 4}  # evenly spread: resident layers between offloaded ones
    assert len(plan_offload(nbytes, 0.5).layers) == 4  # the least that frees anything


def test_plan_refuses_more_than_the_model():
    with pytest.raises(ValueError, match="cpu_offload_gb 40 exceeds .* 30.00 GiB"):
        plan_offload({i: GiB for i in range(32)}, 40)
    with pytest.raises(ValueError, match="at least four layers"):
        plan_offload({i: GiB for i in range(3)}, 0.1)


def test_offload_errors_name_the_problem(deep_llama, tmp_path):
    with pytest.raises(ValueError, match="cpu_offload_gb 5 exceeds"):
        LLM(deep_llama, skip_tokenizer_init=True, num_blocks=64, cpu_offload_gb=5)
    with pytest.raises(ValueError, match="offload_dir needs cpu_offload_gb"):
        EngineConfig.from_kwargs(model=deep_llama, offload_dir=str(tmp_path))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root may write anywhere)
            with pytest.raises(ValueError, match="offload_dir .* is not writable"):
                EngineConfig.from_kwargs(model=deep_llama, cpu_offload_gb=1,
                                         offload_dir=str(locked / "sub"))
    finally:
        locked.chmod(0o700)
    with pytest.raises(ValueError, match="cpu_offload_gb must be >= 0"):
        EngineConfig.from_kwargs(model=deep_llama, cpu_offload_gb=-1)
    with pytest.raises(ValueError, match=r"needs 1048576.00 GiB of CPU memory; the host has"):
        fits_host(2**50, "cpu_offload_gb")


def test_offload_favours_large_batches_unless_told():
    plain = EngineConfig.from_kwargs(model="x")
    assert (plain.scheduler.max_num_batched_tokens, plain.scheduler.max_num_seqs) == (2048, 256)
    off = EngineConfig.from_kwargs(model="x", cpu_offload_gb=4)
    assert (off.scheduler.max_num_batched_tokens, off.scheduler.max_num_seqs) == (16384, 512)
    told = EngineConfig.from_kwargs(model="x", cpu_offload_gb=4, max_num_seqs=64)
    assert (told.scheduler.max_num_batched_tokens, told.scheduler.max_num_seqs) == (16384, 64)
    again = EngineConfig.from_json(told.to_json())
    assert again.scheduler.max_num_seqs == 64


def test_plan_prices_what_is_stored():
    plan = OffloadPlan([1, 3, 5, 7], {1: 100, 3: 300, 5: 100, 7: 200})
    assert (plan.slot_bytes, plan.stored_bytes, plan.freed_bytes) == (300, 700, 100)


def test_bench_reports_the_transfer_bound(deep_llama):
    """`tessera bench latency`'s transfer bound: the bytes a step copies over the
    host-to-device rate measured at start-up, against the step time."""
    from tessera.bench.offline import random_weights_engine, run_latency, transfer_bound
    engine = random_weights_engine(deep_llama, cpu_offload_gb=TINY_BUDGET, num_blocks=64,
                                   max_model_len=512)
    try:
        memory = engine.executor.info.memory
        r = run_latency(engine, 2, 8, 4, bandwidth=1e10)
        assert r["offload_step_gib"] * 2**30 == memory["offload_step_bytes"]
        expected = memory["offload_step_bytes"] / memory["offload_bytes_per_s"]
        assert r["transfer_step_ms"] == pytest.approx(expected * 1e3)
        assert r["transfer_ratio"] == pytest.approx(expected / (r["median_step_ms"] / 1e3))
    finally:
        engine.shutdown()
    plain = random_weights_engine(deep_llama, num_blocks=64, max_model_len=512)
    try:
        assert transfer_bound(plain, 0.01) == {}
    finally:
        plain.shutdown()
