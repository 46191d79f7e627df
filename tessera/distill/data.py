"""Training text for distillation: files read, tokenized and packed into sequences.

Objects:
- `read_documents(paths)`: the documents of text files and JSONL files (folders are walked,
  globs expanded). A JSONL line holds `text`, or `prompt` + `completion`, or chat
  `messages` (rendered by the tokenizer's chat template).
- `pack(tokenizer, documents, seq_len, max_tokens)`: the documents tokenized (no special
  tokens), joined with EOS between them and cut into whole sequences [N, seq_len].
- Sequences: token ids [N, L] and a loss mask [N, L] (which positions' next tokens count:
  all but the last for packed text; only the generated part for on-policy data).
- `split_held_out(seqs, fraction or count, seed)`: a fixed held-out part for evaluation.
- `batch_order(n, step, batch, seed)`: which sequences optimizer step `step` uses, a pure
  function of its arguments (a seeded permutation per epoch), so a resumed run reads the
  same batches as an uninterrupted one.
- `fingerprint(seqs)`: a hash of the tokens, to tie a teacher cache and a checkpoint to
  the data they were made from.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import Iterator, Sequence

import torch

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".c", ".h", ".js", ".html")


@dataclasses.dataclass
class Sequences:
    tokens: torch.Tensor  # [N, L] int64
    loss_mask: torch.Tensor  # [N, L] bool: position t's prediction of token t + 1 counts

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def take(self, index: torch.Tensor | Sequence[int]) -> "Sequences":
        index = torch.as_tensor(index, dtype=torch.long)
        return Sequences(self.tokens[index], self.loss_mask[index])

    @property
    def scored(self) -> int:
        return int(self.loss_mask.sum())


def _expand(paths: Sequence[str]) -> list[str]:
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)
                          if n.endswith(TEXT_SUFFIXES + (".jsonl",))]
        elif os.path.isfile(path):
            files.append(path)
        else:
            matched = sorted(glob.glob(path, recursive=True))
            if not matched:
                raise FileNotFoundError(f"--data {path}: no such file, folder or glob match")
            files += [m for m in matched if os.path.isfile(m)]
    return files


def _jsonl_documents(path: str, tokenizer) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: each line must be a JSON object")
            if isinstance(row.get("text"), str):
                yield row["text"]
            elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
                yield row["prompt"] + row["completion"]
            elif isinstance(row.get("messages"), list):
                if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                    raise ValueError(f"{path}:{number}: `messages` need a chat template, and "
                                     "the teacher's tokenizer has none")
                yield tokenizer.apply_chat_template(row["messages"], tokenize=False)
            else:
                raise ValueError(f"{path}:{number}: a line needs `text`, `prompt` + "
                                 "`completion` (strings), or `messages`")


def read_documents(paths: Sequence[str], tokenizer=None) -> Iterator[str]:
    """Each text file whole, each JSONL line (see the module doc), in path order."""
    files = _expand(paths)
    if not files:
        raise ValueError(f"--data {' '.join(paths)}: no text or JSONL files found")
    for path in files:
        if path.endswith(".jsonl"):
            yield from _jsonl_documents(path, tokenizer)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                yield f.read()
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None


def pack(tokenizer, documents: Iterator[str], seq_len: int,
         max_tokens: int | None = None) -> Sequences:
    """Documents tokenized and joined with EOS between them, cut into whole sequences of
    seq_len (the tail that does not fill one is dropped); at most max_tokens tokens read."""
    if seq_len < 2:
        raise ValueError("--seq-len must be at least 2")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in documents:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        if text.strip():
            ids += tokenizer.encode(text, add_special_tokens=False)
            if eos is not None:
                ids.append(eos)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    count = len(ids) // seq_len
    if count == 0:
        raise ValueError(f"the data holds {len(ids)} tokens: not one sequence of --seq-len "
                         f"{seq_len}; give more text or a shorter --seq-len")
    tokens = torch.tensor(ids[:count * seq_len], dtype=torch.long).view(count, seq_len)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, -1] = False  # the last position has no next token
    return Sequences(tokens, mask)


def split_held_out(seqs: Sequences, count: int, seed: int) -> tuple[Sequences, Sequences]:
    """(train, held out): `count` sequences chosen by a seeded permutation are held out."""
    if count < 0 or count >= len(seqs):
        raise ValueError(f"cannot hold out {count} of {len(seqs)} sequences for evaluation; "
                         "give more data or fewer --eval-sequences")
    order = torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed))
    held, train = order[:count].sort().values, order[count:].sort().values
    return seqs.take(train), seqs.take(held)


def batch_order(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Sequence indices of optimizer step `step` (0-based): consecutive slices of a seeded
    permutation per epoch, wrapping into the next epoch's permutation."""
    out: list[int] = []
    start = step * batch
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out += perm[offset:offset + batch - len(out)].tolist()
    return out


def fingerprint(seqs: Sequences) -> str:
    digest = hashlib.sha256(seqs.tokens.numpy().tobytes())
    digest.update(seqs.loss_mask.numpy().tobytes())
    return digest.hexdigest()[:16]
