"""The serving benchmark's pieces without a server: seeded workloads within their ranges,
Poisson arrival times (inf: all at once; otherwise gaps of mean 1 / rate), the report's
TTFT / TPOT / ITL / end-to-end and goodput from hand-made timings, and the client's
reading of streams (httpx mock transport): tokens counted per chunk, and a refused
request, an in-band error, a truncated stream or an aborted answer counted as failed; and
`tessera bench` refusing an option that its workload would ignore."""
from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from tessera.bench.serving import (RequestRecord, arrival_times, make_workload, run_serving,
                                 summarize)


def test_workload_is_seeded_and_within_its_ranges():
    a = make_workload(50, (4, 9), (2, 5), vocab_size=100, seed=3)
    assert a == make_workload(50, (4, 9), (2, 5), vocab_size=100, seed=3)
    assert a != make_workload(50, (4, 9), (2, 5), vocab_size=100, seed=4)
    assert all(4 <= len(p) <= 9 and 2 <= n <= 5 for p, n in a)
    assert all(0 <= t < 100 for p, _ in a for t in p)
    assert {len(p) for p, _ in a} == set(range(4, 10))  # the whole range is drawn
    with pytest.raises(ValueError, match="range"):
        make_workload(1, (9, 4), (2, 5), vocab_size=100)
    with pytest.raises(ValueError, match="range"):
        make_workload(1, (4, 9), (0, 5), vocab_size=100)


def test_arrivals_are_poisson_at_the_rate():
    assert arrival_times(5, math.inf) == [0.0] * 5
    times = arrival_times(4000, 20.0, seed=1)
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:]))
    assert times[-1] / (len(times) - 1) == pytest.approx(1 / 20.0, rel=0.06)
    assert arrival_times(10, 20.0, seed=1) == times[:10]  # seeded
    with pytest.raises(ValueError, match="rate"):
        arrival_times(3, 0.0)


def record(sent, times, tokens, output_len=None, error=None):
    return RequestRecord(prompt_len=10, output_len=output_len or tokens, sent=sent,
                         token_times=list(times), tokens=tokens, error=error,
                         finish_reason="length", done=True)


def test_summary_from_hand_made_timings():
    fast = record(0.0, [0.1, 0.12, 0.14, 0.16], 4)  # TTFT 100 ms, TPOT 20 ms
    slow_start = record(1.0, [1.8, 1.81], 2)  # TTFT 800 ms: misses the TTFT SLO
    slow_tokens = record(2.0, [2.1, 2.2, 2.3], 3, output_len=5)  # TPOT 100 ms; 2 tokens short
    one_token = record(3.0, [3.2], 1)  # no TPOT: meets the SLO on TTFT alone
    failed = record(4.0, [], 0, output_len=3, error="HTTP 400: bad")
    r = summarize([fast, slow_start, slow_tokens, one_token, failed], duration=5.0)
    assert (r["completed"], r["failed"]) == (4, 1)
    assert r["first_errors"] == ["HTTP 400: bad"]
    assert r["output_tokens"] == 10 and r["input_tokens"] == 40
    assert r["short_outputs"] == 1
    assert r["request_throughput"] == pytest.approx(0.8)
    assert r["output_tok_s"] == pytest.approx(2.0)
    assert r["ttft_ms"]["mean"] == pytest.approx((100 + 800 + 100 + 200) / 4)
    assert r["ttft_ms"]["p50"] == pytest.approx(150)
    assert r["tpot_ms"]["mean"] == pytest.approx((20 + 10 + 100) / 3)
    itls = [20, 20, 20, 10, 100, 100]
    assert r["itl_ms"]["mean"] == pytest.approx(sum(itls) / len(itls))
    assert r["e2e_ms"]["mean"] == pytest.approx((160 + 810 + 300 + 200) / 4)
    assert r["e2e_ms"]["p50"] == pytest.approx(250)
    assert r["good_requests"] == 2 and r["goodput"] == pytest.approx(0.4)  # fast, one_token
    strict = summarize([fast], duration=1.0, slo_ttft_ms=50.0)
    assert strict["good_requests"] == 0


def test_summary_of_nothing_completed_has_no_numbers():
    r = summarize([record(0.0, [], 0, output_len=2, error="refused")], duration=1.0)
    assert r["completed"] == 0 and r["ttft_ms"]["p50"] is None and r["goodput"] == 0.0
    json.dumps(r, allow_nan=False)  # strict JSON: no NaN


def sse(*events) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode()
                    for e in events)


def chunk(ids, finish=None):
    return {"choices": [{"index": 0, "text": "", "token_ids": ids, "finish_reason": finish}]}


STREAMS = {  # prompt's first token id -> the server's answer
    1: (200, sse(chunk([7]), chunk([8, 9]), chunk([10], "length"), "[DONE]")),
    2: (400, b'{"error": {"message": "bad prompt"}}'),
    3: (200, sse(chunk([7]), {"error": {"message": "engine died"}}, "[DONE]")),
    4: (200, sse(chunk([7]), chunk([8]))),  # cut off: no finish, no [DONE]
    5: (200, sse(chunk([7]), chunk([], "abort"), "[DONE]")),
}


def test_the_client_reads_streams_and_names_each_failure():
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] and body["return_token_ids"] and body["ignore_eos"]
        status, content = STREAMS[body["prompt"][0]]
        return httpx.Response(status, content=content)
    workload = [([k, 5, 6], 4) for k in sorted(STREAMS)]
    records, duration = asyncio.run(run_serving("http://test", "m", workload, math.inf,
                                                transport=httpx.MockTransport(answer)))
    ok, refused, died, cut, aborted = records
    assert ok.ok and ok.tokens == 4 and len(ok.token_times) == 3  # a time per chunk
    assert ok.finish_reason == "length" and ok.tpot is not None
    assert not refused.ok and refused.failure().startswith("HTTP 400")
    assert not died.ok and died.failure() == "engine died"
    assert not cut.ok and "ended before" in cut.failure()
    assert not aborted.ok and aborted.failure() == "finish_reason abort"
    r = summarize(records, duration)
    assert (r["completed"], r["failed"]) == (1, 4)


@pytest.mark.parametrize("argv, named", [
    (["bench", "serve", "--max-num-seqs", "8"], "--max-num-seqs does not apply to "
                                                "`tessera bench serve` (it measures"),
    (["bench", "latency", "--request-rate", "4", "--num-prompts", "5"],
     "--num-prompts, --request-rate do not apply to `tessera bench latency`"),
    (["bench", "throughput", "--batch-size", "4"], "--batch-size does not apply"),
])
def test_bench_refuses_options_its_workload_would_ignore(argv, named):
    from tessera.cli import build_parser
    args = build_parser().parse_args(argv)
    with pytest.raises(SystemExit, match=named.replace("(", r"\(").replace("`", ".")):
        args.func(args)


def test_bench_accepts_its_own_options_and_defaults_given_again():
    from tessera.bench.cli import refuse_foreign_options
    from tessera.cli import build_parser
    for argv in (["bench", "serve", "--seed", "3", "--num-prompts", "9", "--input-range",
                  "128", "1024", "--request-rate", "2"],
                 ["bench", "latency", "--batch-size", "4", "--max-num-seqs", "8"],
                 ["bench", "throughput", "--output-range", "4", "8", "--dtype", "float32"]):
        refuse_foreign_options(build_parser().parse_args(argv))  # nothing raised
