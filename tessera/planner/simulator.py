"""The planner's simulator: the engine's own scheduler on a simulated clock.

Objects: Instance (one model served on a group: its step latency model, KV blocks and
scheduler limits), Group (devices that run their instances' steps one at a time, round
robin among the instances with work: AlpaServe's statistical multiplexing; under pipeline
parallelism a new step may start one stage's time after the last), SLO (TTFT, TPOT and/or
end-to-end bounds, seconds), Record (one request's times) and SimResult (records;
`attainment(slos)`, `percentile(metric, q)`), and `simulate(groups, arrivals)`.
Flow: an arrival goes to the least loaded instance of its model (fewest unfinished
requests); a group that may start a step asks its instances' schedulers in turn
(engine/scheduler.py, the very rule the engine runs: token budget, running first, chunked
prefill, preemption when KV blocks run out) and takes the first non-empty step; the step
ends after the latency model's time for its shape (tokens, sequences, context read; its
time times the group's devices is shared among its requests by tokens: `device_seconds`,
the honest cost basis), and
its sampled tokens (every request that reached the end of its known tokens) go back
through `update_from_output`, which finishes requests at their output length. A request
whose prompt and output exceed the instance's context, or that never finishes before
`horizon`, fails every SLO. No torch, no model.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from typing import Optional

from tessera.config import SchedulerConfig
from tessera.engine.kv_cache.manager import KVCacheManager
from tessera.engine.protocol import ModelRunnerOutput
from tessera.engine.request import Request
from tessera.engine.scheduler import Scheduler
from tessera.planner.traffic import Arrival
from tessera.sampling_params import SamplingParams

TOKEN = 7  # the id every simulated step samples (nothing stops on it)


@dataclasses.dataclass
class Instance:
    model: str
    latency: object  # a latency.py model: step_seconds / interval_seconds
    num_blocks: int
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    max_model_len: int = 8192
    # step times when another instance of the group stepped last (measured with models
    # taking turns: `tessera bench profile --colocated-with`); None: `latency` always
    shared_latency: object = None

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(
            SchedulerConfig(max_num_batched_tokens=self.max_num_batched_tokens,
                            max_num_seqs=self.max_num_seqs, max_waiting=10**9),
            KVCacheManager(self.num_blocks, self.block_size, enable_prefix_caching=False),
            self.max_model_len)

    @property
    def load(self) -> int:
        return len(self.scheduler.requests)


@dataclasses.dataclass
class Group:
    name: str
    instances: list[Instance]
    devices: int = 1
    busy_until: float = 0.0
    _next: int = 0  # round robin
    last: Optional[Instance] = None  # the instance that stepped last

    def latency_of(self, inst: Instance):
        """inst's step-time model now: the colocated one after another instance's step."""
        if inst.shared_latency is not None and self.last not in (None, inst):
            return inst.shared_latency
        return inst.latency

    def next_step(self):
        """(instance, its SchedulerOutput) of the next instance in turn with a step."""
        n = len(self.instances)
        for k in range(n):
            inst = self.instances[(self._next + k) % n]
            if not inst.scheduler.has_unfinished():
                continue
            sched = inst.scheduler.schedule()
            if not sched.is_empty:
                self._next = (self._next + k + 1) % n
                return inst, sched
        return None, None


@dataclasses.dataclass(frozen=True)
class SLO:
    ttft: Optional[float] = None
    tpot: Optional[float] = None
    e2e: Optional[float] = None

    def met(self, r: "Record") -> bool:
        return ((self.ttft is None or r.ttft <= self.ttft)
                and (self.tpot is None or r.tpot <= self.tpot)
                and (self.e2e is None or r.e2e <= self.e2e))

    def describe(self) -> str:
        parts = [f"{k.upper()} <= {v * 1e3:.0f} ms" for k, v in dataclasses.asdict(self).items()
                 if v is not None]
        return ", ".join(parts) or "none"


@dataclasses.dataclass
class Record:
    model: str
    arrival: float
    output_len: int
    first_token: float = math.inf
    finish: float = math.inf
    group: str = ""
    device_seconds: float = 0.0  # its share of its steps' time x the group's devices

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish - self.arrival

    @property
    def tpot(self) -> float:
        if self.output_len <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.output_len - 1)


@dataclasses.dataclass
class SimResult:
    records: list[Record]
    busy_seconds: dict[str, float]  # per group: time with a step running
    end_time: float

    def attainment(self, slos: dict[str, SLO], model: Optional[str] = None) -> float:
        rs = [r for r in self.records if model is None or r.model == model]
        if not rs:
            return 1.0
        return sum(slos[r.model].met(r) for r in rs) / len(rs)

    def percentile(self, metric: str, q: float, model: Optional[str] = None) -> float:
        values = sorted(getattr(r, metric) for r in self.records
                        if model is None or r.model == model)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q / 100 * len(values)))]


def simulate(groups: list[Group], arrivals: list[Arrival],
             horizon: Optional[float] = None) -> SimResult:
    by_model: dict[str, list[tuple[Group, Instance]]] = {}
    for g in groups:
        for inst in g.instances:
            by_model.setdefault(inst.model, []).append((g, inst))
    missing = {a.model for a in arrivals} - set(by_model)
    if missing:
        raise ValueError(f"no instance serves {', '.join(sorted(missing))}")
    last = arrivals[-1].time if arrivals else 0.0
    horizon = horizon if horizon is not None else 4 * last + 60.0
    records: dict[str, Record] = {}
    busy = {g.name: 0.0 for g in groups}
    seq = itertools.count()
    events: list = [(a.time, next(seq), "arrive", a) for a in arrivals]
    heapq.heapify(events)
    in_flight: set[str] = set()  # groups waiting for their next start

    def try_start(g: Group, now: float) -> None:
        if g.name in in_flight or now < g.busy_until:
            return
        inst, sched = g.next_step()
        if inst is None:
            return
        reqs = inst.scheduler.requests
        tokens, seqs = sched.total_num_scheduled_tokens, len(sched.num_scheduled_tokens)
        context = sum(reqs[r].num_computed_tokens for r in sched.num_scheduled_tokens)
        model = g.latency_of(inst)
        g.last = inst
        latency = model.step_seconds(tokens, seqs, context)
        interval = min(latency, model.interval_seconds(tokens, seqs, context))
        sampled = {r: [TOKEN] for r in sched.num_scheduled_tokens
                   if reqs[r].num_pending_tokens > 0}
        g.busy_until = now + interval
        busy[g.name] += interval
        for r, n in sched.num_scheduled_tokens.items():  # the step's time, shared by tokens
            records[r].device_seconds += interval * g.devices * n / tokens
        in_flight.add(g.name)
        heapq.heappush(events, (now + latency, next(seq), "done", (g, inst, sched, sampled)))
        heapq.heappush(events, (now + interval, next(seq), "free", g))

    now = 0.0
    while events:
        when, _, kind, payload = heapq.heappop(events)
        if when > horizon:
            break
        now = when
        if kind == "arrive":
            a = payload
            rid = f"r{len(records)}"
            g, inst = min(by_model[a.model], key=lambda gi: gi[1].load)
            records[rid] = rec = Record(a.model, a.time, a.output_len, group=g.name)
            if a.prompt_len + a.output_len > inst.max_model_len:
                continue  # refused: fails every SLO
            params = SamplingParams(max_tokens=a.output_len, ignore_eos=True, temperature=0)
            inst.scheduler.add_request(Request(rid, [TOKEN] * a.prompt_len, params,
                                               arrival_time=a.time))
            try_start(g, now)
        elif kind == "free":
            in_flight.discard(payload.name)
            try_start(payload, now)
        else:
            g, inst, sched, sampled = payload
            out = ModelRunnerOutput(sampled, {}, {})
            for o in inst.scheduler.update_from_output(sched, out):
                rec = records[o.request_id]
                if o.new_token_ids and rec.first_token == math.inf:
                    rec.first_token = now
                if o.finish_reason is not None:
                    rec.finish = now
            try_start(g, now)
    return SimResult(list(records.values()), busy, now)
