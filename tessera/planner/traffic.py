"""Traffic for the planner: request arrivals of each model, generated or read from a trace.

Objects: Arrival (time in seconds, model, prompt and output lengths), Lengths (fixed or a
uniform range), `arrivals(model, rate, duration, cv, lengths, seed)` (Poisson when cv = 1,
else Gamma inter-arrival times of that coefficient of variation: AlpaServe's burstiness,
shape 1/cv^2), `merge(*streams)` (one time-ordered list) and `read_trace(path)` (JSON lines
or CSV with time, model, prompt_len, output_len). No torch.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import random
from typing import Iterable, Optional


@dataclasses.dataclass(frozen=True)
class Arrival:
    time: float
    model: str
    prompt_len: int
    output_len: int


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Prompt and output lengths: fixed, or drawn uniformly from [low, high]."""
    prompt: tuple[int, int] = (512, 512)
    output: tuple[int, int] = (128, 128)

    @classmethod
    def of(cls, prompt, output) -> "Lengths":
        pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (int(v), int(v))  # noqa
        return cls(pair(prompt), pair(output))

    def draw(self, rng: random.Random) -> tuple[int, int]:
        return rng.randint(*self.prompt), rng.randint(*self.output)


def arrivals(model: str, rate: float, duration: float, cv: float = 1.0,
             lengths: Lengths = Lengths(), seed: int = 0) -> list[Arrival]:
    """Requests of one model over [0, duration) at `rate` per second."""
    if rate <= 0:
        return []
    if cv <= 0:
        raise ValueError(f"the coefficient of variation must be > 0, got {cv}")
    rng = random.Random(f"{model}/{seed}")
    shape = 1.0 / (cv * cv)
    out, t = [], 0.0
    while True:
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        if t >= duration:
            return out
        out.append(Arrival(t, model, *lengths.draw(rng)))


def merge(*streams: Iterable[Arrival]) -> list[Arrival]:
    return sorted((a for s in streams for a in s), key=lambda a: a.time)


def read_trace(path: str, models: Optional[set[str]] = None) -> list[Arrival]:
    """A trace file: JSON lines ({"time", "model", "prompt_len", "output_len"}) or a CSV
    with those columns; times in seconds from the start."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("{"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(text.splitlines()))
    out = []
    for i, r in enumerate(rows):
        try:
            a = Arrival(float(r["time"]), str(r["model"]), int(r["prompt_len"]),
                        int(r["output_len"]))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: row {i + 1} needs time, model, prompt_len, output_len "
                             f"({e})") from None
        if models is not None and a.model not in models:
            raise ValueError(f"{path}: row {i + 1} names model {a.model!r}, which the "
                             f"deployment does not list")
        out.append(a)
    return sorted(out, key=lambda a: a.time)
