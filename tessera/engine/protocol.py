"""Typed messages between the engine core, the scheduler and the workers.

SchedulerOutput (core -> worker): new requests in full (`NewRequestData`), running ones
as diffs (`CachedRequestData`: new block ids and this step's tokens), tokens to compute per
request (speculative tokens to verify included: `scheduled_spec_token_ids`), and requests
the worker can forget. ModelRunnerOutput (worker -> core): per request the tokens a step
sampled (a list: several when speculative tokens were accepted) and their logprobs, the
drafts proposed for each request's next step, and the requests that failed in the
worker. EngineCoreOutput (core -> front end): per request, its new tokens and finish
("error": it failed in the worker, stop_reason says why).
WorkerInfo (worker -> executor -> core): what a worker set up.
Plain data only (ints, floats, strings, lists): these cross process boundaries (msgspec).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from tessera.sampling_params import SamplingParams

# One position's logprobs: (token ids, logprobs, ranks); the chosen token first.
LogprobsEntry = tuple[list[int], list[float], list[int]]


@dataclasses.dataclass
class NewRequestData:
    request_id: str
    token_ids: list[int]  # prompt + output so far (a resumed request brings its outputs)
    num_prompt_tokens: int
    params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    num_prompt_logprobs_done: int  # prompt positions whose logprobs were already sent


@dataclasses.dataclass
class CachedRequestData:
    request_id: str
    new_block_ids: list[int]
    new_token_ids: list[int]  # the tokens this step computes (the last sampled one, for a
    # decode): every pipeline stage learns them here, not only the one that sampled


@dataclasses.dataclass
class SchedulerOutput:
    new_requests: list[NewRequestData]
    cached_requests: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]  # in batch order; speculative tokens included
    finished_request_ids: set[str]  # the worker drops their state
    preempted_request_ids: set[str]
    # request id -> the draft tokens this step verifies (the last of its scheduled
    # tokens); requests without drafts are absent
    scheduled_spec_token_ids: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # request id -> drafts to propose for it after this step, should it sample (the
    # engine's DraftPolicy: every rank proposes the same); absent: none
    num_drafts: dict[str, int] = dataclasses.field(default_factory=dict)
    # the KV host tier's copies, run before the forward in this order: (device block,
    # host block) evicted ones out, then (host block, device block) found ones back
    kv_to_host: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    kv_to_device: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclasses.dataclass
class ModelRunnerOutput:
    # request id -> the tokens this step gives it, in order (accepted drafts, then the
    # token sampled after them); a request whose step sampled nothing is absent
    sampled_token_ids: dict[str, list[int]]
    logprobs: dict[str, list[LogprobsEntry]]  # one entry per sampled token
    # request id -> (first prompt position covered, entries for positions from there)
    prompt_logprobs: dict[str, tuple[int, list[LogprobsEntry]]]
    # request id -> draft tokens proposed for its next step (speculative decoding)
    spec_token_ids: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    draft_cost: float = 0.0  # measured: one draft step's time over one verify step's
    memory: dict[str, int] = dataclasses.field(default_factory=dict)  # allocator, now and then
    # request id -> why it failed in the worker (worker/step_faults.py): the core ends it
    # with an error; the engine goes on
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class WorkerInfo:
    """What a worker set up, as the engine logs and reports it."""
    device: str
    dtype: str
    kv_cache_dtype: str
    weight_gib: float  # this rank's weights
    load_seconds: float
    bytes_per_block: int  # KV cache bytes of one block over this rank's layers
    world_size: int = 1
    kernels: dict[str, str] = dataclasses.field(default_factory=dict)  # what its model runs
    weight_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # by precision
    memory: dict[str, int] = dataclasses.field(default_factory=dict)  # worker/memory.py

    def describe_weights(self) -> str:
        """"int8 6.48 GiB, bfloat16 1.96 GiB": the weights by precision, largest first."""
        parts = sorted(self.weight_bytes.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {n / 2**30:.2f} GiB" for name, n in parts)

    def describe_memory(self) -> str:
        """"weights 14.96 GiB on the device, 8.00 GiB in CPU memory, ...": the log's line."""
        memory = self.memory
        g = {k: v / 2**30 for k, v in memory.items()}
        parts = [f"weights {g.get('weights_device', 0):.2f} GiB on the device"]
        if memory.get("weights_cpu"):
            parts.append(f"{g['weights_cpu']:.2f} GiB in CPU memory")
        if memory.get("weights_disk"):
            parts.append(f"{g['weights_disk']:.2f} GiB on disk")
        if memory.get("weights_deduplicated"):
            parts.append(f"{g['weights_deduplicated']:.2f} GiB saved by storing identical "
                         "tensors once")
        parts.append(f"KV cache {g.get('kv_cache', 0):.2f} GiB")
        if memory.get("kv_cache_host"):
            parts.append(f"KV host tier {g['kv_cache_host']:.2f} GiB in CPU memory")
        if "cuda_graphs" in memory:
            parts.append(f"CUDA graphs {g['cuda_graphs']:.2f} GiB")
        if memory.get("allocator_reserved"):
            reserved, allocated = memory["allocator_reserved"], memory["allocator_allocated"]
            parts.append(f"allocator {reserved / 2**30:.2f} GiB reserved, "
                         f"{allocated / 2**30:.2f} GiB allocated "
                         f"({1 - allocated / reserved:.1%} unused)")
        if memory.get("offload_step_bytes"):
            rate = memory.get("offload_bytes_per_s")
            step = memory["offload_step_bytes"]
            bound = f", at {rate / 1e9:.1f} GB/s >= {step / rate * 1e3:.1f} ms" if rate else ""
            parts.append(f"a step copies {g['offload_step_bytes']:.2f} GiB of offloaded layers"
                         + bound)
        return "; ".join(parts)


@dataclasses.dataclass
class EngineCoreOutput:
    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[LogprobsEntry]
    new_prompt_logprobs: list[LogprobsEntry]
    finish_reason: Optional[str] = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    cost: float = 0.0  # dollars so far (--price-per-hour; engine/cost.py)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
