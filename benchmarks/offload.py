"""Weight offload on the GPU (issue 23's figures), random weights of real shapes, one call.

Measured first, in the same call: the host-to-device copy rate from pinned memory and,
with --disk DIR, the disk's direct-read rate (a 4 GiB file written there, synced and
dropped from the page cache, read back with O_DIRECT in 32 MiB chunks, 4 at once).
Parts (--parts):
  8b     Llama-3-8B bf16: resident, then 8 GiB offloaded to pinned memory, then (with
         --disk) the same from a file there. For each, decode at --batches (prompt 128):
         median step, tok/s, the transfer bound (bytes a step copies / the measured rate),
         and the overlap: step / max(transfer, the resident step = compute), target
         <= 1.15. Greedy tokens of the offloaded runs must equal the resident run's.
  70b    Llama-3-70B bf16 (131 GiB: more than one H200 holds with a KV cache), with
         --offload-70b GiB offloaded so that the KV cache holds >= 64 sequences of 2k;
         decode at batch 64: tok/s against the transfer bound (target >= 80%).
Prints a table last; --out writes the rows as JSON.

    python benchmarks/offload.py --parts 8b --disk /tmp/offload --out $OUT/offload.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time

import torch

from tessera.bench.offline import random_weights_engine, run_latency, transfer_bound
from tessera.sampling_params import SamplingParams

GiB = 2**30


def h2d_rate(nbytes: int = 2 * GiB) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - start)


def disk_rate(folder: str, nbytes: int = 4 * GiB) -> float:
    from concurrent.futures import ThreadPoolExecutor
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "rate-probe.bin")
    block = os.urandom(64 * 2**20)
    with open(path, "wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    chunk = 32 * 2**20
    buf = torch.empty(4 * chunk + 4096, dtype=torch.uint8, pin_memory=True)
    at = (-buf.data_ptr()) % 4096
    views = [memoryview(buf[at + k * chunk: at + (k + 1) * chunk].numpy()) for k in range(4)]
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: [os.preadv(fd, [views[k]], off)
                                 for off in range(k * chunk, nbytes, 4 * chunk)], range(4)))
    seconds = time.perf_counter() - start
    os.close(fd)
    os.unlink(path)
    return nbytes / seconds


def greedy_tokens(engine, n: int = 4) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    for i in range(n):
        engine.add_request(f"check-{i}", [100 + 7 * i + k for k in range(24)], params,
                           stream=False)
    out: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.finished:
                out[o.request_id] = o.outputs[0].token_ids
    return [out[f"check-{i}"] for i in range(n)]


def release() -> None:
    """After an engine is shut down and dropped: its device and pinned memory back."""
    gc.collect()
    torch.cuda.empty_cache()
    if hasattr(torch._C, "_host_emptyCache"):
        torch._C._host_emptyCache()


def run_8b(args, rows: list[dict], bandwidth: float) -> None:
    modes = [("resident", {}), ("pinned 8 GiB", dict(cpu_offload_gb=8))]
    if args.disk:
        modes.append(("disk 8 GiB", dict(cpu_offload_gb=8, offload_dir=args.disk)))
    modes = [(name, kw) for name, kw in modes if name.split()[0] in args.modes]
    compute: dict[int, float] = {}
    reference = None
    for name, kw in modes:
        start = time.perf_counter()
        engine = random_weights_engine("llama-3-8b", **kw)
        setup = time.perf_counter() - start
        tokens = greedy_tokens(engine)
        reference = reference or tokens  # the first mode's (resident by default)
        memory = engine.executor.info.memory
        for batch in args.batches:
            out = 6 if name.startswith("disk") else 24
            r = run_latency(engine, batch, 128, out, bandwidth, seed=batch)
            step = r["median_step_ms"]
            if name == "resident":
                compute[batch] = step
            bound = transfer_bound(engine, step / 1e3)
            row = {"part": "8b", "mode": name, "batch": batch, "step_ms": step,
                   "tok_s": r["tok_s"], "setup_s": setup, "tokens_equal": tokens == reference,
                   "weights_device_gib": memory.get("weights_device", 0) / GiB,
                   "cuda_graphs": engine.core.executor.runner.graphs is not None, **bound}
            if bound and batch in compute:
                worst = max(bound["transfer_step_ms"], compute[batch])
                row["overlap"] = step / worst
            if "disk_read_bytes_per_s" in memory:
                row["disk_read_gb_s"] = memory["disk_read_bytes_per_s"] / 1e9
                # against the disk's own direct-read rate, measured by the probe
                probe_ms = memory["offload_step_bytes"] / args.disk_rate * 1e3
                row["step_over_probe_transfer"] = step / probe_ms
            rows.append(row)
            print(json.dumps(row), flush=True)
        engine.shutdown()
        engine = None
        release()


def run_70b(args, rows: list[dict], bandwidth: float) -> None:
    start = time.perf_counter()
    engine = random_weights_engine("llama-3-70b", cpu_offload_gb=args.offload_70b,
                                   max_num_seqs=64)
    setup = time.perf_counter() - start
    capacity = engine.core.num_blocks * engine.config.cache.block_size
    memory = engine.executor.info.memory
    r = run_latency(engine, 64, 128, args.output_70b, bandwidth, seed=70)
    bound = transfer_bound(engine, r["median_step_ms"] / 1e3)
    row = {"part": "70b", "mode": f"pinned {args.offload_70b:g} GiB", "batch": 64,
           "step_ms": r["median_step_ms"], "tok_s": r["tok_s"], "setup_s": setup,
           "kv_tokens": capacity, "kv_seqs_of_2k": capacity // 2048,
           "weights_device_gib": memory.get("weights_device", 0) / GiB,
           "weights_cpu_gib": memory.get("weights_cpu", 0) / GiB,
           "kv_cache_gib": memory.get("kv_cache", 0) / GiB,
           "cuda_graphs": engine.core.executor.runner.graphs is not None, **bound}
    rows.append(row)
    print(json.dumps(row), flush=True)
    engine.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="8b,70b")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--disk", default=None, help="folder for the offload file and disk probe")
    ap.add_argument("--offload-70b", type=float, default=60.0)
    ap.add_argument("--output-70b", type=int, default=10)
    ap.add_argument("--modes", default="resident,pinned,disk", help="of the 8b part")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from tessera.bench.offline import measure_bandwidth
    bandwidth = measure_bandwidth(torch.device("cuda"))
    h2d = h2d_rate()
    args.disk_rate = disk_rate(args.disk) if args.disk else None
    rows: list[dict] = [{"part": "rates", "hbm_copy_tb_s": bandwidth / 1e12,
                         "h2d_pinned_gb_s": h2d / 1e9,
                         "disk_direct_read_gb_s": args.disk_rate / 1e9 if args.disk else None}]
    print(json.dumps(rows[0]), flush=True)
    parts = args.parts.split(",")
    for part, fn in (("8b", run_8b), ("70b", run_70b)):
        if part in parts:
            try:
                fn(args, rows, bandwidth)
            except Exception as e:  # a part that fails still leaves the others' rows
                rows.append({"part": part, "error": repr(e)})
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\n{'part':5} {'mode':16} {'batch':>5} {'step ms':>9} {'tok/s':>9} "
          f"{'transfer ms':>11} {'x bound':>8} {'overlap':>8} {'equal':>6}")
    for r in rows[1:]:
        if "error" in r:
            print(f"{r['part']:5} ERROR {r['error'][:200]}")
            continue
        print(f"{r['part']:5} {r['mode']:16} {r['batch']:5d} {r['step_ms']:9.1f} "
              f"{r['tok_s']:9.1f} {r.get('transfer_step_ms', 0):11.1f} "
              f"{r.get('transfer_ratio', 0):8.1%} {r.get('overlap', 0):8.2f} "
              f"{str(r.get('tokens_equal', '')):>6}")


if __name__ == "__main__":
    main()
