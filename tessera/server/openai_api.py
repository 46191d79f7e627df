"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions,
/tokenize, /detokenize.

Flow of a request: pydantic body -> model name check (404) -> prompts tokenized and
checked against the context (400 with the message clients match on) -> SamplingParams
(400 naming the field) -> structured outputs' grammar compiled (400 naming the
problem) -> MPClient.generate per prompt -> one JSON response, or SSE chunks (chat: role
chunk first; holdback for stop strings; optional usage chunk; `data: [DONE]`). Chat with
tools (server/tools.py): the plan (mode, grammar, parser) first, the tools rendered into
the prompt, the answer parsed for calls (server/tool_parsers.py), streamed as deltas.
A client that disconnects aborts its requests (blocks freed at once).
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tessera.frontend.input import PreparedPrompt
from tessera.sampling_params import SamplingParams
from tessera.server import openai_format as fmt
from tessera.server.errors import ApiError, error_body
from tessera.server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                     TokenizeRequest)
from tessera.server.stall_guard import StallGuardedStream
from tessera.server.streaming import DeltaTracker, admitted, merge_streams, sse
from tessera.server.tool_parsers import ToolStream, parser_for, tool_calls_of
from tessera.server.tools import plan_tools, tool_conversation

router = APIRouter()


def _state(request: Request):
    return request.app.state.tessera


def check_model(state, model: Optional[str]):
    """(the state of the model a request names, the served name responses give); any of a
    model's served names will do, and none means the first model."""
    if model and model not in state.model_names and model not in state.others:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    s = state.for_model(model)
    return s, s.model_name


def check_supported(body) -> None:
    """400 naming the first field that asks for what Tessera does not implement."""
    refused = body.check_supported()
    if refused is not None:
        field, what = refused
        raise ApiError(400, f"{field} is not supported: Tessera does not implement {what}.",
                       field)


async def check_structured(state, body, params: SamplingParams,
                           field: Optional[str] = None) -> None:
    """A 400 naming the field whose grammar does not compile (compiled off the event loop;
    cached, so the engine client's own check finds it)."""
    if params.structured_outputs is None:
        return
    field = field or body.structured_field()
    try:
        await state.prompts.run(state.client.input.check_structured, params,
                                what=f"{field} grammar")
    except ValueError as e:
        raise ApiError(400, f"{field} is invalid: "
                       f"{str(e).removeprefix('structured outputs: ')}", field) from None


def _max_tokens(state, prompt_len: int, asked: Optional[int], kind: str) -> int:
    limit = state.client.input.max_model_len
    if asked is not None and asked < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {asked}.", "max_tokens")
    completion = asked if asked is not None else max(limit - prompt_len, 0)
    if prompt_len + completion > limit or prompt_len >= limit:
        where = ("in the messages", "in the completion") if kind == "chat" else (
            "in your prompt;", "for the completion")
        raise ApiError(400, f"This model's maximum context length is {limit} tokens. However, you "
                            f"requested {prompt_len + completion} tokens ({prompt_len} {where[0]}"
                            f"{',' if kind == 'chat' else ''} {completion} {where[1]}). Please "
                            "reduce the length of the messages or completion.", "messages"
                       if kind == "chat" else "prompt")
    return completion


async def until_disconnect(request: Request, work):
    """Runs `work`; if the client goes away first, cancels it (its requests abort)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise asyncio.CancelledError("client disconnected")
    return task.result()


async def _final(stream: AsyncIterator) -> Any:
    last = None
    async for last in stream:
        pass
    return last


async def all_final(streams: list[AsyncIterator]) -> list[Any]:
    """The last output of each stream; if one fails, the others are cancelled (aborted)."""
    tasks = [asyncio.ensure_future(_final(st)) for st in streams]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse_response(chunks: AsyncIterator[str], stall_s: float,
                 done: bool = True) -> StreamingResponse:
    """An SSE response of chunks; a client that reads nothing for stall_s is dropped and
    its request aborted (server/stall_guard.py)."""
    async def guarded() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except ApiError as e:
            yield sse(error_body(e.status, e.message, e.param))
        except Exception as e:  # engine died or refused mid-stream: say so in-band
            status = getattr(e, "status", 503)
            yield sse(error_body(status, str(e)))
        if done:
            yield sse("[DONE]")
    return StallGuardedStream(guarded(), stall_s, media_type="text/event-stream")


# -- /v1/models ---------------------------------------------------------------------------
@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [{
        "id": name, "object": "model", "created": s.started, "owned_by": "tessera",
        "root": s.model_path, "max_model_len": s.client.input.max_model_len,
        "vocab_size": s.client.input.arch.vocab_size}
        for s in _state(request).all_models() for name in s.model_names]}


# -- /v1/completions ----------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    s, model = check_model(_state(request), body.model)
    check_supported(body)
    front = s.client.input
    needs = [f for f, asked in (("echo", body.echo), ("logprobs", body.logprobs is not None),
                                ("stop", bool(body.stop))) if asked]
    if front.tokenizer is None and needs:
        raise ApiError(400, f"{needs[0]} needs the model's tokenizer, and this server has none "
                       "(the new tokens come back as token_ids).", needs[0])
    s.client.check_fan_out(len(body.prompts()) * body.n)  # before tokenizing any of them
    prompts = await s.prompts.run(lambda: [  # tokenized off the event loop
        front.prepare_prompt(p, check_length=False, add_special_tokens=body.add_special_tokens)
        for p in body.prompts()])
    params = []
    for p in prompts:
        max_tokens = _max_tokens(s, len(p.token_ids), body.max_tokens, "completion")
        params.append(body.sampling_params(
            front.generation_defaults, max_tokens, body.logprobs,
            body.logprobs if body.echo and body.logprobs is not None else None))
    await check_structured(s, body, params[0])
    rid = f"cmpl-{uuid.uuid4().hex}"
    streams = [s.client.generate(f"{rid}-{i}", p, sp)
               for i, (p, sp) in enumerate(zip(prompts, params))]
    if body.stream:  # a refusal is the response's status, not an event after a 200
        streams = await admitted(streams)
        return sse_response(_completion_chunks(s, body, rid, model, prompts, params, streams),
                            s.stream_stall_s)
    finals = await until_disconnect(request, all_final(streams))
    choices, completion_tokens = [], 0
    for i, (prompt, out) in enumerate(zip(prompts, finals)):
        for c in out.outputs:
            completion_tokens += len(c.token_ids)
            choices.append(_completion_choice(front, body, i * body.n + c.index, prompt, out, c))
    return fmt.envelope(rid, "text_completion", model, choices, usage=fmt.usage(
        sum(len(p.token_ids) for p in prompts), completion_tokens,
        sum(o.num_cached_tokens for o in finals), sum(o.cost for o in finals)))


def returns_token_ids(front, body) -> bool:
    """Whether choices carry token ids: asked for, or no tokenizer to make text with."""
    return body.return_token_ids or front.tokenizer is None


def _completion_choice(front, body: CompletionRequest, index: int, prompt: PreparedPrompt,
                       out, c) -> dict[str, Any]:
    text = c.text
    prompt_text = ""  # decoded only to echo it
    if body.echo:
        prompt_text = prompt.text if prompt.text is not None else front.decode(prompt.token_ids)
    logprobs = None
    if body.logprobs is not None:
        logprobs = fmt.completion_logprobs(c.token_ids, c.logprobs, body.logprobs, front.decode,
                                           offset=len(prompt_text) if body.echo else 0)
        if body.echo:
            logprobs = fmt.merge_completion_logprobs(fmt.completion_logprobs(
                prompt.token_ids, out.prompt_logprobs, body.logprobs, front.decode), logprobs)
    if body.echo:
        text = prompt_text + text
    ids = ({"prompt_token_ids": prompt.token_ids, "token_ids": c.token_ids}
           if returns_token_ids(front, body) else {})
    return {"index": index, "text": text, "logprobs": logprobs, **ids, **fmt.finish_fields(c)}


async def _completion_chunks(s, body, rid, model, prompts, params, streams) -> AsyncIterator[str]:
    front = s.client.input
    with_ids = returns_token_ids(front, body)
    trackers = [DeltaTracker(sp.stop) for sp in params]
    echoed: set[int] = set()
    introduced: set[int] = set()  # choices whose prompt token ids were sent
    completion_tokens = 0
    cached, costs = {}, {}
    async for i, out in merge_streams(streams):
        cached[i], costs[i] = out.num_cached_tokens, out.cost
        for c in out.outputs:
            if trackers[i].skip(c):
                continue
            text, first, end = trackers[i].delta(c)
            index = i * body.n + c.index
            if body.echo and index not in echoed:
                echoed.add(index)
                p = prompts[i]
                text = (p.text if p.text is not None else front.decode(p.token_ids)) + text
            logprobs = None
            if body.logprobs is not None and end > first:
                logprobs = fmt.completion_logprobs(c.token_ids[first:end], c.logprobs[first:end],
                                                   body.logprobs, front.decode)
            ids = {"token_ids": c.token_ids[first:end]} if with_ids else {}
            if not text and logprobs is None and not c.finished and not (ids and end > first):
                continue
            if with_ids and index not in introduced:  # the choice's first chunk
                introduced.add(index)
                ids["prompt_token_ids"] = prompts[i].token_ids
            if c.finished:
                completion_tokens += len(c.token_ids)
            yield sse(fmt.envelope(rid, "text_completion", model, [{
                "index": index, "text": text, "logprobs": logprobs, **ids,
                **(fmt.finish_fields(c) if c.finished else
                   {"finish_reason": None, "stop_reason": None})}]))
    if body.include_usage:
        yield sse(fmt.envelope(rid, "text_completion", model, [], usage=fmt.usage(
            sum(len(p.token_ids) for p in prompts), completion_tokens, sum(cached.values()),
            sum(costs.values()))))


# -- /v1/chat/completions -----------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    s, model = check_model(_state(request), body.model)
    check_supported(body)
    front = s.client.input
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs=true.", "top_logprobs")
    plan = plan_tools(body, s.tools)
    messages = [m.as_template_dict() for m in body.messages]
    template_kwargs = dict(body.chat_template_kwargs or {})
    add_generation_prompt = template_kwargs.pop("add_generation_prompt",
                                                body.add_generation_prompt)
    if body.continue_final_message:
        if add_generation_prompt:
            raise ApiError(400, "continue_final_message needs add_generation_prompt=false "
                                "(the last message is continued, no new one begun).",
                           "continue_final_message")
        template_kwargs["continue_final_message"] = True
    if body.documents is not None:
        template_kwargs["documents"] = body.documents
    if body.chat_template is not None and not s.trust_request_chat_template:
        raise ApiError(400, "this server renders the model's own chat template; a request's "
                       "chat_template is refused unless it was started with "
                       "--trust-request-chat-template.", "chat_template")
    def render() -> list[int]:  # off the event loop; ValueError (400) on template errors
        msgs, tool_kwargs = tool_conversation(front, messages, plan, body.chat_template)
        return front.apply_chat_template(msgs, add_generation_prompt, body.chat_template,
                                         add_special_tokens=body.add_special_tokens,
                                         **template_kwargs, **tool_kwargs)
    ids = await s.prompts.run(render, what="messages")
    prompt = front.prepare_prompt(ids, check_length=False)
    max_tokens = _max_tokens(s, len(ids), body.requested_max_tokens(), "chat")
    k = (body.top_logprobs or 0) if body.logprobs else None
    params = body.sampling_params(front.generation_defaults, max_tokens, k, None)
    s.client.check_fan_out(params.n)
    forced = plan.grammar()  # required or named tool calls
    params.structured_outputs = forced or params.structured_outputs
    await check_structured(s, body, params, "tools" if forced else None)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    stream = s.client.generate(rid, prompt, params)
    if body.stream:
        stream = (await admitted([stream]))[0]
        return sse_response(_chat_chunks(body, rid, model, prompt, params, stream, plan),
                            s.stream_stall_s)
    out = (await until_disconnect(request, all_final([stream])))[0]
    choices = []
    for c in out.outputs:
        ids = {"token_ids": c.token_ids} if body.return_token_ids else {}
        message, finish = {"role": "assistant", "content": c.text}, fmt.finish_fields(c)
        if plan.calls:
            message, finish = _tool_message(plan, c)
        choices.append({"index": c.index, "message": message,
                        "logprobs": fmt.chat_logprobs(c.token_ids, c.logprobs, k)
                        if k is not None else None, **ids, **finish})
    answer = fmt.envelope(rid, "chat.completion", model, choices, usage=fmt.usage(
        len(prompt.token_ids), sum(len(c.token_ids) for c in out.outputs), out.num_cached_tokens,
        out.cost))
    if body.return_token_ids:
        answer["prompt_token_ids"] = prompt.token_ids
    return answer


def _tool_message(plan, c) -> tuple[dict[str, Any], dict[str, Any]]:
    """(message, finish fields) of a choice that may hold tool calls."""
    content, calls = parser_for(plan.mode, plan.parser, plan.named).parse(c.text, True)
    tool_calls = tool_calls_of(calls, plan.parallel)
    finish = fmt.finish_fields(c)
    if not tool_calls:  # no call (or one cut short): the text is the answer
        return {"role": "assistant", "content": c.text}, finish
    if c.finish_reason == "stop":
        finish = {"finish_reason": "tool_calls", "stop_reason": c.stop_reason}
    return {"role": "assistant", "content": content if content.strip() else None,
            "tool_calls": tool_calls}, finish


async def _chat_chunks(body, rid, model, prompt, params: SamplingParams,
                       stream, plan) -> AsyncIterator[str]:
    k = (body.top_logprobs or 0) if body.logprobs else None
    tracker = DeltaTracker(params.stop)
    tools = {i: ToolStream(parser_for(plan.mode, plan.parser, plan.named), plan.parallel)
             for i in range(params.n)} if plan.calls else {}
    released = {i: "" for i in range(params.n)}  # text given out so far, per choice
    obj = "chat.completion.chunk"
    prompt_ids = {"prompt_token_ids": prompt.token_ids} if body.return_token_ids else {}
    for i in range(params.n):
        yield sse(fmt.envelope(rid, obj, model, [{"index": i, "delta": {
            "role": "assistant", "content": ""}, "logprobs": None, **prompt_ids,
            "finish_reason": None}]))
    completion_tokens = cached = 0
    cost = 0.0
    async for out in stream:
        cached, cost = out.num_cached_tokens, out.cost
        for c in out.outputs:
            if tracker.skip(c):
                continue
            text, first, end = tracker.delta(c)
            logprobs = (fmt.chat_logprobs(c.token_ids[first:end], c.logprobs[first:end], k)
                        if k is not None and end > first else None)
            ids = {"token_ids": c.token_ids[first:end]} if body.return_token_ids else {}
            delta: dict[str, Any] = {"content": text}
            if plan.calls:
                released[c.index] += text
                text, calls = tools[c.index].delta(released[c.index], c.finished)
                delta = {"content": text} if text or not calls else {}
                if calls:
                    delta["tool_calls"] = calls
            if text or logprobs or (ids and end > first) or delta.get("tool_calls"):
                yield sse(fmt.envelope(rid, obj, model, [{"index": c.index, "delta": delta,
                                                          "logprobs": logprobs, **ids,
                                                          "finish_reason": None}]))
            if c.finished:
                completion_tokens += len(c.token_ids)
                finish = fmt.finish_fields(c)
                if plan.calls and tools[c.index].called and c.finish_reason == "stop":
                    finish["finish_reason"] = "tool_calls"
                yield sse(fmt.envelope(rid, obj, model, [{"index": c.index, "delta": {},
                                                          "logprobs": None, **finish}]))
    if body.include_usage:
        yield sse(fmt.envelope(rid, obj, model, [], usage=fmt.usage(
            len(prompt.token_ids), completion_tokens, cached, cost)))


# -- /tokenize, /detokenize ---------------------------------------------------------------
@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    s, _ = check_model(_state(request), body.model)
    front = s.client.input
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give exactly one of prompt or messages.", "prompt")
    if body.messages is not None:
        ids = await s.prompts.run(front.apply_chat_template,
                                  [m.as_template_dict() for m in body.messages],
                                  body.add_generation_prompt, what="messages")
    elif front.tokenizer is None:
        raise ApiError(400, "this model has no tokenizer to tokenize the prompt with.", "prompt")
    else:
        ids = await s.prompts.run(front.tokenizer.encode, body.prompt,
                                  add_special_tokens=body.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": front.max_model_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    s, _ = check_model(_state(request), body.model)
    front = s.client.input
    bad = [t for t in body.tokens if not 0 <= t < front.arch.vocab_size]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary.", "tokens")
    return {"prompt": front.decode(body.tokens, skip_special_tokens=False)}


@router.get("/health")
async def health(request: Request):
    dead = _state(request).dead()
    if dead:
        return JSONResponse(error_body(503, dead), status_code=503)
    return JSONResponse({"status": "ok"})
