"""CostMeter: each request's share of what the instance costs (`--price-per-hour`).

The engine's devices cost `price_per_hour` each (TP x PP of them; a data-parallel replica
counts its own). Wall time is split with nothing lost: the time from the end of the last
step (or of the last idle spell) to the end of this one is busy time, and its cost is
shared among the step's requests in proportion to the tokens each computed in it (prefill
chunks and decodes alike); time with no request in the engine is idle, counted apart.
So the requests' costs plus the idle cost equal the price of the wall time, and a
request's `cost` is what its work kept the instance busy for. The core calls
`idle_until(now)` before a step that follows an idle spell, `step_done(tokens, requests,
now)` after each step, and `went_idle()` when no request is left.
"""
from __future__ import annotations

import time
from typing import Optional


class CostMeter:
    def __init__(self, price_per_hour: float, devices: int):
        self.rate = price_per_hour * devices / 3600.0  # dollars per second of wall time
        self.requests_usd = 0.0  # attributed to requests (busy time)
        self.idle_usd = 0.0
        self._since = time.monotonic()  # the end of the time accounted for
        self._idle = True

    def idle_until(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        if self._idle:
            self.idle_usd += (now - self._since) * self.rate
            self._since, self._idle = now, False

    def step_done(self, tokens: dict[str, int], requests: dict, now: Optional[float] = None
                  ) -> None:
        """tokens: request id -> tokens it computed in the step; requests: id -> Request
        (its `cost` grows by its share)."""
        now = time.monotonic() if now is None else now
        self.idle_until(now)
        spent = (now - self._since) * self.rate
        self._since = now
        total = sum(tokens.values())
        if not total:
            self.idle_usd += spent
            return
        self.requests_usd += spent
        for rid, n in tokens.items():
            req = requests.get(rid)
            if req is not None:
                req.cost += spent * n / total

    def went_idle(self) -> None:
        """No request is left: the time from the last step's end on is idle."""
        self._idle = True
