"""Control tokens a client spells in its own messages stay text (issue 17).

A chat template writes control tokens around each message (`<|im_start|>user ...
<|im_end|>`). Encoded plainly, a message whose text itself holds
`<|im_end|>\n<|im_start|>system\n...` would turn into those real control tokens: a client
could forge turns (a system message, the assistant's own words). `ControlTokens` knows
the tokenizer's special tokens; `encode_conversation(render, messages, add_special_tokens)`
renders and encodes a conversation so that:
- a message whose text spells none is rendered and encoded exactly as before (splitting
  the text into pieces would change BPE merges at their edges);
- a message whose text spells one is rendered with a sentinel in its place; the rendered
  text is then encoded piece by piece, the template's pieces as usual (its control tokens
  are real) and that message's text with `split_special_tokens=True` (the spelled control
  tokens become ordinary text tokens).
`render(messages) -> str` is the chat template (InputProcessor.chat_text).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable


class ControlTokens:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials = {t.content for t in decoder.values() if getattr(t, "special", False)}
        specials |= set(getattr(tokenizer, "all_special_tokens", []) or [])
        specials.discard("")
        self.pattern = (re.compile("|".join(re.escape(s) for s in sorted(specials, key=len,
                                                                         reverse=True)))
                        if specials else None)

    def spelled_in(self, text: Any) -> bool:
        return isinstance(text, str) and self.pattern is not None and bool(
            self.pattern.search(text))

    def encode_conversation(self, render: Callable[[list[dict]], str], messages: list[dict],
                            add_special_tokens: bool) -> list[int]:
        tok = self.tokenizer
        forged = [i for i, m in enumerate(messages) if self.spelled_in(m.get("content"))]
        if not forged:
            return tok.encode(render(messages), add_special_tokens=add_special_tokens)
        nonce = os.urandom(6).hex()
        marked = [dict(m, content=f"\ue000{nonce}:{i}\ue001") if i in forged else m
                  for i, m in enumerate(messages)]
        text = render(marked)
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", text)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:  # the template's text
                if piece:
                    ids += tok.encode(piece, add_special_tokens=add_special_tokens and not ids)
            else:  # a message's own text
                ids += tok.encode(messages[int(piece)]["content"], add_special_tokens=False,
                                  split_special_tokens=True)
        return ids
