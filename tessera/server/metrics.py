"""Prometheus metrics under the `tessera:` prefix, and the periodic stats log line.

Objects: ServerMetrics (an MPClient observer: arrival, each output, done, and the
engine's stats snapshots) and its registry, rendered at GET /metrics; with several models
(a deployment file) each has a ServerMetrics in one registry, its samples labelled by
model_name. The weights'
bytes by precision and the memory accounting (worker/memory.py: fixed at start-up, the
allocator's figures as the engine last reported them) are gauges, as are the KV blocks
used / cached / free; engine-wide
values (running, waiting, KV usage, token counters, preemptions, prefix hits,
speculative decoding's drafted / accepted tokens, acceptance rate, mean accepted length)
are read
from the latest snapshot by a collector (with data-parallel replicas: their sum, and
`replica_*` families per replica with the router's counts); per-request latencies (TTFT, inter-token,
end-to-end, queue time) are histograms observed here in the API process.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tessera.engine.ipc import Stats
from tessera.outputs import RequestOutput

logger = logging.getLogger("tessera.stats")

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


@dataclasses.dataclass
class _Timing:
    arrival: float
    prompt_tokens: int
    last_token: float | None = None
    tokens: int = 0


class _StatsCollector:
    """Every served model's families, merged by name (one family, a sample per model)."""

    def __init__(self, members: list["ServerMetrics"]):
        self.members = members

    def collect(self):
        merged: dict[str, Any] = {}
        for m in self.members:
            for family in self._families(m):
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()

    def _families(self, metrics: "ServerMetrics"):
        s, name = metrics.stats, metrics.model_name
        gauges = (("num_requests_running", "Requests in the running batch", s.running),
                  ("num_requests_waiting", "Requests waiting to be scheduled", s.waiting),
                  ("kv_cache_usage_perc", "Fraction of KV-cache blocks in use", s.kv_usage))
        for metric, doc, value in gauges:
            g = GaugeMetricFamily(f"tessera:{metric}", doc, labels=["model_name"])
            g.add_metric([name], value)
            yield g
        g = GaugeMetricFamily("tessera:weight_bytes", "Weight bytes per rank by precision "
                              "(int8, fp8, int4 with their scales; 16-bit)",
                              labels=["model_name", "precision"])
        for precision, n in sorted(metrics.weight_bytes.items()):
            g.add_metric([name, precision], n)
        yield g
        g = GaugeMetricFamily("tessera:memory_bytes", "Memory per rank: weights on the device, "
                              "in CPU memory and on disk (offload), saved by storing identical "
                              "tensors once; KV cache; CUDA graphs; the allocator's reserved and "
                              "allocated bytes; offloaded bytes a step copies, and the measured "
                              "host-to-device and disk rates (bytes/s)",
                              labels=["model_name", "kind"])
        for kind, n in sorted({**metrics.memory, **s.memory}.items()):
            g.add_metric([name, kind], n)
        yield g
        g = GaugeMetricFamily("tessera:kv_cache_blocks", "KV-cache blocks: used by requests, "
                              "free but holding a cached prefix, free and empty",
                              labels=["model_name", "state"])
        for state, n in (("used", s.num_blocks - s.free_blocks), ("cached", s.cached_blocks),
                         ("free", s.free_blocks - s.cached_blocks)):
            g.add_metric([name, state], n)
        yield g
        yield from _host_tier(s, name)
        if metrics.replicas is not None:
            yield from _replicas(metrics.replicas, name)
        counters = (("num_preemptions", "Requests preempted", s.preemptions),
                    ("prompt_tokens", "Prompt tokens computed", s.prompt_tokens),
                    ("generation_tokens", "Tokens generated", s.generation_tokens),
                    ("prefix_cache_hits", "Prompt tokens found in the prefix cache",
                     s.prefix_hit_tokens),
                    ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                     s.prefix_query_tokens))
        if s.cost_requests_usd or s.cost_idle_usd:  # --price-per-hour
            c = CounterMetricFamily("tessera:cost_usd", "Dollars of the devices' time "
                                    "(--price-per-hour): shared by requests by the tokens "
                                    "they computed, or idle", labels=["model_name", "kind"])
            c.add_metric([name, "requests"], s.cost_requests_usd)
            c.add_metric([name, "idle"], s.cost_idle_usd)
            yield c
        if s.spec_verify_steps:  # speculative decoding
            counters += (
                ("spec_decode_num_draft_tokens", "Draft tokens verified", s.spec_drafted),
                ("spec_decode_num_accepted_tokens", "Draft tokens accepted", s.spec_accepted),
                ("spec_decode_num_verify_steps", "Request-steps that verified drafts",
                 s.spec_verify_steps))
        for metric, doc, value in counters:
            c = CounterMetricFamily(f"tessera:{metric}", doc, labels=["model_name"])
            c.add_metric([name], value)
            yield c
        if s.spec_verify_steps:
            rate, length = spec_rates(s.spec_drafted, s.spec_accepted, s.spec_verify_steps)
            for metric, doc, value in (
                    ("spec_decode_acceptance_rate", "Share of draft tokens accepted", rate),
                    ("spec_decode_mean_accepted_length", "Tokens per verify step (accepted "
                     "drafts + 1)", length)):
                g = GaugeMetricFamily(f"tessera:{metric}", doc, labels=["model_name"])
                g.add_metric([name], value)
                yield g


def _host_tier(s, name: str):
    """Prefix hits by tier; with a KV host tier, its blocks and the bytes copied."""
    c = CounterMetricFamily("tessera:prefix_cache_tier_hits", "Prompt tokens found in the "
                            "prefix cache, by tier: device blocks, or the KV host tier's",
                            labels=["model_name", "tier"])
    c.add_metric([name, "device"], s.prefix_hit_tokens - s.host_hit_tokens)
    c.add_metric([name, "host"], s.host_hit_tokens)
    yield c
    if not s.host_blocks:
        return
    g = GaugeMetricFamily("tessera:kv_host_tier_blocks", "KV host tier blocks: holding a "
                          "prefix, or empty", labels=["model_name", "state"])
    g.add_metric([name, "used"], s.host_used_blocks)
    g.add_metric([name, "free"], s.host_blocks - s.host_used_blocks)
    yield g
    c = CounterMetricFamily("tessera:kv_offload_bytes", "KV bytes copied between the device "
                            "and the host tier (first rank)", labels=["model_name", "direction"])
    c.add_metric([name, "to_host"], s.kv_bytes_to_host)
    c.add_metric([name, "to_device"], s.kv_bytes_to_device)
    yield c


def _replicas(client, name: str):
    """Data-parallel replicas, each apart (the families above are their totals): its
    requests, KV usage and token counters, and the router's requests sent to it."""
    families = (
        ("replica_num_requests_running", "Requests in the replica's running batch", "running",
         GaugeMetricFamily),
        ("replica_num_requests_waiting", "Requests waiting in the replica", "waiting",
         GaugeMetricFamily),
        ("replica_kv_cache_usage_perc", "Fraction of the replica's KV-cache blocks in use",
         "kv_usage", GaugeMetricFamily),
        ("replica_prompt_tokens", "Prompt tokens the replica computed", "prompt_tokens",
         CounterMetricFamily),
        ("replica_generation_tokens", "Tokens the replica generated", "generation_tokens",
         CounterMetricFamily))
    for metric, doc, field, kind in families:
        f = kind(f"tessera:{metric}", doc, labels=["model_name", "replica"])
        for core in client.cores:
            f.add_metric([name, str(core.index)], getattr(core.stats, field))
        yield f
    router = client.router
    c = CounterMetricFamily("tessera:replica_routed_requests", "Sequences the router sent to "
                            "the replica", labels=["model_name", "replica"])
    for i, n in enumerate(router.routed):
        c.add_metric([name, str(i)], n)
    yield c
    c = CounterMetricFamily("tessera:router_prefix_affinity_hits", "Requests sent to a "
                            "replica that served their prefix rather than the least loaded",
                            labels=["model_name"])
    c.add_metric([name], router.affinity_hits)
    yield c


def spec_rates(drafted: int, accepted: int, verify_steps: int) -> tuple[float, float]:
    """(acceptance rate, mean tokens per verify step: accepted drafts + the one sampled)."""
    return (accepted / drafted if drafted else 0.0,
            1 + accepted / verify_steps if verify_steps else 0.0)


class ServerMetrics:
    def __init__(self, model_name: str, weight_bytes: dict[str, int] | None = None,
                 memory: dict[str, int] | None = None, shared: "ServerMetrics | None" = None):
        """shared: another served model's metrics, whose registry this one joins (one
        /metrics for every model, told apart by model_name)."""
        self.model_name = model_name
        self.weight_bytes = dict(weight_bytes or {})  # precision -> bytes (WorkerInfo)
        self.memory = dict(memory or {})  # kind -> bytes at start-up (WorkerInfo.memory)
        self.stats = Stats()  # all replicas together
        self.replicas = None  # with data-parallel replicas: the MPClient (its cores, router)
        if shared is not None:
            self.registry, self._collector = shared.registry, shared._collector
            self._collector.members.append(self)
            for attr in ("ttft", "itl", "e2e", "queue", "finished"):
                setattr(self, attr, getattr(shared, attr))
        else:
            self._new_registry()
        self._timings: dict[str, _Timing] = {}
        self._last_log = (time.monotonic(), 0, 0)

    def _new_registry(self) -> None:
        self.registry = CollectorRegistry()
        self._collector = _StatsCollector([self])
        self.registry.register(self._collector)
        hist = dict(labelnames=["model_name"], registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.ttft = Histogram("tessera:time_to_first_token_seconds", "Time to first token", **hist)
        self.itl = Histogram("tessera:inter_token_latency_seconds", "Time between tokens", **hist)
        self.e2e = Histogram("tessera:e2e_request_latency_seconds", "Request latency", **hist)
        self.queue = Histogram("tessera:request_queue_time_seconds", "Time waiting in queue", **hist)
        self.finished = Counter("tessera:request_success", "Finished requests",
                                ["model_name", "finished_reason"], registry=self.registry)

    # -- MPClient observer -------------------------------------------------------------
    def on_arrival(self, request_id: str, prompt_tokens: int, now: float) -> None:
        self._timings[request_id] = _Timing(now, prompt_tokens)

    def on_output(self, request_id: str, out: RequestOutput, now: float) -> None:
        t = self._timings.get(request_id)
        if t is None:
            return
        tokens = sum(len(c.token_ids) for c in out.outputs)
        if tokens > t.tokens:
            if t.last_token is None:
                self.ttft.labels(self.model_name).observe(now - t.arrival)
            else:
                self.itl.labels(self.model_name).observe(now - t.last_token)
            t.last_token, t.tokens = now, tokens
        if out.finished:
            self.e2e.labels(self.model_name).observe(now - t.arrival)
            for c in out.outputs:
                self.finished.labels(self.model_name, c.finish_reason or "abort").inc()

    def on_done(self, request_id: str) -> None:
        self._timings.pop(request_id, None)

    def on_stats(self, stats: Stats, queue_times: dict[str, float]) -> None:
        self.stats = stats
        for seconds in queue_times.values():
            self.queue.labels(self.model_name).observe(seconds)

    # -- output --------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def log_line(self) -> str:
        now, s = time.monotonic(), self.stats
        then, prompt, gen = self._last_log
        dt = max(now - then, 1e-6)
        self._last_log = (now, s.prompt_tokens, s.generation_tokens)
        hit = s.prefix_hit_tokens / s.prefix_query_tokens if s.prefix_query_tokens else 0.0
        spec = ""
        if s.spec_verify_steps:
            rate, length = spec_rates(s.spec_drafted, s.spec_accepted, s.spec_verify_steps)
            spec = f", Draft acceptance: {rate:.1%}, Mean accepted length: {length:.2f}"
        return (f"Avg prompt throughput: {(s.prompt_tokens - prompt) / dt:.1f} tokens/s, "
                f"Avg generation throughput: {(s.generation_tokens - gen) / dt:.1f} tokens/s, "
                f"Running: {s.running} reqs, Waiting: {s.waiting} reqs, "
                f"KV cache usage: {s.kv_usage:.1%}, Prefix cache hit rate: {hit:.1%}{spec}")
