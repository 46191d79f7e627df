"""Small-batch decode with and without the skinny GEMM and PDL, on one GPU.

For each mode (skinny GEMM off/on x programmatic dependent launch off/on) a fresh engine
(Llama-3-8B shape, random bf16 weights, decode CUDA graphs) runs the latency workload at
batch 1 (prompt 32, 256 new tokens) and batches 4 and 16 (prompt 512, 128 new); then the
kernels of its batch-1 decode graph are profiled (mean us per replay, by kernel; and one
decoder layer's kernels in order: duration, overlap with the one before under PDL, and
the time each adds to the step). One table last; full JSON to --out.

    python benchmarks/small_batch_ab.py --out $OUT/ab.json [--modes off/off,auto/on/16]
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from tessera.bench.offline import measure_bandwidth, random_weights_engine, run_latency
from tessera.kernels import skinny_gemm
from tessera.kernels.pdl import set_pdl
from tessera.layers.linear import set_norm_fusion, set_qkv_rope, set_skinny_gemm
from tessera.llm_engine import LLMEngine
from tessera.worker import model_runner

DEFAULT_PREFETCH_MIB = skinny_gemm.PREFETCH_BYTES >> 20
DEFAULT_TRIGGER_STEPS = skinny_gemm.TRIGGER_STEPS
ARGMAX_KERNEL = model_runner.argmax_last


def graph_kernels(engine: LLMEngine, reps: int = 20) -> dict:
    """Mean us per batch-1 graph replay of each kernel, and the replay's wall time."""
    from torch.profiler import ProfilerActivity, profile
    graph, _ = engine.core.executor.runner.graphs.graphs[1]
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    wall_us = start.elapsed_time(end) * 1e3 / reps
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    kernels: dict[str, list] = {}
    events = []
    for ev in prof.events():
        if ev.device_type.name == "CUDA" and ev.device_time > 0:
            kernels.setdefault(ev.name[:80], []).append(ev.device_time)
            events.append((ev.time_range.start, ev.time_range.end, ev.name))
    table = sorted(((n, len(t) / reps, sum(t) / reps) for n, t in kernels.items()),
                   key=lambda r: -r[2])
    return dict(replay_us=wall_us, kernel_sum_us=sum(r[2] for r in table), kernels=table,
                layer=layer_timeline(sorted(events)))


def layer_timeline(events: list) -> list:
    """The kernels of one decoder layer, in order, from a profile's (start, end, name) in
    us: cycles start at each decode-attention kernel; per position of the cycle, the
    median duration, the median gap from the previous kernel's end to its start (negative:
    they overlap, as PDL lets them) and the median time it adds to the timeline's end."""
    starts = [i for i, (_, _, name) in enumerate(events) if "decode_partial" in name]
    cycles = [events[a:b] for a, b in zip(starts, starts[1:]) if b - a == starts[1] - starts[0]]
    rows = []
    for j in range(len(cycles[0]) if cycles else 0):
        dur = sorted(c[j][1] - c[j][0] for c in cycles)
        gap = sorted(c[j][0] - c[j - 1][1] for c in cycles if j)
        adds = sorted(c[j][1] - max(k[1] for k in c[:j]) for c in cycles if j)
        rows.append(dict(kernel=cycles[0][j][2][:40], dur_us=dur[len(dur) // 2],
                         gap_us=gap[len(gap) // 2] if gap else None,
                         adds_us=adds[len(adds) // 2] if adds else None))
    return rows


def load_config_overrides(path: str) -> dict:
    """skinny_gemm_sweep.py --uses' JSON ({"n,k,gated": config fields}) as CONFIG_OVERRIDES."""
    with open(path) as f:
        return {(int(n), int(k), bool(int(g))): skinny_gemm.SkinnyConfig(*cfg)
                for key, cfg in json.load(f).items() for n, k, g in [key.split(",")]}


def run_mode(mode: str, bandwidth: float) -> dict:
    """mode: skinny (off|auto) / pdl (off|on) [/ MiB of weights prefetched into L2
    [/ shared-memory cap in KB per GEMM program, 0: none [/ q/k/v + rotary fused: on|off]]]
    [+configs=JSON] (skinny-GEMM config overrides from skinny_gemm_sweep.py --uses)
    [+argmax=torch|kernel] (the plain-greedy step's argmax)
    [+norms=fused|kernel] (decode steps' RMSNorms inside the projections, or kernels)
    [+trigger=N] (GEMMs let the next kernel launch N K-steps before their loop ends)."""
    head, *extras = mode.split("+")
    parts = head.split("/")
    parts += [str(DEFAULT_PREFETCH_MIB), "0", "on"][len(parts) - 2:]
    set_skinny_gemm(parts[0])
    set_pdl(parts[1] == "on")
    skinny_gemm.PREFETCH_BYTES = int(parts[2]) << 20
    skinny_gemm.SMEM_CAP_BYTES = int(parts[3]) << 10 or None
    set_qkv_rope(parts[4] == "on")
    skinny_gemm.CONFIG_OVERRIDES = {}
    model_runner.argmax_last = ARGMAX_KERNEL
    set_norm_fusion(True)
    skinny_gemm.TRIGGER_STEPS = DEFAULT_TRIGGER_STEPS
    for extra in extras:
        key, value = extra.split("=", 1)
        if key == "configs":
            skinny_gemm.CONFIG_OVERRIDES = load_config_overrides(value)
        elif key == "argmax":  # the greedy argmax: "torch" (PyTorch's) or "kernel"
            model_runner.argmax_last = (ARGMAX_KERNEL if value == "kernel"
                                        else lambda x: x.argmax(dim=-1))
        elif key == "trigger":  # K steps before a GEMM's end at which the next launches
            skinny_gemm.TRIGGER_STEPS = int(value)
        elif key == "norms":  # the norms between projections: "fused" or "kernel"
            set_norm_fusion(value == "fused")
        else:
            raise ValueError(f"unknown mode option {key!r} in {mode!r}")
    engine = random_weights_engine(max_num_seqs=64, max_num_batched_tokens=4096)
    run_latency(engine, 2, 32, 8, bandwidth, seed=9)  # warm-up
    res = {"b1": run_latency(engine, 1, 32, 256, bandwidth)}
    for batch in (4, 16):
        res[f"b{batch}"] = run_latency(engine, batch, 512, 128, bandwidth)
    res["graph"] = graph_kernels(engine)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="ab.json")
    ap.add_argument("--modes", default="off/off,auto/off,off/on,auto/on",
                    help="skinny/pdl[/prefetch[/smem[/rope]]][+configs=JSON][+argmax=torch][+norms=kernel][+trigger=N]: "
                         "off|auto / off|on [/ MiB, e.g. 0|8|16 [/ KB, 0: no cap [/ on|off]]]")
    args = ap.parse_args()
    bandwidth = measure_bandwidth(torch.device("cuda"))
    results: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                     "bandwidth_tb_s": bandwidth / 1e12, "modes": {}}
    for mode in args.modes.split(","):
        try:
            results["modes"][mode] = run_mode(mode, bandwidth)
        except Exception as e:  # a variant that does not compile: say so, go on
            print(f"{mode}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        r = results["modes"][mode]
        print(f"[{time.strftime('%H:%M:%S')}] {mode}: b1 {r['b1']['tok_s']:.1f} tok/s, graph "
              f"{r['graph']['replay_us']:.0f} us", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(f"\n{results['device']}, copy bandwidth {results['bandwidth_tb_s']:.2f} TB/s")
    print(f"{'mode':<22}{'b1 tok/s':>9}{'ms/step':>8}{'roofline':>9}{'graph us':>9}"
          f"{'kernels us':>11}{'b4 tok/s':>9}{'b16 tok/s':>10}")
    for mode, r in results["modes"].items():
        print(f"{mode:<22}{r['b1']['tok_s']:>9.1f}{r['b1']['median_step_ms']:>8.2f}"
              f"{r['b1']['roofline_ratio']:>9.1%}{r['graph']['replay_us']:>9.0f}"
              f"{r['graph']['kernel_sum_us']:>11.0f}{r['b4']['tok_s']:>9.0f}"
              f"{r['b16']['tok_s']:>10.0f}")
    if not results["modes"]:
        return
    last = list(results["modes"].values())[-1]["graph"]
    print("kernels of the last mode's batch-1 graph (us per replay):")
    for name, per, us in last["kernels"][:14]:
        print(f"  {us:8.1f}  x{per:5.1f}  {name}")
    print("one layer of it, in order (us; gap: from the previous kernel's end; adds: to the "
          "timeline's end):")
    for r in last["layer"]:
        print(f"  {r['kernel']:<40} dur {r['dur_us']:7.1f}  gap {r['gap_us'] or 0:6.1f}  "
              f"adds {r['adds_us'] or 0:6.1f}")


if __name__ == "__main__":
    main()
