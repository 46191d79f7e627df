"""Incremental detokenization and stop strings.

`make_detokenizer(tokenizer, prompt_ids, skip_special_tokens)` picks one of two
detokenizers with the same interface (`add_token(id)` -> new text, `flush()` -> what is
held back at the end): StreamDetokenizer for fast tokenizers whose decode is their
backend's (tokenizers' DecodeStream, in Rust: no re-decoding of a window per token), and
IncrementalDetokenizer for the others (a tokenizer whose decode cleans spaces up, a slow
one). Both start from the prompt's last tokens (less those that end it mid-character),
so the first output token's leading space comes out as in context, and never split a
character.

IncrementalDetokenizer turns one token at a time into text deltas. It decodes a short
window of ids (from `prefix_offset`) and emits only the text beyond what the window
before the newest tokens decoded to; while the text ends in U+FFFD (a multi-byte
character split across tokens) it emits nothing and waits, so a character is never
split. The window starts with a few prompt tokens so the first output token's leading
space comes out as the tokenizer would decode it in context.

`find_stop(text, start, stops)` finds the earliest stop string that ends at or after
`start` (the part of the text that is new).
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

_CONTEXT_TOKENS = 5


def _context(tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool
             ) -> list[int]:
    """The prompt's last few tokens, less any that end it mid-character (token-id
    prompts can): their bytes are the prompt's, and must not come out as output text."""
    ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
    while ids and tokenizer.decode(ids, skip_special_tokens=skip_special_tokens
                                   ).endswith("\ufffd"):
        ids.pop()
    return ids


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids = _context(tokenizer, prompt_token_ids, skip_special_tokens)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add_token(self, token_id: int) -> str:
        """Returns the new text this token completes ('' while a character is split)."""
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """At the end: whatever is still held back (a dangling partial character too)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full = self._decode(self._ids[self._prefix_offset:])
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(prefix):]


class StreamDetokenizer:
    """tokenizers' DecodeStream over the tokenizer's backend, prefilled with the prompt's
    last tokens. The stream holds a split character back (step gives None); `flush` gives
    what it still holds, decoded in context (U+FFFD for a dangling partial character)."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int],
                 skip_special_tokens: bool = True):
        from tokenizers.decoders import DecodeStream
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.backend = tokenizer.backend_tokenizer
        self._recent = _context(tokenizer, prompt_token_ids, skip_special_tokens)
        self._held: list[int] = []  # given to the stream, not emitted yet
        self.stream = DecodeStream(ids=list(self._recent),
                                   skip_special_tokens=skip_special_tokens)

    def add_token(self, token_id: int) -> str:
        text = self.stream.step(self.backend, token_id)
        if text is None:
            self._held.append(token_id)
            return ""
        self._recent = (self._recent + self._held + [token_id])[-_CONTEXT_TOKENS:]
        self._held = []
        return text

    def flush(self) -> str:
        if not self._held:
            return ""
        decode = self.tokenizer.decode
        before = decode(self._recent, skip_special_tokens=self.skip_special_tokens)
        full = decode(self._recent + self._held, skip_special_tokens=self.skip_special_tokens)
        self._held = []
        return full[len(before):]


def make_detokenizer(tokenizer: Any, prompt_token_ids: list[int],
                     skip_special_tokens: bool = True):
    if streams_exactly(tokenizer):
        return StreamDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens)
    return IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens)


_STREAMS: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()
_PROBE = "Hello , world . It 's a test ! Isn 't it ?"


def streams_exactly(tokenizer: Any) -> bool:
    """Whether the tokenizer is fast and decodes exactly as its backend (so a DecodeStream
    gives its text): no clean-up of spaces on top. Found by decoding a probe once."""
    try:
        return _STREAMS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    ok = False
    if getattr(tokenizer, "is_fast", False) and backend is not None:
        try:
            import tokenizers.decoders
            if not hasattr(tokenizers.decoders, "DecodeStream"):  # tokenizers < 0.21
                raise ImportError("no DecodeStream")
            ids = tokenizer.encode(_PROBE, add_special_tokens=False)
            ok = (tokenizer.decode(ids, skip_special_tokens=True)
                  == backend.decode(ids, skip_special_tokens=True))
        except (ImportError, TypeError, ValueError):
            ok = False
    try:
        _STREAMS[tokenizer] = ok
    except TypeError:
        pass
    return ok


def find_stop(text: str, start: int, stops: list[str]) -> Optional[tuple[int, str]]:
    """Earliest (index, stop) with a stop string in `text` that ends past `start`."""
    best: Optional[tuple[int, str]] = None
    for stop in stops:
        i = text.find(stop, max(0, start - len(stop) + 1))
        if i != -1 and (best is None or i < best[0]):
            best = (i, stop)
    return best
