"""Incremental detokenization and stop strings.

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

from typing import Any, Optional

_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
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


def find_stop(text: str, start: int, stops: list[str]) -> Optional[tuple[int, str]]:
    """Earliest (index, stop) with a stop string in `text` that ends past `start`."""
    best: Optional[tuple[int, str]] = None
    for stop in stops:
        i = text.find(stop, max(0, start - len(stop) + 1))
        if i != -1 and (best is None or i < best[0]):
            best = (i, stop)
    return best
