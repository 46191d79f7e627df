"""Perplexity through the engine's prompt logprobs, and the standard-library text it is
measured on by default.

Objects: CODE_FILES / DOC_SOURCE (the fixed text: files of the running interpreter's
standard library and the language reference's topics as pydoc ships them),
`stdlib_windows(tokenizer, num_windows, window)` (that text as token windows),
`token_windows(ids, window, num_windows)` (any token list cut into whole windows),
`read_windows(tokenizer, path, tokens, window)` (a text file's first tokens as windows:
quant-sensitivity's data, calibration's text),
Perplexity (ppl, summed negative log-likelihood, scored tokens) and
`perplexity(llm, windows)`.

Scoring: each window is one prompt of `window` tokens run with
`SamplingParams(max_tokens=1, prompt_logprobs=0)`; every position but the first (which
nothing predicts: `prompt_logprobs[0]` is None) is scored, so a window of W tokens scores
W - 1. ppl = exp(sum of -log p(token | the window's tokens before it) / scored tokens),
pooled over all windows. Prompt-logprob requests never take prefix-cache hits
(engine/kv_cache/manager.py), so a model changed in place between two calls is measured
afresh.

The text (the same for every model and method; it depends only on the Python version,
which `corpus_description()` names): windows alternate between two streams, code first:
- code: CODE_FILES of the standard library directory (sysconfig's "stdlib"), in that order,
  each tokenized on its own with "\n\n" after it, the token lists concatenated;
- docs: `pydoc_data.topics.topics` (the language reference, as `help()` shows it), in
  sorted key order, each topic tokenized on its own the same way.
Window k of a stream is that stream's tokens [k * W, (k + 1) * W). No special tokens are
added (no BOS), so every model sees the same characters.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import sysconfig
from typing import Iterator, Sequence

CODE_FILES = ("textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "shlex.py",
              "graphlib.py", "colorsys.py", "functools.py", "difflib.py", "argparse.py")
DOC_SOURCE = "pydoc_data.topics (sorted keys)"


def corpus_description() -> str:
    """Where the default text comes from, for a report."""
    return (f"Python {sys.version.split()[0]} standard library: code windows from "
            f"{', '.join(CODE_FILES)} (in {sysconfig.get_paths()['stdlib']}), alternating "
            f"with docs windows from {DOC_SOURCE}")


def _code_texts() -> Iterator[str]:
    root = sysconfig.get_paths()["stdlib"]
    for name in CODE_FILES:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            yield f.read() + "\n\n"


def _doc_texts() -> Iterator[str]:
    from pydoc_data.topics import topics
    for key in sorted(topics):
        yield topics[key] + "\n\n"


def _stream(tokenizer, texts: Iterator[str], need: int) -> list[int]:
    ids: list[int] = []
    for text in texts:
        if len(ids) >= need:
            break
        ids += tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < need:
        raise ValueError(f"the standard-library text has only {len(ids)} tokens of this "
                         f"stream; {need} were asked for")
    return ids[:need]


def stdlib_windows(tokenizer, num_windows: int, window: int) -> list[list[int]]:
    """num_windows windows of `window` tokens, alternating code and docs (code first)."""
    if num_windows < 1 or window < 2:
        raise ValueError("at least one window of at least 2 tokens is needed")
    num_code = (num_windows + 1) // 2
    code = _stream(tokenizer, _code_texts(), num_code * window)
    docs = _stream(tokenizer, _doc_texts(), (num_windows - num_code) * window)
    out = []
    for i in range(num_windows):
        stream, k = (code, i // 2) if i % 2 == 0 else (docs, i // 2)
        out.append(stream[k * window:(k + 1) * window])
    return out


def token_windows(ids: Sequence[int], window: int, num_windows: int) -> list[list[int]]:
    """The first num_windows whole windows of ids, or a clear error if ids is shorter."""
    need = window * num_windows
    if len(ids) < need:
        raise ValueError(f"the data has {len(ids)} tokens; {num_windows} window(s) of {window} "
                         f"need {need}: give a longer file or ask for fewer tokens")
    return [list(ids[i * window:(i + 1) * window]) for i in range(num_windows)]


@dataclasses.dataclass
class Perplexity:
    ppl: float
    nll: float  # summed negative log-likelihood (nats)
    tokens: int  # scored tokens

    def increase_pct(self, baseline: "Perplexity") -> float:
        return (self.ppl / baseline.ppl - 1.0) * 100.0


def perplexity(llm, windows: Sequence[Sequence[int]]) -> Perplexity:
    """Pooled perplexity of llm (tessera.LLM) over the windows (see the module doc)."""
    from tessera.sampling_params import SamplingParams
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outs = llm.generate([{"prompt_token_ids": list(w)} for w in windows], params)
    nll, count = 0.0, 0
    for window, out in zip(windows, outs):
        entries = out.prompt_logprobs
        if entries is None or len(entries) != len(window):
            raise RuntimeError(f"expected {len(window)} prompt logprobs, got "
                               f"{None if entries is None else len(entries)}")
        for token, entry in zip(window[1:], entries[1:]):
            nll -= entry[token].logprob
            count += 1
    return Perplexity(math.exp(nll / count), nll, count)


def read_windows(tokenizer, path: str, tokens: int, window: int) -> list[list[int]]:
    """--tokens tokens of the data file, in windows of at most `window` tokens."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r}: no such file.")
    if tokenizer is None:
        raise ValueError("the model has no tokenizer to read the data file with.")
    with open(path, encoding="utf-8", errors="replace") as f:
        ids = tokenizer.encode(f.read(), add_special_tokens=False)
    window = min(window, tokens)
    return token_windows(ids, window, tokens // window)
