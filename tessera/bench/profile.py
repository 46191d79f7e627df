"""`tessera bench profile`: times every engine step over a grid of batch sizes and prompt
lengths, for the planner's calibrated latency model (planner/latency.py ProfileModel).

`run_profile(engine, batches, input_lens, output_len)`: for each prompt length and batch
size, that many requests of random tokens (the first of that length, the others of random
lengths down to half of it, so the batch's contexts differ as real ones do) are queued at
once and stepped to the end; each step's shape (tokens computed, sequences, context tokens
read: the engine core's `last_step_*`) and wall time is a sample (prefill chunks, mixed
steps and pure decode steps alike). Returns the profile (model, device, dtype, precision,
layout, samples) with the linear fit over it and the fit's median and p90 relative error,
which `tessera plan` reads back (the precision: `held_precision`, what it scales from).
With `between=keep_busy(other)` another engine steps after each timed step: the samples of
two models taking turns on one device (`--colocated-with`; the planner's simulator uses
them for a model whose group-mate stepped last).
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable, Optional

from tessera.sampling_params import SamplingParams


def run_profile(engine, batches: list[int], input_lens: list[int], output_len: int = 16,
                seed: int = 0, between: Optional[Callable[[], None]] = None) -> dict[str, Any]:
    """between: called after each timed step, untimed (keep_busy: another engine steps,
    so the samples are those of models taking turns on one device)."""
    from tessera.planner.latency import ProfileModel
    rng = random.Random(seed)
    vocab, core = engine.arch.vocab_size, engine.core
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    samples: list[list[float]] = []
    for k, input_len in enumerate(input_lens):
        for batch in batches:
            for i in range(batch):  # lengths up to input_len: the contexts differ
                n = input_len if i == 0 else rng.randint(max(1, input_len // 2), input_len)
                engine.add_request(f"prof-{k}-{batch}-{i}",
                                   [rng.randrange(vocab) for _ in range(n)], params,
                                   stream=False)
            while engine.has_unfinished_requests():
                before = core.steps_scheduled
                t = time.perf_counter()
                engine.step()
                dt = time.perf_counter() - t
                if between is not None:
                    between()
                if core.steps_scheduled > before:  # not a call that only collected
                    samples.append([core.last_step_tokens, core.last_step_requests,
                                    core.last_step_context, dt])
    fit = ProfileModel.fit([tuple(s) for s in samples])
    errors = sorted(abs(fit.step_seconds(*s[:3]) - s[3]) / s[3] for s in samples)  # all
    c = engine.config
    return {"model": c.model.model, "device": engine.executor.info.device,
            "dtype": engine.executor.info.dtype,
            # what the planner scales by (planner/placement.py's profile_precision)
            "precision": held_precision(engine.executor.info.weight_bytes,
                                        engine.executor.info.dtype),
            "weight_bytes": dict(engine.executor.info.weight_bytes),
            "tensor_parallel_size": c.parallel.tensor_parallel_size,
            "pipeline_parallel_size": c.parallel.pipeline_parallel_size,
            "max_num_batched_tokens": c.scheduler.max_num_batched_tokens,
            "fit": {"c0": fit.c0, "c_tok": fit.c_tok, "c_seq": fit.c_seq, "c_ctx": fit.c_ctx},
            "fit_error_median": statistics.median(errors),
            "fit_error_p90": errors[int(0.9 * (len(errors) - 1))],
            "samples": samples}


def held_precision(weight_bytes: dict[str, int], dtype: str) -> str:
    """The precision of a model as loaded: the quantized format holding the most bytes
    (from --quantization, a policy file or the checkpoint's own), else its dtype."""
    from tessera.quant_policy import KINDS
    quantized = {k: v for k, v in weight_bytes.items() if k in KINDS}
    return max(quantized, key=quantized.get) if quantized else dtype


def keep_busy(other, requests: int = 4, seed: int = 1) -> Callable[[], None]:
    """A `between` for run_profile: one step of `other`, an engine kept decoding `requests`
    requests (finished ones replaced), as a model sharing the device would."""
    rng, ids = random.Random(seed), iter(range(10**9))
    params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)

    def step() -> None:
        while len(other.core.scheduler.requests) < requests:
            other.add_request(f"busy-{next(ids)}", [rng.randrange(other.arch.vocab_size)
                                                   for _ in range(32)], params, stream=False)
        other.step()
    return step


def drain(engine) -> None:
    """Runs an engine's requests to their end (after keep_busy)."""
    while engine.has_unfinished_requests():
        engine.step()
