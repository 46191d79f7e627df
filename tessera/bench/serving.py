"""`tessera bench serve`: BENCHMARKS.md's serving workload against a running server.

Objects: `make_workload` (seeded requests: random prompt token ids, output lengths drawn
from ranges), RequestRecord (one request's send time, token arrival times, error),
`run_serving` (async: sends the workload at Poisson arrivals over HTTP and streams each
answer), `summarize` (records -> the report: TTFT / TPOT / ITL / end-to-end mean and
percentiles, throughput, goodput under the SLOs), `print_report`, `run_serve_bench` (the
CLI's entry, from `tessera bench serve`).
Flow: request i is sent at the sum of i exponential gaps of mean 1 / rate (all at once
when the rate is inf), at most `max_concurrency` in flight if given, each a streaming
/v1/completions call with its prompt as token ids, ignore_eos, max_tokens its output
length and return_token_ids, so every chunk says how many tokens it brings, with or
without a tokenizer on the server. A request counts as completed when its stream ends
with a finish reason (not abort) and [DONE]; anything else is a failure, with its
reason. TTFT: first token's arrival - send; ITL: the gaps between chunks after the
first; TPOT: (end-to-end - TTFT) / (tokens - 1); goodput: completed requests per second
that met both SLOs (TTFT <= 500 ms and TPOT <= 50 ms by default, the document's chat
targets). These follow vLLM's benchmark_serving.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import random
import time
from typing import Any, Optional

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclasses.dataclass
class RequestRecord:
    prompt_len: int
    output_len: int  # asked for
    sent: float = 0.0
    token_times: list[float] = dataclasses.field(default_factory=list)  # one per chunk
    tokens: int = 0  # received
    finish_reason: Optional[str] = None
    done: bool = False  # the stream's closing [DONE] arrived
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """Answered in full: tokens, a finish reason other than abort, and [DONE]."""
        return (self.error is None and self.done and self.tokens > 0
                and self.finish_reason not in (None, "abort"))

    def failure(self) -> str:
        if self.error is not None:
            return self.error
        if not self.done or self.finish_reason is None:
            return "the stream ended before its finish"
        return "no tokens" if not self.tokens else f"finish_reason {self.finish_reason}"

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.sent

    @property
    def tpot(self) -> Optional[float]:
        """As vLLM's benchmark defines it (tokens after the first, over the time after the
        first chunk); a server that sends several tokens per chunk shows a lower TPOT."""
        return (self.e2e - self.ttft) / (self.tokens - 1) if self.tokens > 1 else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


def make_workload(num_prompts: int, input_range: tuple[int, int], output_range: tuple[int, int],
                  vocab_size: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request, lengths uniform in the ranges."""
    for lo, hi in (input_range, output_range):
        if not 1 <= lo <= hi:
            raise ValueError(f"a length range must be 1 <= low <= high, got {lo}..{hi}")
    rng = random.Random(seed)
    return [([rng.randrange(vocab_size) for _ in range(rng.randint(*input_range))],
             rng.randint(*output_range)) for _ in range(num_prompts)]


def arrival_times(n: int, rate: float, seed: int = 0) -> list[float]:
    """Seconds from the start at which each request is sent: Poisson arrivals."""
    if rate <= 0:
        raise ValueError(f"request rate must be positive (or inf), got {rate}")
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed + 1)
    t, times = 0.0, []
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def _one_request(client, url: str, model: str, prompt: list[int], output_len: int,
                       record: RequestRecord, headers: dict) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "stream": True,
            "ignore_eos": True, "temperature": 0.0, "return_token_ids": True}
    record.sent = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                record.error = f"HTTP {resp.status_code}: {text[:200]}"
                return
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    record.done = True
                    continue
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    record.error = str(chunk["error"].get("message", chunk["error"]))[:200]
                    return
                for choice in chunk.get("choices", ()):
                    record.finish_reason = choice.get("finish_reason") or record.finish_reason
                new = sum(len(c.get("token_ids") or ()) for c in chunk.get("choices", ()))
                if new:
                    record.token_times.append(time.perf_counter())
                    record.tokens += new
    except Exception as e:  # refused, dropped or timed out: a failed request
        record.error = f"{type(e).__name__}: {e}"[:200]


async def run_serving(base_url: str, model: str, workload: list[tuple[list[int], int]],
                      rate: float, max_concurrency: Optional[int] = None,
                      api_key: Optional[str] = None, seed: int = 0,
                      request_timeout: float = 600.0, transport=None
                      ) -> tuple[list[RequestRecord], float]:
    """Sends the workload at Poisson arrivals -> (records, wall seconds from first send to
    last answer). request_timeout: the longest wait for any piece of an answer (a stalled
    stream fails its request instead of hanging the run); transport: httpx's, for tests."""
    import httpx

    records = [RequestRecord(len(p), n) for p, n in workload]
    times = arrival_times(len(workload), rate, seed)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=max_concurrency or len(workload) or 1,
                          max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(request_timeout, connect=30.0),
                                 limits=limits, transport=transport) as client:
        start = time.perf_counter()

        async def send(i: int) -> None:
            await asyncio.sleep(max(0.0, start + times[i] - time.perf_counter()))
            if gate is None:
                return await _one_request(client, url, model, *workload[i], records[i], headers)
            async with gate:
                await _one_request(client, url, model, *workload[i], records[i], headers)

        await asyncio.gather(*(send(i) for i in range(len(workload))))
    return records, time.perf_counter() - start


def _stats(values: list[float], scale: float = 1e3) -> dict[str, Optional[float]]:
    """mean / p50 / p90 / p99 (in ms for seconds, by default); None without values."""
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values) * scale
    return {"mean": float(arr.mean()),
            **{f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}}


def summarize(records: list[RequestRecord], duration: float, slo_ttft_ms: float = 500.0,
              slo_tpot_ms: float = 50.0) -> dict[str, Any]:
    done = [r for r in records if r.ok]
    good = [r for r in done if r.ttft * 1e3 <= slo_ttft_ms
            and (r.tpot is None or r.tpot * 1e3 <= slo_tpot_ms)]
    out_tokens = sum(r.tokens for r in done)
    in_tokens = sum(r.prompt_len for r in done)
    errors = [r.failure() for r in records if not r.ok]
    return {
        "completed": len(done), "failed": len(records) - len(done),
        "first_errors": sorted(set(errors))[:3],
        "duration_s": duration, "input_tokens": in_tokens, "output_tokens": out_tokens,
        "short_outputs": sum(r.tokens < r.output_len for r in done),
        "request_throughput": len(done) / duration if duration else 0.0,
        "output_tok_s": out_tokens / duration if duration else 0.0,
        "total_tok_s": (in_tokens + out_tokens) / duration if duration else 0.0,
        "ttft_ms": _stats([r.ttft for r in done]),
        "tpot_ms": _stats([r.tpot for r in done if r.tpot is not None]),
        "itl_ms": _stats([x for r in done for x in r.itls]),
        "e2e_ms": _stats([r.e2e for r in done]),
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms},
        "good_requests": len(good), "goodput": len(good) / duration if duration else 0.0,
    }


def _ms(value: Optional[float], width: int = 9) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.1f}"


def print_report(r: dict[str, Any]) -> None:
    print(f"serving {r['model']}  rate {r['request_rate']} req/s, {r['completed']} done, "
          f"{r['failed']} failed, {r['duration_s']:.1f} s: {r['request_throughput']:.2f} "
          f"req/s, {r['output_tok_s']:.0f} output tok/s, {r['total_tok_s']:.0f} total tok/s")
    print(f"{'ms':<6}{'mean':>9}" + "".join(f"{'p' + str(p):>9}" for p in PERCENTILES))
    for key in ("ttft", "tpot", "itl", "e2e"):
        s = r[f"{key}_ms"]
        print(f"{key.upper():<6}{_ms(s['mean'])}"
              + "".join(_ms(s[f"p{p}"]) for p in PERCENTILES))
    slo = r["slo"]
    print(f"goodput (TTFT <= {slo['ttft_ms']:.0f} ms, TPOT <= {slo['tpot_ms']:.0f} ms): "
          f"{r['goodput']:.2f} req/s ({r['good_requests']} of {r['completed']})")
    if r["first_errors"]:
        print("errors: " + " | ".join(r["first_errors"]))


def server_model(base_url: str, api_key: Optional[str] = None) -> dict[str, Any]:
    """The served model's card from /v1/models (id, max_model_len, vocab_size)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    resp.raise_for_status()
    return resp.json()["data"][0]


def add_serve_args(p: argparse.ArgumentParser) -> set[str]:
    """Adds the serve workload's options; returns their names (argparse dests)."""
    g = p.add_argument_group(
        "serve workload", "against a running server: its model (from /v1/models) is the one "
        "measured, so the engine options below are refused; --num-prompts, --input-range, "
        "--output-range, --seed and --json apply")
    g.add_argument("--base-url", default="http://127.0.0.1:8000")
    g.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second, Poisson arrivals (default inf: all at once)")
    g.add_argument("--max-concurrency", type=int, default=None)
    g.add_argument("--slo-ttft-ms", type=float, default=500.0)
    g.add_argument("--slo-tpot-ms", type=float, default=50.0)
    g.add_argument("--api-key", default=None)
    g.add_argument("--vocab-size", type=int, default=None,
                   help="token ids to draw prompts from (default: the server's vocab_size)")
    g.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds to wait for any piece of an answer before failing it")
    return {action.dest for action in g._group_actions}


def run_serve_bench(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    card = server_model(args.base_url, args.api_key)
    vocab = args.vocab_size or card.get("vocab_size")
    if not vocab:
        raise SystemExit("the server's /v1/models does not give vocab_size: pass --vocab-size")
    longest = args.input_range[1] + args.output_range[1]
    if longest > card.get("max_model_len", longest):
        raise SystemExit(f"prompt + output up to {longest} tokens does not fit the server's "
                         f"max_model_len {card['max_model_len']}: lower --input-range or "
                         "--output-range")
    seed = args.seed or 0
    workload = make_workload(args.num_prompts, tuple(args.input_range), tuple(args.output_range),
                             vocab, seed)
    records, duration = asyncio.run(run_serving(
        args.base_url, card["id"], workload, args.request_rate,
        args.max_concurrency, args.api_key, seed, args.request_timeout))
    r = summarize(records, duration, args.slo_ttft_ms, args.slo_tpot_ms)
    rate = args.request_rate
    r.update(workload="serve", model=card["id"], request_rate="inf" if math.isinf(rate) else rate,
             max_concurrency=args.max_concurrency, num_prompts=args.num_prompts,
             input_range=list(args.input_range), output_range=list(args.output_range))
    print_report(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2, allow_nan=False)
    return 0 if r["completed"] else 1
