"""OpenAI response shapes built from RequestOutputs (plain dicts, JSON-ready).

Completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}, with the
prompt's first (echo). Chat logprobs: {content: [{token, logprob, bytes, top_logprobs}]}.
Usage counts prompt tokens once per prompt and completion tokens over all choices, and
with --price-per-hour the requests' cost in dollars.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from tessera.outputs import CompletionOutput, PositionLogprobs


def _top(entry: PositionLogprobs, k: int) -> list[tuple[str, float]]:
    """The k best alternatives at one position, best first."""
    ranked = sorted((lp.rank, lp.decoded_token or "", lp.logprob) for lp in entry.values()
                    if lp.rank is not None and lp.rank <= k)
    return [(text, value) for _, text, value in ranked]


def completion_logprobs(token_ids: list[int], entries: list[Optional[PositionLogprobs]],
                        k: int, decode, offset: int = 0) -> dict[str, Any]:
    tokens, token_lps, tops, offsets = [], [], [], []
    for tid, entry in zip(token_ids, entries):
        text = entry[tid].decoded_token if entry and tid in entry else decode([tid])
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if entry is None:
            token_lps.append(None)
            tops.append(None)
        else:
            token_lps.append(entry[tid].logprob)
            tops.append(dict(_top(entry, k)) if k else None)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
            "text_offset": offsets}


def merge_completion_logprobs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {key: a[key] + b[key] for key in a}


def chat_logprobs(token_ids: list[int], entries: list[PositionLogprobs], k: int) -> dict:
    content = []
    for tid, entry in zip(token_ids, entries):
        lp = entry[tid]
        token = lp.decoded_token or ""
        content.append({"token": token, "logprob": lp.logprob,
                        "bytes": list(token.encode("utf-8")),
                        "top_logprobs": [{"token": t, "logprob": v,
                                          "bytes": list(t.encode("utf-8"))}
                                         for t, v in _top(entry, k)]})
    return {"content": content}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: Optional[int] = None,
          cost: float = 0.0) -> dict[str, Any]:
    """cost: dollars, the requests' share of the instance's time; only a server with
    --price-per-hour counts it (engine/cost.py), and only then is `cost_usd` there."""
    u: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if cost > 0:
        u["cost_usd"] = cost
    return u


def envelope(request_id: str, obj: str, model: str, choices: list, created: Optional[int] = None,
             **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "object": obj, "created": created or int(time.time()),
            "model": model, "choices": choices, **extra}


def finish_fields(c: CompletionOutput) -> dict[str, Any]:
    return {"finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
