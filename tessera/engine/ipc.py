"""Messages between the API process and the engine process: msgspec over ZMQ, never pickle.

API -> engine (`ClientMessage`): AddRequest (token ids + SamplingParams), AbortRequests,
Shutdown. Engine -> API (`EngineMessage`): Ready (what was set up), Outputs (each step's
EngineCoreOutputs plus a stats snapshot), Rejected (a request the core refused: 400 or
503; or one that failed in a step: 500), Fatal (the engine cannot go on). Decoding
validates types, so a malformed frame is an error, never code.
"""
from __future__ import annotations

from typing import Optional, Union

import msgspec

from tessera.engine.protocol import EngineCoreOutput, WorkerInfo
from tessera.sampling_params import SamplingParams


class AddRequest(msgspec.Struct, tag=True):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


class AbortRequests(msgspec.Struct, tag=True):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag=True):
    pass


class Stats(msgspec.Struct):
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    free_blocks: int = 0
    num_blocks: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0
    prefix_hit_tokens: int = 0
    prefix_query_tokens: int = 0
    spec_drafted: int = 0  # speculative decoding: draft tokens verified
    spec_accepted: int = 0  # ... and accepted
    spec_verify_steps: int = 0  # request-steps that verified drafts
    cached_blocks: int = 0  # free KV blocks that still hold a findable prefix
    host_blocks: int = 0  # the KV host tier: its blocks, those holding a prefix
    host_used_blocks: int = 0
    host_hit_tokens: int = 0  # prompt tokens found in the host tier (in prefix_hit_tokens too)
    kv_bytes_to_host: int = 0  # KV bytes copied out to the host tier, and back (first rank)
    kv_bytes_to_device: int = 0
    memory: dict[str, int] = {}  # the device allocator's reserved / allocated bytes
    cost_requests_usd: float = 0.0  # --price-per-hour: wall time's cost shared by requests
    cost_idle_usd: float = 0.0  # ... and while no request was in the engine


class Ready(msgspec.Struct, tag=True):
    num_blocks: int
    block_size: int
    max_model_len: int
    worker: WorkerInfo  # device, dtypes, weights, load time


class Outputs(msgspec.Struct, tag=True):
    outputs: list[EngineCoreOutput]
    stats: Stats
    queue_times: dict[str, float] = {}  # request id -> seconds waiting before its first step


class Rejected(msgspec.Struct, tag=True):
    request_id: str
    message: str
    status: int  # 400: invalid, 503: queue full, 500: failed in the engine (an incident)


class Fatal(msgspec.Struct, tag=True):
    message: str


ClientMessage = Union[AddRequest, AbortRequests, Shutdown]
EngineMessage = Union[Ready, Outputs, Rejected, Fatal]

encoder = msgspec.msgpack.Encoder()
client_decoder = msgspec.msgpack.Decoder(ClientMessage)
engine_decoder = msgspec.msgpack.Decoder(EngineMessage)


def stats_from(d: dict, extra: Optional[dict] = None) -> Stats:
    fields = set(Stats.__struct_fields__)
    return Stats(**{k: v for k, v in {**d, **(extra or {})}.items() if k in fields})
