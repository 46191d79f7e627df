"""The planner's weight bytes (planner/weights.py) as the engine's policy holds and reads
them: 16-bit embeddings and norms, the LM head 16-bit unless named, a tied model's
quantized head a copy of its own; the roofline reads them; a deployment file's
lm_head_precision and kv_cache_dtype are counted and reach the engines each model is
served by."""
from __future__ import annotations

import json

import pytest

from tessera.models.shapes import named_shape
from tessera.planner.deployment import load_deployment
from tessera.planner.hardware import hardware
from tessera.planner.latency import STEP_OVERHEAD_S, RooflineModel
from tessera.planner.weights import ModelBytes

# Llama-3-8B by hand: 32 layers of q/k/v (4096 x 6144), o (4096 x 4096) and gate/up/down
# (3 x 4096 x 14336); a 128256 x 4096 table and an untied head of the same; 65 norms
LAYERS_8B = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
TABLE_8B = 128256 * 4096
NORMS_8B = 65 * 4096


def test_an_untied_model_keeps_its_tables_16_bit_and_reads_only_the_head():
    arch = named_shape("llama-3-8b")
    bf16 = ModelBytes(arch)
    assert bf16.stored == 2 * arch.num_parameters() == 2 * (LAYERS_8B + 2 * TABLE_8B + NORMS_8B)
    assert bf16.read() == 2 * (LAYERS_8B + TABLE_8B + NORMS_8B)  # not the embedding table
    int8 = ModelBytes(arch, "int8")
    assert int8.stored == LAYERS_8B + 2 * 2 * TABLE_8B + 2 * NORMS_8B
    assert int8.read() == LAYERS_8B + 2 * TABLE_8B + 2 * NORMS_8B
    head8 = ModelBytes(arch, "int4", lm_head="int8")
    assert head8.stored == pytest.approx(0.53 * LAYERS_8B + 3 * TABLE_8B + 2 * NORMS_8B)
    assert head8.read() == pytest.approx(0.53 * LAYERS_8B + TABLE_8B + 2 * NORMS_8B)
    assert ModelBytes(arch, "int4").read() / 1e9 == pytest.approx(4.75, abs=0.01)  # RESULTS.md


def test_a_tied_model_reads_its_table_as_the_head_unless_the_head_is_quantized():
    arch = named_shape("smollm2-135m")
    assert arch.tie_word_embeddings
    table = arch.vocab_size * arch.hidden_size
    plain, head = ModelBytes(arch, "int8"), ModelBytes(arch, "int8", lm_head="int8")
    assert head.stored == plain.stored + table  # the head's int8 copy beside the table
    assert head.read() == plain.read() - table  # a byte a weight read instead of two
    assert ModelBytes(arch).stored == 2 * arch.num_parameters()


def test_bad_precisions_name_the_field():
    arch = named_shape("llama-3-8b")
    with pytest.raises(ValueError, match="precision 'int3' is not one of"):
        ModelBytes(arch, "int3")
    with pytest.raises(ValueError, match="LM head precision 'bfloat16' is not one of int8"):
        ModelBytes(arch, "int8", lm_head="bfloat16")


def test_the_roofline_reads_the_policys_bytes():
    arch, hw = named_shape("llama-3-8b"), hardware("h200")
    for weights in (ModelBytes(arch), ModelBytes(arch, "int4"), ModelBytes(arch, "fp8", "fp8")):
        roof = RooflineModel(arch, hw, weights=weights)
        assert roof.step_seconds(1, 1, 0) == pytest.approx(
            STEP_OVERHEAD_S + weights.read() / hw.bandwidth)
        assert roof.weight_bytes == weights.stored
    assert RooflineModel(arch, hw).weights == ModelBytes(arch)


def _file(tmp_path, **model) -> str:
    d = {"hardware": {"preset": "h200", "count": 1}, "duration": 5,
         "models": [{"name": "chat", "model": "llama-3-8b", "rate": 2, "prompt_len": 128,
                     "output_len": 16, "slo": {"e2e": 5}, **model}]}
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(d))
    return str(path)


def test_a_deployments_lm_head_precision_is_counted_and_served(tmp_path):
    from tessera.server.deployment import place_models
    path = _file(tmp_path, precision="int4", lm_head_precision="int8")
    spec = load_deployment(path).models[0]
    assert spec.weight_bytes == ModelBytes(spec.arch, "int4", "int8").stored
    served, report = place_models(path, {"device": "cpu"})
    assert "int4 (LM head int8), 4.9 GiB of weights" in report
    quant = served[0].placements[0][0].quant
    assert (quant.quantization, quant.lm_head_quantization) == ("int4", "int8")
    plain, _ = place_models(_file(tmp_path, precision="int8"), {"device": "cpu"})
    assert plain[0].placements[0][0].quant.lm_head_quantization is None
    with pytest.raises(ValueError, match="lm_head_precision 'fp16' is not one of int8"):
        load_deployment(_file(tmp_path, lm_head_precision="fp16"))
    with pytest.raises(ValueError, match="--deployment sets lm_head_quantization per model"):
        place_models(path, {"device": "cpu", "lm_head_quantization": "int8"})


def test_a_deployments_fp8_kv_cache_halves_its_kv_bytes_and_is_served(tmp_path):
    from tessera.planner.placement import latency_model
    from tessera.server.deployment import place_models
    plain = load_deployment(_file(tmp_path)).models[0]
    path = _file(tmp_path, kv_cache_dtype="fp8")
    fp8 = load_deployment(path).models[0]
    assert fp8.kv_bytes_per_token * 2 == plain.kv_bytes_per_token == 2 * 32 * 2 * 8 * 128
    hw = hardware("h200")
    context = 100_000  # the cache read of a step: half the bytes
    kv_read = plain.arch.kv_bytes_per_token * context / hw.bandwidth
    slow, fast = (latency_model(s, hw, 1, 1).step_seconds(1, 1, context) for s in (plain, fp8))
    assert slow - fast == pytest.approx(kv_read, rel=1e-6)
    served, report = place_models(path, {"device": "cpu"})
    assert "fp8 KV cache" in report
    assert served[0].placements[0][0].cache.kv_cache_dtype == "fp8"
    with pytest.raises(ValueError, match="kv_cache_dtype 'int8' is not one of auto, fp8"):
        load_deployment(_file(tmp_path, kv_cache_dtype="int8"))
    with pytest.raises(ValueError, match="--deployment sets kv_cache_dtype per model"):
        place_models(path, {"device": "cpu", "kv_cache_dtype": "fp8"})
