"""The precision the planner chooses for a model whose deployment entry says `precision:
auto`: each assignment of the candidates is planned (placement.py's `search`) and the plans
compared.

Objects: MAX_EXHAUSTIVE, COST_TOLERANCE, Trial (an assignment, its best placement and the
rejected ones), `meets(deployment, placement)` and `choose(deployment, arrivals)` -> (the
deployment with the chosen precisions, the chosen Trial, every Trial planned). The
precisions' order (RANK), the default candidates and `by_accuracy`: planner/weights.py.
Flow: every combination of the auto models' candidates while there are at most
MAX_EXHAUSTIVE, else coordinate descent from the most precise (each model's candidates in
turn, the others fixed, until no change improves) -> `search` for each -> the best by
`_key`: plans reaching the deployment's target attainment first; among them, objective
cost (the default): the most precise of those within COST_TOLERANCE of the least busy
device-time per request of the whole deployment (what the cost formula's price x latency
x QPS prices; so a small model whose quantizing saves less stays 16-bit), then the
cheaper, then the fewer devices; objective accuracy: the most precise (the sum of the
models' RANKs), then the cheapest. No plan reaching it: the highest attainment, then the
cheapest, then the most precise; none fitting the devices: the fewest weight bytes.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional

from tessera.planner.deployment import Deployment
from tessera.planner.placement import Placement, busy_per_request, devices_used, search
from tessera.planner.traffic import Arrival
from tessera.planner.weights import RANK

MAX_EXHAUSTIVE = 9  # assignments all planned (two models of three candidates; a plan of
# three models on two H200s took 9 s on the CPU)
# busy device-time within 1% of the cheapest counts as as cheap: the simulator's own
# error is larger (end-to-end within 4-7% of real runs: benchmarks/RESULTS.md)
COST_TOLERANCE = 0.01


@dataclasses.dataclass
class Trial:
    precisions: dict[str, str]  # the auto models' names -> the precision tried
    best: Optional[Placement]
    others: list[Placement]

    def describe(self) -> str:
        return ", ".join(f"{n} {p}" for n, p in self.precisions.items()) or "as given"


def with_precisions(d: Deployment, precisions: dict[str, str]) -> Deployment:
    return dataclasses.replace(d, models=[
        dataclasses.replace(m, precision=precisions.get(m.name, m.precision))
        for m in d.models])


def choose(d: Deployment, arrivals: list[Arrival]) -> tuple[Deployment, Trial, list[Trial]]:
    auto = [m for m in d.models if m.candidates]
    names, space = [m.name for m in auto], [m.candidates for m in auto]
    trials: dict[tuple[str, ...], Trial] = {}

    def run(assignment: tuple[str, ...]) -> Trial:
        if assignment not in trials:
            precisions = dict(zip(names, assignment))
            best, others = search(with_precisions(d, precisions), arrivals)
            trials[assignment] = Trial(precisions, best, others)
        return trials[assignment]

    if math.prod(len(c) for c in space) <= MAX_EXHAUSTIVE:
        for assignment in itertools.product(*space):
            run(assignment)
    else:
        current = tuple(c[0] for c in space)
        changed = True
        while changed:
            changed = False
            for i, options in enumerate(space):
                for option in options:
                    trial = current[:i] + (option,) + current[i + 1:]
                    new, old = run(trial), run(current)
                    cheapest = _cheapest(d, trials.values())
                    if _key(d, new, cheapest) < _key(d, old, cheapest):
                        current, changed = trial, True
    cheapest = _cheapest(d, trials.values())
    chosen = min(trials.values(), key=lambda t: _key(d, t, cheapest))
    return with_precisions(d, chosen.precisions), chosen, list(trials.values())


def _weight_bytes(d: Deployment, t: Trial) -> float:
    return sum(m.weight_bytes for m in with_precisions(d, t.precisions).models)


def meets(d: Deployment, p: Optional[Placement]) -> bool:
    """Whether a plan reaches the target attainment."""
    return p is not None and p.attainment >= d.target_attainment - 1e-9


def _cheapest(d: Deployment, trials) -> float:
    """The least busy device-time per request of the trials' plans reaching the target."""
    return min((busy_per_request(t.best) for t in trials if meets(d, t.best)),
               default=math.inf)


def _key(d: Deployment, t: Trial, cheapest: float) -> tuple:
    """Smaller is better (the module's docstring says the order); cheapest: `_cheapest` of
    the trials compared (what is as cheap)."""
    rank = sum(RANK[p] for p in t.precisions.values())
    p = t.best
    if p is None:
        return (2, 0.0, 0, _weight_bytes(d, t), math.inf)
    cost = (busy_per_request(p), devices_used(p))
    if not meets(d, p):
        return (1, -p.attainment, *cost, rank)
    if d.objective == "accuracy":
        return (0, 0.0, rank, *cost)
    return (0, float(cost[0] > cheapest * (1 + COST_TOLERANCE)), rank, *cost)
