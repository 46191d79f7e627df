"""Step latency models: how long one engine step takes, from its shape.

A step's shape: the tokens it computes (prefill chunks + decode tokens), the sequences in
it, and the context tokens its attention reads. Objects:
- ProfileModel: t = c0 + c_tok * tokens + c_seq * seqs + c_ctx * context, least squares
  of the relative error over the steps a `tessera bench profile` run timed on the target
  hardware (`load_profile` reads its JSON), times a factor per decode batch size that the
  profile measured (interpolated between them); the planner's calibrated model;
- RooflineModel(arch, hardware, tp, pp, weights, kv_itemsize): a pipeline stage's time
  is max(bytes read / bandwidth, FLOPs / FLOP rate) (weights: planner/weights.py's
  ModelBytes, the bytes a step reads at the model's precision) plus a fixed per-step
  overhead and the TP all-reduces over the link; the model used when no profile is
  given (the plan says so);
- ScaledModel(base, measured_at, target): a profile taken at one parallel layout applied to
  another by the ratio of their rooflines.
Each offers `step_seconds(tokens, seqs, context)` (a step's latency, all stages) and
`interval_seconds(...)` (how soon the next step may start: one stage's time under pipeline
parallelism). No torch.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

from tessera.models.arch_config import ArchConfig
from tessera.planner.hardware import Hardware
from tessera.planner.weights import ModelBytes

STEP_OVERHEAD_S = 1.5e-3  # host-side cost of a step the roofline does not see (measured
# on the H200: a Llama-3-8B decode step of one sequence is 4.3 ms against 3.6 of bytes)
ALLREDUCE_LATENCY_S = 10e-6


@dataclasses.dataclass
class ProfileModel:
    c0: float
    c_tok: float
    c_seq: float
    c_ctx: float
    source: str = "profile"
    stages: int = 1  # the profiled layout's pipeline stages
    # pure decode steps (a token per sequence): (sequences, measured / linear fit), the
    # median over the profile's steps of that batch; a GEMM's speed is not linear in its
    # rows at small batches (a CPU's BLAS: 2 and 3 rows slower than 4; a GPU's graph
    # buckets), which the line cannot follow
    decode_factors: tuple = ()

    def step_seconds(self, tokens: int, seqs: int, context: int) -> float:
        t = self.c0 + self.c_tok * tokens + self.c_seq * seqs + self.c_ctx * context
        if self.decode_factors and tokens == seqs:
            t *= _interpolate(self.decode_factors, seqs)
        return t

    def interval_seconds(self, tokens: int, seqs: int, context: int) -> float:
        return self.step_seconds(tokens, seqs, context) / self.stages

    @classmethod
    def fit(cls, samples: list[tuple[int, int, int, float]], source: str = "profile",
            stages: int = 1) -> "ProfileModel":
        """Least squares of the relative error over (tokens, seqs, context, seconds),
        coefficients kept >= 0 (a feature whose best weight is negative is dropped and the
        rest refitted); then, twice, the steps off the fit by more than three times the
        median error (and 25%) are set aside and the rest refitted: a call that only
        queued a step, or the first step's compilation, says nothing of a step's cost."""
        if len(samples) < 4:
            raise ValueError(f"a latency profile needs >= 4 timed steps, got {len(samples)}")
        data = np.asarray(samples, dtype=np.float64)
        data = data[data[:, 3] > 0]
        model = cls._fit(data, source, stages)
        for _ in range(2):
            pred = model.c0 + data[:, :3] @ np.array([model.c_tok, model.c_seq, model.c_ctx])
            err = np.abs(pred - data[:, 3]) / data[:, 3]
            keep = err <= max(3 * float(np.median(err)), 0.25)
            if keep.all() or keep.sum() < 4:
                break
            data = data[keep]
            model = cls._fit(data, source, stages)
        return dataclasses.replace(model, decode_factors=_decode_factors(model, samples))

    @classmethod
    def _fit(cls, data, source: str, stages: int) -> "ProfileModel":
        # relative error: each row divided by its time, so short decode steps (the many
        # that make TPOT) weigh as much as long prefill steps
        x = np.column_stack([np.ones(len(data)), data[:, :3]]) / data[:, 3:4]
        y = np.ones(len(data))
        keep = [0, 1, 2, 3]
        while True:
            coef, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
            negative = [k for k, c in zip(keep, coef) if c < 0 and k != 0]
            if not negative:
                break
            keep.remove(negative[0])
        full = [0.0] * 4
        for k, c in zip(keep, coef):
            full[k] = max(float(c), 0.0)
        return cls(*full, source=source, stages=stages)


def _decode_factors(model: ProfileModel, samples) -> tuple:
    """(seqs, median of measured / fitted) for each batch of >= 3 pure decode steps."""
    ratios: dict[int, list[float]] = {}
    for tokens, seqs, context, seconds in samples:
        if tokens == seqs and seconds > 0:
            ratios.setdefault(int(seqs), []).append(
                seconds / model.step_seconds(tokens, seqs, context))
    return tuple((n, float(np.median(r))) for n, r in sorted(ratios.items()) if len(r) >= 3)


def _interpolate(points: tuple, x: float) -> float:
    """Piecewise linear through (x, y) points, flat beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def load_profile(path: str, colocated: bool = False) -> tuple[Optional[ProfileModel], dict]:
    """(the fitted model, the profile's metadata) of a `tessera bench profile` JSON; with
    colocated, the fit of its samples taken with another model stepping in between
    (`--colocated-with`), None when it has none."""
    try:
        with open(path) as f:
            data = json.load(f)
        part = data.get("colocated") if colocated else data
        samples = [tuple(s) for s in part["samples"]] if part is not None else []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a `tessera bench profile` file: {e}") from None
    meta = {k: v for k, v in data.items() if k not in ("samples", "colocated")}
    if not samples:
        if not colocated:
            raise ValueError(f"{path} is not a `tessera bench profile` file: no samples")
        return None, meta
    pp = int(data.get("pipeline_parallel_size", 1))
    where = f"profile {path}" + (" (colocated)" if colocated else "")
    return ProfileModel.fit(samples, source=where, stages=pp), meta


@dataclasses.dataclass
class RooflineModel:
    arch: ArchConfig
    hardware: Hardware
    tp: int = 1
    pp: int = 1
    weights: Optional[ModelBytes] = None  # None: 16-bit
    kv_itemsize: int = 2
    source: str = "roofline"

    def __post_init__(self):
        if self.weights is None:
            self.weights = ModelBytes(self.arch)

    @property
    def weight_bytes(self) -> float:
        return self.weights.stored

    def _stage(self, tokens: int, seqs: int, context: int) -> float:
        a, hw, shards = self.arch, self.hardware, self.tp * self.pp
        read = (self.weights.read(active_only=True)
                + context * a.kv_bytes_per_token * self.kv_itemsize) / shards
        flops = 2.0 * a.num_parameters(active_only=True) * tokens / shards
        comm = 0.0
        if self.tp > 1:  # two all-reduces of [tokens, hidden] per layer of this stage
            layers = a.num_layers / self.pp
            nbytes = tokens * a.hidden_size * 2 * 2 * (self.tp - 1) / self.tp
            comm = layers * 2 * (ALLREDUCE_LATENCY_S + nbytes / hw.link_bandwidth)
        return max(read / hw.bandwidth, flops / hw.flops) + comm

    def step_seconds(self, tokens: int, seqs: int, context: int) -> float:
        return STEP_OVERHEAD_S + self.pp * self._stage(tokens, seqs, context)

    def interval_seconds(self, tokens: int, seqs: int, context: int) -> float:
        return STEP_OVERHEAD_S + self._stage(tokens, seqs, context)


@dataclasses.dataclass
class ScaledModel:
    """A measured profile moved to another layout: the measured time times the ratio of
    the target's roofline to the measured layout's."""
    base: ProfileModel
    measured_at: RooflineModel
    target: RooflineModel

    @property
    def source(self) -> str:
        return (f"{self.base.source}, scaled from TP={self.measured_at.tp} "
                f"PP={self.measured_at.pp} by the roofline")

    def _ratio(self, tokens: int, seqs: int, context: int, interval: bool) -> float:
        f = "interval_seconds" if interval else "step_seconds"
        return (getattr(self.target, f)(tokens, seqs, context)
                / getattr(self.measured_at, f)(tokens, seqs, context))

    def step_seconds(self, tokens: int, seqs: int, context: int) -> float:
        return self.base.step_seconds(tokens, seqs, context) * self._ratio(
            tokens, seqs, context, False)

    def interval_seconds(self, tokens: int, seqs: int, context: int) -> float:
        return self.base.interval_seconds(tokens, seqs, context) * self._ratio(
            tokens, seqs, context, True)
