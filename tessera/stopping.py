"""When a request stops: the one rule for stop tokens, min_tokens, max_tokens and the
context length.

Three places apply it: the scheduler finishes requests (`check_stop`, and `length_reached`
for tokens still in flight), the model runner keeps stop tokens from being sampled while
min_tokens are not reached (`banned_token_ids`), and the output processor, which sees
text, applies stop strings from the same point on (`may_stop`).
- `may_stop(params, num_output_tokens)`: a stop token or string counts only once the
  request has min_tokens output tokens (the one being checked included).
- `banned_token_ids(params, num_output_tokens, eos_token_ids)`: so the sampler never
  draws EOS or a stop id while fewer than min_tokens tokens exist (the first stop token
  can be token min_tokens + 1).
- `check_stop(params, token, num_output_tokens, num_tokens, eos_token_ids, max_model_len)`
  -> ("stop", stop reason) for EOS (unless ignore_eos; reason None) or a stop token id
  (reason: that id), ("length", None) at max_tokens or the context length, else None.
"""
from __future__ import annotations

from typing import Optional, Union

from tessera.sampling_params import SamplingParams

StopReason = Union[int, str, None]


def may_stop(params: SamplingParams, num_output_tokens: int) -> bool:
    return num_output_tokens >= params.min_tokens


def length_reached(params: SamplingParams, num_output_tokens: int, num_tokens: int,
                   max_model_len: int) -> bool:
    return ((params.max_tokens is not None and num_output_tokens >= params.max_tokens)
            or num_tokens >= max_model_len)


_EOS, _LENGTH = ("stop", None), ("length", None)


def check_stop(params: SamplingParams, token: int, num_output_tokens: int, num_tokens: int,
               eos_token_ids: tuple[int, ...], max_model_len: int
               ) -> Optional[tuple[str, StopReason]]:
    """(may_stop and length_reached written out: this runs for every token of every step.)"""
    if num_output_tokens >= params.min_tokens:
        if token in eos_token_ids and not params.ignore_eos:
            return _EOS
        if token in params.stop_token_ids:
            return "stop", token
    max_tokens = params.max_tokens
    if (max_tokens is not None and num_output_tokens >= max_tokens) or num_tokens >= max_model_len:
        return _LENGTH
    return None


def banned_token_ids(params: SamplingParams, num_output_tokens: int,
                     eos_token_ids: tuple[int, ...]) -> list[int]:
    """The token ids the next sample (after num_output_tokens) may not be: EOS (unless
    ignore_eos) and the stop ids, while fewer than min_tokens tokens exist."""
    if num_output_tokens >= params.min_tokens:  # may_stop, written out (every row, every step)
        return []
    eos = [] if params.ignore_eos else list(eos_token_ids)
    return eos + list(params.stop_token_ids)
