"""The planner's choice of precision (planner/precision.py): `precision: auto` plans each
candidate and keeps the cheapest plan reaching the target attainment (objective cost) or
the most precise one (objective accuracy); a profile measured at one precision is scaled
to another by the roofline; the plan's choice is what a deployment serves."""
from __future__ import annotations

import dataclasses
import json

import pytest

from tessera.planner.deployment import load_deployment
from tessera.planner.latency import RooflineModel, ScaledModel
from tessera.bench.profile import held_precision
from tessera.planner.placement import device_seconds, latency_model, profile_precision
from tessera.planner.plan import plan, render
from tessera.planner.precision import COST_TOLERANCE, MAX_EXHAUSTIVE
from tessera.planner.weights import ModelBytes


def _file(tmp_path, models, **over) -> str:
    d = {"hardware": {"preset": "h200", "count": 1}, "duration": 20, "models": models, **over}
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(d))
    return str(path)


def _chat(**over) -> dict:
    return {"name": "chat", "model": "llama-3-8b", "precision": "auto", "rate": 0.5,
            "prompt_len": 128, "output_len": 32, "slo": {"tpot": 0.05}, **over}


def test_the_cheapest_or_the_most_precise_plan_reaching_the_target(tmp_path):
    """A loose TPOT every precision meets: cost takes int8 (fp8 reads as many bytes, so
    it ties on cost and loses on precision; int4 where listed), accuracy keeps bf16."""
    report = plan(load_deployment(_file(tmp_path, [_chat()])))
    assert [t.precisions["chat"] for t in report.trials] == ["bfloat16", "int8", "fp8"]
    assert all(t.best.attainment == 1.0 for t in report.trials)
    assert report.deployment.models[0].precision == "int8"
    text = render(report)
    assert "(chosen among bfloat16, int8, fp8)" in text and "chat int8: attainment" in text
    assert text.count("<- chosen") == 1 and "objective cost" in text
    listed = plan(load_deployment(_file(tmp_path, [_chat(precisions=["int4", "bfloat16"])])))
    assert listed.deployment.models[0].precision == "int4"
    precise = plan(load_deployment(_file(tmp_path, [_chat()], objective="accuracy")))
    assert precise.deployment.models[0].precision == "bfloat16"


def test_a_tpot_only_fewer_bytes_meet_is_met_by_the_most_precise_that_does(tmp_path):
    d = load_deployment(_file(tmp_path, [_chat()]))
    hw, arch = d.hardware, d.models[0].arch
    step = {p: RooflineModel(arch, hw, weights=ModelBytes(arch, p)).step_seconds(1, 1, 160)
            for p in ("bfloat16", "int8")}
    tpot = (step["bfloat16"] + step["int8"]) / 2
    report = plan(load_deployment(_file(tmp_path, [_chat(slo={"tpot": tpot})],
                                        objective="accuracy")))
    by = {t.precisions["chat"]: t.best.attainment for t in report.trials}
    assert by["bfloat16"] < 0.5 and by["int8"] > 0.99
    assert report.deployment.models[0].precision == "int8" and report.needs is None


def test_a_model_that_fits_only_quantized_gets_a_precision_that_fits(tmp_path):
    """The 70B in bf16 (131 GiB) leaves one H200 no KV cache; int8 fits."""
    report = plan(load_deployment(_file(tmp_path, [
        {"name": "big", "model": "llama-3-70b", "precision": "auto", "rate": 0.2,
         "prompt_len": 256, "output_len": 16, "slo": {"e2e": 30}}])))
    by = {t.precisions["big"]: t.best for t in report.trials}
    assert by["bfloat16"] is None and by["int8"] is not None
    assert report.deployment.models[0].precision == "int8"
    assert "big bfloat16: fits no layout" in render(report)


def test_many_auto_models_are_chosen_by_coordinate_descent(tmp_path, monkeypatch):
    """Four models of two candidates: descent plans fewer than the 16 and lands where
    planning all 16 does (within the cost tolerance)."""
    models = [{"name": f"m{i}", "model": "qwen2.5-7b" if i % 2 else "qwen2.5-0.5b",
               "precision": "auto", "precisions": ["bfloat16", "int4"], "rate": 1,
               "prompt_len": 64, "output_len": 16, "slo": {"e2e": 5}} for i in range(4)]
    d = load_deployment(_file(tmp_path, models, duration=5))
    descent = plan(d)
    assert 2 ** 4 > MAX_EXHAUSTIVE and len(descent.trials) < 2 ** 4
    monkeypatch.setattr("tessera.planner.precision.MAX_EXHAUSTIVE", 2 ** 4)
    every = plan(d)
    assert len(every.trials) == 2 ** 4 and descent.best.attainment == 1.0
    busy = [device_seconds(t.best) for t in every.trials]
    assert device_seconds(descent.best) <= min(busy) * (1 + COST_TOLERANCE) < max(busy)
    assert ({m.name: m.precision for m in descent.deployment.models}
            == {m.name: m.precision for m in every.deployment.models})


def test_no_plan_reaching_the_target_or_none_fitting(tmp_path):
    """None reaching it: the highest attainment, then the cheapest, and what would meet it
    is said; none fitting: the fewest bytes, and the report says none fits."""
    hopeless = plan(load_deployment(_file(tmp_path, [_chat(slo={"tpot": 1e-4})])))
    assert all(t.best.attainment == 0.0 for t in hopeless.trials)
    assert hopeless.deployment.models[0].precision == "int8" and hopeless.needs
    huge = plan(load_deployment(_file(tmp_path, [
        {"name": "big", "model": "llama-3-70b", "precision": "auto", "rate": 0.2,
         "prompt_len": 300_000, "output_len": 16, "slo": {"e2e": 30}}])))
    assert huge.best is None and all(t.best is None for t in huge.trials)
    assert huge.deployment.models[0].precision == "int8"
    assert "(the smallest of bfloat16, int8, fp8; none fits)" in render(huge)


def test_a_profile_is_scaled_to_the_precision_planned(tmp_path):
    samples = [(t, 1, 0, 0.004 + 2e-5 * t) for t in (1, 8, 64, 256, 512)]
    profile = tmp_path / "bf16.json"
    profile.write_text(json.dumps({"dtype": "bfloat16", "samples": samples}))
    d = load_deployment(_file(tmp_path, [_chat(profile=str(profile))]))
    spec = d.models[0]
    base = latency_model(spec, d.hardware, 1, 1)  # auto starts at bf16: as measured
    assert not isinstance(base, ScaledModel)
    int8 = latency_model(dataclasses.replace(spec, precision="int8"), d.hardware, 1, 1)
    assert isinstance(int8, ScaledModel)
    assert int8.step_seconds(1, 1, 0) < 0.75 * base.step_seconds(1, 1, 0)
    profile.write_text(json.dumps({"dtype": "bfloat16", "precision": "int8",
                                   "samples": samples}))
    measured = latency_model(dataclasses.replace(spec, precision="int8"), d.hardware, 1, 1)
    assert not isinstance(measured, ScaledModel)
    # what a profile records: the quantized format holding the most bytes, else the dtype
    assert held_precision({"bfloat16": 300, "int4": 100, "int8": 10}, "bfloat16") == "int4"
    assert held_precision({"float32": 300}, "float32") == "float32"
    assert profile_precision({"precision": "none", "dtype": "float16"}, "int8") == "float16"
    assert profile_precision({"dtype": "float32"}, "int8") == "int8"  # taken as planned


def test_auto_fields_are_checked_by_name(tmp_path):
    with pytest.raises(ValueError, match="precisions lists auto's candidates"):
        load_deployment(_file(tmp_path, [_chat(precision="int8", precisions=["int8"])]))
    for bad in (["int3"], [], "int8"):
        with pytest.raises(ValueError, match="precisions must be a list of some of"):
            load_deployment(_file(tmp_path, [_chat(precisions=bad)]))
    with pytest.raises(ValueError, match="precision 'int2' is not one of .*, or auto"):
        load_deployment(_file(tmp_path, [_chat(precision="int2")]))
    with pytest.raises(ValueError, match="objective 'speed' is not cost or accuracy"):
        load_deployment(_file(tmp_path, [_chat()], objective="speed"))
    with pytest.raises(ValueError, match="needs 3.*GiB of weights even at int4; 1 x H200 "):
        load_deployment(_file(tmp_path, [_chat(model="llama-3-70b", precisions=["int4"])],
                              hardware={"preset": "h200", "count": 1, "memory_gib": 20}))


def test_auto_is_refused_for_a_gguf_file(tmp_path):
    """A GGUF file is served as it holds its weights: its precision is not the plan's."""
    import numpy as np

    from tests.models import test_gguf_loader as g
    _, tensors = g._tiny_model("llama", np.random.default_rng(0), with_bias=False)
    path = str(tmp_path / "tiny.gguf")
    g._write_gguf(path, "llama", tensors)
    with pytest.raises(ValueError, match="precision auto: a GGUF file is served in its own"):
        load_deployment(_file(tmp_path, [_chat(model=path)]))


def test_a_deployment_serves_the_precision_the_plan_chose(tmp_path):
    from tessera.server.deployment import place_models
    served, text = place_models(_file(tmp_path, [_chat()]), {"device": "cpu"})
    (config, _), = served[0].placements
    assert config.quant.quantization == "int8" and "<- chosen" in text
