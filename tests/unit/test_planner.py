"""The planner without a model: traffic statistics, the latency fit, the simulator against
cases worked by hand, placement and memory, the deployment file's errors, `tessera plan`."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from tessera.planner.deployment import load_deployment
from tessera.planner.hardware import hardware
from tessera.planner.latency import ProfileModel, RooflineModel, ScaledModel, load_profile
from tessera.planner.placement import greedy, layouts
from tessera.planner.plan import cost, plan, render
from tessera.planner.simulator import SLO, Group, Instance, simulate
from tessera.planner.traffic import Arrival, Lengths, arrivals, merge, read_trace
from tessera.models.shapes import named_shape


@pytest.mark.parametrize("cv", [1.0, 3.0])
def test_arrivals_have_the_rate_and_burstiness_asked(cv):
    a = arrivals("m", rate=50, duration=400, cv=cv, lengths=Lengths.of((10, 20), 5))
    gaps = [y.time - x.time for x, y in zip(a, a[1:])]
    assert len(a) / 400 == pytest.approx(50, rel=0.1)
    assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(cv, rel=0.15)
    assert all(10 <= x.prompt_len <= 20 and x.output_len == 5 for x in a)
    assert a == arrivals("m", 50, 400, cv, Lengths.of((10, 20), 5))  # seeded


def test_trace_files_are_read_and_checked(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"time": 0.5, "model": "a", "prompt_len": 10, "output_len": 3}\n'
                    '{"time": 0.1, "model": "b", "prompt_len": 4, "output_len": 2}\n')
    got = read_trace(str(path))
    assert [x.model for x in got] == ["b", "a"]
    with pytest.raises(ValueError, match="names model 'b', which the deployment does not"):
        read_trace(str(path), {"a"})
    bad = tmp_path / "bad.csv"
    bad.write_text("time,model\n1,a\n")
    with pytest.raises(ValueError, match="row 1 needs time, model, prompt_len, output_len"):
        read_trace(str(bad))


def test_profile_fit_recovers_known_coefficients(tmp_path):
    truth = ProfileModel(0.004, 2e-5, 1e-4, 3e-8)
    samples = [(t, s, c, truth.step_seconds(t, s, c))
               for t, s, c in [(1, 1, 100), (8, 8, 4000), (64, 64, 50000), (512, 4, 2000),
                               (2048, 16, 9000), (32, 32, 10000), (256, 2, 300)]]
    fit = ProfileModel.fit(samples)
    for name in ("c0", "c_tok", "c_seq", "c_ctx"):
        assert getattr(fit, name) == pytest.approx(getattr(truth, name), rel=1e-6)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"samples": samples, "pipeline_parallel_size": 2}))
    model, meta = load_profile(str(path))
    assert model.interval_seconds(1, 1, 100) == pytest.approx(
        truth.step_seconds(1, 1, 100) / 2)
    with pytest.raises(ValueError, match=">= 4 timed steps"):
        ProfileModel.fit(samples[:3])


def test_the_fit_follows_decode_batches_the_line_cannot():
    """A CPU's GEMM with 2 or 3 rows is slower than with 4: the measured decode steps of
    each batch size correct the line, interpolated between batch sizes; prefill steps keep
    the line."""
    line = ProfileModel(0.050, 1e-4, 0.0, 0.0)
    slow = {1: 1.0, 2: 1.6, 4: 1.0, 8: 1.0}
    samples = [(b, b, 100 * b, line.step_seconds(b, b, 0) * slow[b]) for b in slow
               for _ in range(5)]
    samples += [(t, 2, 0, line.step_seconds(t, 2, 0)) for t in (64, 256, 512, 1024)]
    fit = ProfileModel.fit(samples)
    base = fit.c0 + fit.c_tok * 2 + fit.c_seq * 2 + fit.c_ctx * 200
    assert fit.step_seconds(2, 2, 200) == pytest.approx(
        line.step_seconds(2, 2, 0) * 1.6, rel=0.05)
    assert fit.step_seconds(3, 3, 0) / (fit.c0 + 3 * (fit.c_tok + fit.c_seq)) > 1.2
    assert fit.step_seconds(256, 2, 0) == pytest.approx(line.step_seconds(256, 2, 0), rel=0.05)
    assert base < fit.step_seconds(2, 2, 200)


def test_roofline_and_scaling_follow_the_layout():
    arch, hw = named_shape("llama-3-8b"), hardware("h200")
    one = RooflineModel(arch, hw)
    read = arch.num_parameters(active_only=True) - arch.vocab_size * arch.hidden_size
    assert one.step_seconds(1, 1, 0) == pytest.approx(1.5e-3 + read * 2 / 4.15e12, rel=1e-6)
    two = RooflineModel(arch, hardware({"preset": "h200", "count": 2}), tp=2)
    assert two.step_seconds(1, 1, 0) < one.step_seconds(1, 1, 0)
    pp = RooflineModel(arch, hw, pp=2)
    assert pp.interval_seconds(64, 64, 0) < pp.step_seconds(64, 64, 0)
    base = ProfileModel(0.005, 1e-5, 0, 0)
    scaled = ScaledModel(base, one, two)
    ratio = two.step_seconds(8, 8, 0) / one.step_seconds(8, 8, 0)
    assert scaled.step_seconds(8, 8, 0) == pytest.approx(base.step_seconds(8, 8, 0) * ratio)


def test_simulator_matches_a_hand_worked_case():
    """Steps of 10 ms: a request of 20 prompt tokens and 5 outputs alone takes one step to
    its first token and four more to finish; a second one arriving during the first's
    decode joins the batch (continuous batching)."""
    step = ProfileModel(0.010, 0.0, 0.0, 0.0)
    group = Group("g", [Instance("m", step, num_blocks=64)])
    r = simulate([group], [Arrival(0.0, "m", 20, 5), Arrival(0.015, "m", 20, 5)])
    a, b = r.records
    assert (a.ttft, a.e2e, a.tpot) == pytest.approx((0.010, 0.050, 0.010))
    assert b.ttft == pytest.approx(0.015)  # waits for the step in flight, prefills in the next
    assert b.e2e == pytest.approx(0.055)
    assert r.attainment({"m": SLO(ttft=0.012)}) == 0.5
    assert r.percentile("e2e", 50) == pytest.approx(0.055)


def test_simulator_shares_a_group_and_counts_device_time():
    """Two models on one group take turns: each step belongs to one model."""
    step = ProfileModel(0.010, 0.0, 0.0, 0.0)
    group = Group("g", [Instance("a", step, 64), Instance("b", step, 64)], devices=2)
    r = simulate([group], [Arrival(0.0, "a", 8, 3), Arrival(0.0, "b", 8, 3)])
    a, b = r.records
    assert a.finish == pytest.approx(0.050) and b.finish == pytest.approx(0.060)
    assert r.busy_seconds["g"] == pytest.approx(0.060)
    assert a.device_seconds == pytest.approx(3 * 0.010 * 2)  # three steps of its own
    # a request longer than the context is refused: it fails every SLO
    r = simulate([Group("g", [Instance("a", step, 64, max_model_len=16)])],
                 [Arrival(0.0, "a", 20, 5)])
    assert math.isinf(r.records[0].ttft) and r.attainment({"a": SLO(e2e=100)}) == 0.0


def test_models_taking_turns_step_at_their_colocated_times(tmp_path):
    """A step after the other model's takes the colocated profile's 15 ms, not 10 ms; a
    model alone on its group, or after its own step, keeps its solo times."""
    solo, turns = ProfileModel(0.010, 0, 0, 0), ProfileModel(0.015, 0, 0, 0)
    group = Group("g", [Instance("a", solo, 64, shared_latency=turns),
                        Instance("b", solo, 64, shared_latency=turns)])
    r = simulate([group], [Arrival(0.0, "a", 8, 3), Arrival(0.0, "b", 8, 3)])
    a, b = r.records
    assert (a.finish, b.finish) == pytest.approx((0.070, 0.085))
    alone = Group("g", [Instance("a", solo, 64, shared_latency=turns)])
    r = simulate([alone], [Arrival(0.0, "a", 8, 3)])
    assert r.records[0].finish == pytest.approx(0.030)
    samples = [(t, 1, 0, 0.01 + 1e-5 * t) for t in (1, 8, 64, 256, 512)]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"samples": samples}))
    assert load_profile(str(path), colocated=True)[0] is None  # none measured
    path.write_text(json.dumps({"samples": samples, "colocated": {
        "with": "x", "samples": [(t, n, c, 2 * dt) for t, n, c, dt in samples]}}))
    fit, meta = load_profile(str(path), colocated=True)
    assert fit.step_seconds(64, 1, 0) == pytest.approx(2 * (0.01 + 1e-5 * 64))
    assert "colocated" not in meta


def _deploy(tmp_path, **over) -> str:
    d = {"hardware": {"preset": "h200", "count": 2, "price_per_hour": 4.0,
                      "memory_price_per_gb_hour": 0.001},
         "duration": 10,
         "models": [{"name": "chat", "model": "llama-3-8b", "rate": 4, "cv": 2,
                     "prompt_len": [64, 256], "output_len": 32,
                     "slo": {"ttft": 0.5, "tpot": 0.05}},
                    {"name": "small", "model": "qwen2.5-0.5b", "rate": 6,
                     "prompt_len": 128, "output_len": 16, "slo": {"e2e": 1.0}}]}
    d.update(over)
    path = tmp_path / "deploy.json"
    path.write_text(json.dumps(d))
    return str(path)


def test_placement_fits_memory_and_places_every_model(tmp_path):
    d = load_deployment(_deploy(tmp_path))
    assert {(x.group_size, x.tp, x.pp) for x in layouts(d)} == {(1, 1, 1), (2, 2, 1),
                                                                (2, 1, 2)}
    traffic = merge(*(arrivals(m.name, m.rate, d.duration, m.cv, m.lengths) for m in d.models))
    p = greedy(d, layouts(d)[0], traffic)
    assert {n for g in p.groups for n in g} == {"chat", "small"}
    assert p.attainment > 0.9
    c = cost(d, p)
    used = sum(1 for g in p.groups if g) * p.layout.group_size
    assert c.provisioned_per_hour == pytest.approx(used * 4.0 + c.memory_gb * 0.001)
    busy = sum(r.device_seconds for r in p.result.records)
    assert c.formula_per_hour == pytest.approx(4.0 * busy / d.duration + c.memory_gb * 0.001)
    # a 70B model in bf16 fits no single H200 with a KV cache: only the two-device groups
    big = load_deployment(_deploy(tmp_path, models=[
        {"name": "big", "model": "llama-3-70b", "rate": 1, "slo": {"ttft": 5}}]))
    traffic = arrivals("big", 1, 10)
    assert greedy(big, layouts(big)[0], traffic) is None
    assert greedy(big, layouts(big)[1], traffic) is not None


def test_deployment_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        load_deployment(_deploy(tmp_path, models=[{"name": "x", "model": "gpt-9", "rate": 1,
                                                   "slo": {"ttft": 1}}]))
    with pytest.raises(ValueError, match="needs 131.*GiB of weights; 1 x H200 hold"):
        load_deployment(_deploy(tmp_path, hardware="h200", models=[
            {"name": "x", "model": "llama-3-70b", "rate": 1, "slo": {"ttft": 1}}]))
    with pytest.raises(ValueError, match="slo must set some of ttft, tpot, e2e"):
        load_deployment(_deploy(tmp_path, models=[{"name": "x", "model": "llama-3-8b",
                                                   "rate": 1, "slo": {"p99": 1}}]))
    with pytest.raises(ValueError, match="unknown hardware preset 'tpu'"):
        load_deployment(_deploy(tmp_path, hardware="tpu"))
    with pytest.raises(ValueError, match="rate must be > 0"):
        load_deployment(_deploy(tmp_path, models=[{"name": "x", "model": "llama-3-8b",
                                                   "slo": {"ttft": 1}}]))


def test_plan_reports_and_says_when_the_slo_cannot_be_met(tmp_path, capsys):
    from tessera.cli import main
    assert main(["plan", _deploy(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "chosen: groups of" in out and "predicted SLO attainment" in out
    assert "latency: roofline (no profile" in out and "$" in out and "alternatives (rejected):" in out
    tight = _deploy(tmp_path, models=[{"name": "chat", "model": "llama-3-8b", "rate": 2,
                                       "prompt_len": 4096, "output_len": 8,
                                       "slo": {"ttft": 0.001}}])
    report = plan(load_deployment(tight))
    assert report.needs is not None and "would not" in report.needs
    assert "is not met" in render(report)
    assert main(["plan", tight]) == 3


def test_a_profile_written_again_is_read_again(tmp_path):
    """latency_model caches a profile's fit per version of the file, not per path."""
    import dataclasses
    import os

    from tessera.planner.placement import latency_model
    d = load_deployment(_deploy(tmp_path))
    path = tmp_path / "chat.json"
    fits = []
    for c0 in (0.010, 0.020):
        path.write_text(json.dumps({"samples": [(t, 1, 0, c0 + 1e-5 * t)
                                                for t in (1, 8, 64, 256, 512)]}))
        os.utime(path, ns=(int(c0 * 1e12), int(c0 * 1e12)))  # distinct mtimes
        spec = dataclasses.replace(d.models[0], profile=str(path))
        fits.append(latency_model(spec, d.hardware, 1, 1).step_seconds(64, 1, 0))
    assert fits == pytest.approx([0.010 + 64e-5, 0.020 + 64e-5])
