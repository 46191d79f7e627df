"""Every multi-GPU figure of one host of N GPUs in one call: a table at the end, JSON in --out.

Sections (`--sections`, comma-separated; default all of them, in this order):
  correctness  tiny random Llama and Mixtral checkpoints, bf16 (or --tiny-dtype), greedy,
               32 new tokens, 3 prompts: leading greedy tokens identical to one GPU's, the
               largest |logprob difference| over that prefix, and at each divergence the
               one-GPU run's logprob gap between the two tokens (a near-tie or not), for
               TP=2, TP=N, PP=2, TP=2 x PP=2 and Mixtral with experts sliced (moe_tp2) or
               whole per rank (ep2).
  scaling      Llama-3-8B shape, random bf16: batch-1 decode tok/s at TP=1, 2, 4, 8 (<= N),
               with the bandwidth each GPU sustains: (weight + KV bytes per GPU) / step time.
  throughput   Llama-3-8B, --num-prompts requests of 128-1024 prompt and 128-512 new
               tokens, all at once: TP=2, PP=2 (and TP=1 with --with-tp1-throughput).
  70b          Llama-3-70B shape: batch-1 decode at TP=N (an engine error, e.g. out of
               memory at N=2, is recorded instead).
  moe          Mixtral-8x7B shape, TP=N with expert parallelism: the throughput workload
               and batch-1 decode.

    python benchmarks/multi_gpu.py --out $OUT/multi.json
    python benchmarks/multi_gpu.py --sections scaling,70b --out $OUT/multi.json  # split runs
    python benchmarks/multi_gpu.py --cpu-smoke --out /tmp/multi.json  # correctness, CPU fp32

Each configuration is guarded (an error is recorded, the rest runs); the JSON (merged into
what --out holds) is rewritten after each, so a run cut off by a time limit keeps its part.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import torch

from tessera import LLM, SamplingParams
from tessera.bench.offline import (_weight_bytes_read, measure_bandwidth, random_weights_engine,
                                   run_latency, run_throughput)
from tessera.distributed.topology import gpu_links
from tessera.engine.client import InprocClient

PROMPTS = [[1, 2, 3, 4], list(range(10, 70)), [7] * 9]
NEW_TOKENS = 32
THROUGHPUT = dict(max_num_seqs=512, max_num_batched_tokens=8192, max_model_len=2048)
DECODE = dict(max_num_seqs=16, max_model_len=2048)


def log(*a) -> None:
    print(time.strftime("[%H:%M:%S]"), *a, flush=True)


def free(engine: InprocClient) -> None:
    """Stops the engine's workers (the worker processes of a TP/PP engine)."""
    engine.shutdown()


def cleanup() -> None:
    """Before each engine: return what earlier (now unreferenced) engines held on GPU 0,
    which would otherwise count against the KV budget of rank 0 of the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        if torch.cuda.memory_allocated() > 2**30:
            log(f"warning: {torch.cuda.memory_allocated() / 2**30:.1f} GiB still allocated here")


def guarded(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except Exception as e:  # recorded, and the next configuration still runs
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:2000]}


# -- correctness ---------------------------------------------------------------------------
def tiny_checkpoint(kind: str) -> str:
    import transformers
    torch.manual_seed(0)
    shape = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, initializer_range=0.08)
    cfg = (transformers.LlamaConfig(**shape) if kind == "llama" else
           transformers.MixtralConfig(**shape, num_local_experts=4, num_experts_per_tok=2))
    folder = tempfile.mkdtemp(prefix=f"tessera-tiny-{kind}-")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def greedy(folder: str, base: dict, **layout) -> list[tuple[list[int], list[dict]]]:
    """(token ids, {token: logprob} of the chosen and top-2 tokens at each step) per prompt."""
    cleanup()
    llm = LLM(folder, skip_tokenizer_init=True, **base, **layout)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(
            temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=2))
    finally:
        free(llm.engine)
    return [(c.token_ids, [{t: lp.logprob for t, lp in e.items()} for e in c.logprobs])
            for c in (o.outputs[0] for o in outs)]


def compare(ref, got) -> dict:
    """Leading identical tokens per prompt, the largest logprob difference over them, and
    at each divergence the one-GPU run's own gap between its token and the other's (a
    small gap is a near-tie that a different bf16 summation order may flip)."""
    same, diff, gaps = [], 0.0, []
    for (rt, rl), (gt, gl) in zip(ref, got):
        n = next((i for i, (a, b) in enumerate(zip(rt, gt)) if a != b), len(rt))
        same.append(n)
        diff = max([diff] + [abs(rl[i][rt[i]] - gl[i][rt[i]]) for i in range(n)])
        if n < len(rt):
            other = rl[n].get(gt[n])
            gaps.append(None if other is None else round(rl[n][rt[n]] - other, 4))
    return {"identical_tokens": same, "of": NEW_TOKENS, "max_abs_logprob_diff": diff,
            "divergence_gaps": gaps}


def correctness(args):
    n, base = args.gpus, args.tiny
    suffix = "" if base["dtype"] == "bfloat16" else "_" + base["dtype"]
    dense = {"tp2": dict(tensor_parallel_size=2), f"tp{n}": dict(tensor_parallel_size=n),
             "pp2": dict(pipeline_parallel_size=2)}
    if n >= 4:
        dense["tp2xpp2"] = dict(tensor_parallel_size=2, pipeline_parallel_size=2)
    moe = {"moe_tp2": dict(tensor_parallel_size=2),
           "ep2": dict(tensor_parallel_size=2, enable_expert_parallel=True)}
    for kind, layouts in (("llama", dense), ("mixtral", moe)):
        folder = tiny_checkpoint(kind)
        try:
            ref = greedy(folder, base)
            for name, layout in layouts.items():
                got = guarded(greedy, folder, base, **layout)  # a dict: the error
                yield name + suffix, got if isinstance(got, dict) else compare(ref, got)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# -- speed ---------------------------------------------------------------------------------
def engine_for(model: str, **kw) -> InprocClient:
    cleanup()
    return random_weights_engine(model, **kw)


def latency(engine: InprocClient, tp: int, bw: float) -> dict:
    """Batch-1 decode (prompt 32, 64 new) and the bytes each GPU reads per step."""
    run_latency(engine, 1, 32, 8, bw, seed=5)  # warm-up
    r = run_latency(engine, 1, 32, 64, bw)
    a, step = engine.arch, r["median_step_ms"] / 1e3
    kv = r["roofline_step_ms"] / 1e3 * bw - _weight_bytes_read(engine)  # floor = (W + KV) / bw
    kv_gpu = kv * max(1, a.num_kv_heads // tp) / a.num_kv_heads  # KV heads split (or replicated)
    w_gpu = _weight_bytes_read(engine) / tp  # MoE: the routed top-k experts only
    return {"tok_s": r["tok_s"], "median_step_ms": r["median_step_ms"],
            "p90_step_ms": r["p90_step_ms"], "weight_gb_per_gpu": w_gpu / 1e9,
            "kv_mb_per_gpu": kv_gpu / 1e6, "bandwidth_per_gpu_tb_s": (w_gpu + kv_gpu) / step / 1e12,
            "of_copy_bandwidth": (w_gpu + kv_gpu) / step / bw, "weight_gib_loaded_per_gpu":
                engine.executor.info.weight_gib}


def decode_run(model: str, tp: int, bw: float, **kw) -> dict:
    engine = engine_for(model, tensor_parallel_size=tp, **kw)
    try:
        return latency(engine, tp, bw)
    finally:
        free(engine)


def workload(engine: InprocClient, num_prompts: int) -> dict:
    """All requests at once: prompts of 128-1024 tokens, 128-512 new tokens each."""
    run_throughput(engine, 8, (16, 64), (8, 16), seed=99)  # warm-up
    return run_throughput(engine, num_prompts, (128, 1024), (128, 512))


def throughput_run(model: str, num_prompts: int, **kw) -> dict:
    engine = engine_for(model, **THROUGHPUT, **kw)
    try:
        return workload(engine, num_prompts)
    finally:
        free(engine)


def scaling(args):
    for tp in [t for t in (8, 4, 2, 1) if t <= args.gpus]:  # TP=1 (in this process) last
        yield f"llama-3-8b_tp{tp}", guarded(decode_run, "llama-3-8b", tp, args.bw,
                                            gpu_memory_utilization=0.45, **DECODE)


def throughput(args):
    layouts = {"tp2": dict(tensor_parallel_size=2), "pp2": dict(pipeline_parallel_size=2)}
    if args.with_tp1_throughput:
        layouts["tp1"] = {}
    for name, layout in layouts.items():
        yield f"llama-3-8b_{name}", guarded(throughput_run, "llama-3-8b", args.num_prompts,
                                            **layout)


def seventy_b(args):
    yield f"llama-3-70b_tp{args.gpus}", guarded(decode_run, "llama-3-70b", args.gpus, args.bw,
                                                gpu_memory_utilization=0.95,
                                                max_num_batched_tokens=2048, **DECODE)


def moe(args):
    n, name = args.gpus, f"mixtral-8x7b_ep{args.gpus}"
    try:  # CUDA graphs: FusedMoE reads expert counts on the host (.tolist()), not capturable
        engine = engine_for("mixtral-8x7b", tensor_parallel_size=n, enable_expert_parallel=True,
                            enforce_eager=not args.moe_cuda_graphs, **THROUGHPUT)
    except Exception as e:
        traceback.print_exc()
        yield name, {"error": f"{type(e).__name__}: {e}"[:2000]}
        return
    try:
        yield f"{name}_decode_b1", guarded(latency, engine, n, args.bw)
        yield f"{name}_throughput", guarded(workload, engine, args.num_prompts)
    finally:
        free(engine)


SECTIONS = {"correctness": correctness, "scaling": scaling, "throughput": throughput,
            "70b": seventy_b, "moe": moe}


# -- report --------------------------------------------------------------------------------
COLUMNS = [("identical_tokens", "same tokens", "{}"),
           ("max_abs_logprob_diff", "|dlogprob|", "{:.2e}"),
           ("divergence_gaps", "tie gaps", "{}"), ("tok_s", "tok/s b1", "{:.1f}"),
           ("median_step_ms", "step ms", "{:.2f}"), ("bandwidth_per_gpu_tb_s", "TB/s/GPU", "{:.2f}"),
           ("output_tok_s", "out tok/s", "{:.0f}"), ("total_tok_s", "total tok/s", "{:.0f}"),
           ("wall_s", "wall s", "{:.1f}")]


def table(res: dict) -> str:
    rows = [["section", "config"] + [c[1] for c in COLUMNS] + ["error"]]
    for section in SECTIONS:
        for name, r in res.get(section, {}).items():
            cells = [c[2].format(r[c[0]]) if c[0] in r else "" for c in COLUMNS]
            if "tok_s" in r:  # a latency run's wall time is not a figure
                cells[-1] = ""
            rows.append([section, name] + cells + [r.get("error", "")[:60]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=None, help="N (default: all GPUs; 2 on CPU)")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--with-tp1-throughput", action="store_true")
    ap.add_argument("--moe-cuda-graphs", action="store_true", help="try CUDA graphs for MoE")
    ap.add_argument("--cpu-smoke", action="store_true", help="correctness only, CPU fp32, gloo")
    ap.add_argument("--tiny-dtype", default="bfloat16",
                    help="dtype of the correctness runs on GPUs (float32: no bf16 near-ties)")
    ap.add_argument("--out", default="multi.json")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    args.gpus = args.gpus or (torch.cuda.device_count() if cuda else 2)
    sections = ["correctness"] if args.cpu_smoke else args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown or (not cuda and not args.cpu_smoke):
        ap.error(f"unknown sections {sorted(unknown)}" if unknown else "no GPU: use --cpu-smoke")
    args.tiny = dict(max_model_len=256, **(
        dict(device="cpu", dtype="float32", num_blocks=64) if args.cpu_smoke else
        dict(dtype=args.tiny_dtype, gpu_memory_utilization=0.2, enforce_eager=True)))
    res = {}
    if os.path.exists(args.out):  # a split run adds to what the earlier calls wrote
        with open(args.out) as f:
            res = json.load(f)
    res.update(device=torch.cuda.get_device_name() if cuda else "cpu", gpus=args.gpus,
               links={f"{i}-{j}": k for (i, j), k in gpu_links(args.gpus).items()} if cuda else {},
               date=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__, argv=sys.argv[1:])
    if cuda and set(sections) & {"scaling", "70b", "moe"}:
        args.bw = measure_bandwidth(torch.device("cuda"))
        torch.cuda.empty_cache()
        res["copy_bandwidth_tb_s"] = args.bw / 1e12
    log(f"{res['device']} x{args.gpus}, links {res['links'] or 'n/a'}, sections {sections}")

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)

    for section in sections:
        out = res.setdefault(section, {})
        log(f"== {section}")
        try:
            for name, r in SECTIONS[section](args):
                out[name] = r
                save()
                log(f"{section} {name}: {json.dumps(r)}")
        except Exception as e:
            traceback.print_exc()
            out["error"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            save()
    save()
    print(table(res), flush=True)


if __name__ == "__main__":
    main()
