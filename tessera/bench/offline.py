"""`tessera bench latency | throughput`: the offline workloads of BENCHMARKS.md, on an
engine core in this process (an InprocClient).

latency: `batch` requests of `input_len` random tokens, `output_len` new tokens each
(ignore EOS); every engine step is timed; the median pure-decode step gives ms per
output token and tok/s (with speculative decoding, where a step gives several tokens per
sequence: the tokens of the decode steps over their time, and the acceptance rate and
mean accepted length), set against the decode roofline: (weight bytes read + KV bytes
read) / the copy bandwidth measured on this device in the same run; with weight offload
also against the transfer bound (`transfer_bound`: bytes a step copies from the host /
the host-to-device rate measured at start-up).
throughput: `num_prompts` requests with input and output lengths drawn uniformly from
the given ranges, all submitted at once; wall time, output and total tok/s, peak KV use.
Helpers the scripts in benchmarks/ share: `measure_bandwidth`, `cuda_time_us`,
`random_weights_engine`, `run_latency`, `run_throughput`, `add_throughput_requests`,
`transfer_bound`.
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Any

import torch

from tessera.config import EngineConfig
from tessera.engine.client import InprocClient
from tessera.quant_policy import HEAD, resolve_policy
from tessera.sampling_params import SamplingParams


def measure_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    if device.type != "cuda":
        nbytes = 1 << 27
    src = torch.empty(nbytes // 2, dtype=torch.int16, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


def cuda_time_us(fn, reps: int = 50) -> float:
    """Mean microseconds of fn() on the current CUDA stream (one untimed call first),
    timed with CUDA events around `reps` back-to-back calls."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def random_weights_engine(model: str = "llama-3-8b", **overrides: Any) -> InprocClient:
    """An engine over random weights of a named shape (or a checkpoint's config), as the
    benchmark scripts build it: bf16 on CUDA (float32 elsewhere), 2048-token context, no
    tokenizer; `overrides` are any other engine options."""
    options = dict(model=model, load_format="dummy", max_model_len=2048,
                   dtype="bfloat16" if torch.cuda.is_available() else "float32",
                   skip_tokenizer_init=True)
    return InprocClient(EngineConfig.from_kwargs(**{**options, **overrides}))


def _weight_bytes_read(engine: InprocClient) -> int:
    """Weight bytes one decode step of one sequence reads over all ranks, as loaded (a
    quantized layer's data and scales): all of them but the embedding table, which is
    only looked up by row (unless the LM head is that tensor: tied, one pipeline stage,
    a 16-bit head), and, of a mixture of experts, the experts not routed to (only the
    top-k count)."""
    a, info, config = engine.arch, engine.executor.info, engine.config
    total = sum(info.weight_bytes.values()) * info.world_size
    shared = (a.tie_word_embeddings and config.parallel.pipeline_parallel_size == 1
              and resolve_policy(config.quant, config.info, native=info.kernels.get(
                  "ops") == "triton").spec_for(HEAD) == "none")
    embed = 0 if shared else a.vocab_size * a.hidden_size
    idle_experts = a.num_parameters() - a.num_parameters(active_only=True)
    return total - (embed + idle_experts) * _itemsize(engine)


def _itemsize(engine: InprocClient) -> int:
    return getattr(torch, engine.executor.info.dtype).itemsize


def _kv_itemsize(engine: InprocClient) -> int:
    """Bytes per cached K or V value: the model's dtype, or 1 with an fp8 cache."""
    return getattr(torch, engine.executor.info.kv_cache_dtype).itemsize


def run_latency(engine: InprocClient, batch: int, input_len: int, output_len: int,
                bandwidth: float, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    vocab = engine.arch.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"lat-{seed}-{i}", [rng.randrange(vocab) for _ in range(input_len)],
                           params, stream=False)
    core = engine.core
    spec_before = _spec_counts(core)
    steps, contexts, decode_tokens = [], [], 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        prompt, generated = core.prompt_tokens_total, core.generation_tokens_total
        t = time.perf_counter()
        engine.step()
        dt = time.perf_counter() - t
        # a decode step: every sequence in it, no prompt token (with drafts, > 1 token each)
        if core.last_step_requests == batch and core.prompt_tokens_total == prompt:
            steps.append(dt)
            contexts.append(core.last_step_context)
            decode_tokens += core.generation_tokens_total - generated
    wall = time.perf_counter() - start
    if not steps:
        raise ValueError(f"no step decoded all {batch} sequences at once: the first ones "
                         f"finished their {output_len} tokens while the last were still in "
                         "prefill; raise the output length (or max_num_batched_tokens)")
    step = statistics.median(steps)
    kv_bytes = statistics.median(contexts) * engine.arch.kv_bytes_per_token * _kv_itemsize(engine)
    floor = (_weight_bytes_read(engine) + kv_bytes) / bandwidth
    result = {"workload": "latency", "batch": batch, "input_len": input_len,
              "output_len": output_len, "decode_steps": len(steps),
              "median_step_ms": step * 1e3,
              "p90_step_ms": sorted(steps)[int(0.9 * (len(steps) - 1))] * 1e3,
              "tok_s": batch / step, "tok_s_per_seq": 1 / step, "roofline_step_ms": floor * 1e3,
              "roofline_ratio": floor / step, "wall_s": wall, "seed": seed}
    result.update(transfer_bound(engine, step))
    drafted, accepted, verifies = (a - b for a, b in zip(_spec_counts(core), spec_before))
    if engine.config.speculative.method is not None:  # tokens per second of decode time
        tok_s = decode_tokens / sum(steps)  # (a step gives several tokens per sequence)
        result.update(tok_s=tok_s, tok_s_per_seq=tok_s / batch,
                      roofline_ratio=floor * tok_s / batch, spec_drafted=drafted,
                      spec_accepted=accepted,
                      acceptance_rate=accepted / drafted if drafted else 0.0,
                      mean_accepted_length=1 + accepted / verifies if verifies else 1.0)
    return result


def transfer_bound(engine: InprocClient, step_s: float) -> dict[str, Any]:
    """With weight offload: the bytes a step copies from the host, over the host-to-device
    rate measured when the engine started (each rank moves its own share at once), set
    against the measured step time."""
    memory = engine.executor.info.memory
    moved, rate = memory.get("offload_step_bytes"), memory.get("offload_bytes_per_s")
    if not moved or not rate:
        return {}
    return {"offload_step_gib": moved / 2**30, "offload_gb_s": rate / 1e9,
            "transfer_step_ms": moved / rate * 1e3, "transfer_ratio": moved / rate / step_s}


def _spec_counts(core) -> tuple[int, int, int]:
    s = core.scheduler
    return s.num_drafted, s.num_accepted, s.num_verify_steps


def add_throughput_requests(engine: InprocClient, num_prompts: int,
                            input_range: tuple[int, int] = (128, 1024),
                            output_range: tuple[int, int] = (128, 512),
                            seed: int = 0) -> tuple[int, int]:
    """Queues the throughput workload's requests (random token prompts, greedy, ignore
    EOS, final outputs only); returns (prompt tokens, output tokens) in all."""
    rng = random.Random(seed)
    vocab = engine.arch.vocab_size
    total_in = total_out = 0
    for i in range(num_prompts):
        n_in, n_out = rng.randint(*input_range), rng.randint(*output_range)
        total_in, total_out = total_in + n_in, total_out + n_out
        engine.add_request(f"tp-{seed}-{i}", [rng.randrange(vocab) for _ in range(n_in)],
                           SamplingParams(temperature=0.0, max_tokens=n_out, ignore_eos=True),
                           stream=False)
    return total_in, total_out


def run_throughput(engine: InprocClient, num_prompts: int, input_range: tuple[int, int],
                   output_range: tuple[int, int], seed: int = 0) -> dict[str, Any]:
    total_in, total_out = add_throughput_requests(engine, num_prompts, input_range,
                                                  output_range, seed)
    peak_kv, steps = 0.0, 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        peak_kv = max(peak_kv, engine.core.kv.usage)
    wall = time.perf_counter() - start
    return {"workload": "throughput", "num_prompts": num_prompts, "input_tokens": total_in,
            "output_tokens": total_out, "wall_s": wall, "output_tok_s": total_out / wall,
            "total_tok_s": (total_in + total_out) / wall, "steps": steps,
            "peak_kv_usage": peak_kv, "preemptions": engine.core.scheduler.num_preemptions,
            "seed": seed}
