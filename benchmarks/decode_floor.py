"""How far a decode step is from its GPU time: engine step vs. graph replay vs. GEMVs.

Llama-3-8B shape, random bf16 weights, on one GPU. For batch 1 (prompt 32) and batch 64
(prompt 1024): the engine's median decode step (`run_latency`), then the captured decode
graph of that batch replayed alone (the forward with no CPU in the way), the LM head +
argmax alone, and the difference (the CPU side and the sync). Then each weight matrix of
a layer as a one-row GEMV (F.linear, 200 in a CUDA graph): us and TB/s read.

    python benchmarks/decode_floor.py --out $OUT/floor.json
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tessera.bench.offline import measure_bandwidth, random_weights_engine, run_latency


def time_graph(fn, reps: int = 20) -> float:
    """Mean ms of fn() over `reps` calls captured in one CUDA graph, replayed 5 times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (5 * reps)


def replay_ms(graph, reps: int = 50) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="floor.json")
    args = ap.parse_args()
    bw = measure_bandwidth(torch.device("cuda"))
    engine = random_weights_engine(max_num_seqs=256, max_num_batched_tokens=8192)
    runner = engine.core.executor.runner
    model, graphs = runner.model, runner.graphs
    run_latency(engine, 2, 32, 8, bw, seed=9)
    res: dict = {"bandwidth_tb_s": bw / 1e12, "device": torch.cuda.get_device_name()}
    rows = []
    for batch, prompt in ((1, 32), (64, 1024)):
        lat = run_latency(engine, batch, prompt, 128 if batch > 1 else 256, bw)
        graph, hidden = graphs.graphs[batch]  # its buffers still hold the last step's inputs
        fwd = replay_ms(graph)
        h = hidden[:batch]
        head = time_graph(lambda: model.compute_logits(h).argmax(dim=-1))
        step = lat["median_step_ms"]
        rows.append((batch, step, fwd, head, step - fwd - head, lat["roofline_step_ms"]))
        res[f"batch{batch}"] = dict(step_ms=step, graph_ms=fwd, head_ms=head,
                                    roofline_ms=lat["roofline_step_ms"])
    a = engine.arch
    shapes = {"qkv": (a.hidden_size, (a.num_heads + 2 * a.num_kv_heads) * a.head_dim),
              "o": (a.num_heads * a.head_dim, a.hidden_size),
              "gate_up": (a.hidden_size, 2 * a.intermediate_size),
              "down": (a.intermediate_size, a.hidden_size),
              "lm_head": (a.hidden_size, a.vocab_size)}
    gemv = {}
    for name, (k, n) in shapes.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        ms = time_graph(lambda: F.linear(x, w), reps=200)
        gemv[name] = dict(us=ms * 1e3, tb_s=w.numel() * 2 / (ms * 1e-3) / 1e12)
    res["gemv"] = gemv
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\n{res['device']}, copy bandwidth {bw / 1e12:.2f} TB/s")
    print(f"{'batch':>5} {'step ms':>8} {'graph ms':>9} {'head ms':>8} {'CPU+sync':>9} {'roofline':>9}")
    for r in rows:
        print(f"{r[0]:5d} {r[1]:8.2f} {r[2]:9.2f} {r[3]:8.2f} {r[4]:9.2f} {r[5]:9.2f}")
    print(f"{'GEMV (M=1)':12} {'us':>8} {'TB/s':>6}")
    for name, g in gemv.items():
        print(f"{name:12} {g['us']:8.1f} {g['tb_s']:6.2f}")


if __name__ == "__main__":
    main()
