"""Router: which data-parallel replica (engine process) takes a request.

Objects: Router. `pick(token_ids)` scores each replica by its load: requests it holds
(counted here, as they are sent and finished) over `max_num_seqs`, plus its KV-cache usage
(from its latest stats); the least loaded wins, unless a replica already served a prompt
with the same beginning (prefix affinity: prefixes of 1, 2, 4, ... KV blocks, longest
first, remembered in a bounded LRU) and is loaded at most AFFINITY_SLACK more, so shared
system prompts keep hitting one replica's prefix cache. `sent(i, n)` / `finished(i, n)`
keep the counts; `routed` and `affinity_hits` are reported on /metrics.
"""
from __future__ import annotations

from collections import OrderedDict

AFFINITY_SLACK = 0.25  # load a replica may carry above the least loaded and keep affinity
MAX_PREFIXES = 65536
MAX_PREFIX_BLOCKS = 256


class Router:
    def __init__(self, replicas: int, block_size: int, max_num_seqs: int):
        self.block_size, self.capacity = block_size, max(1, max_num_seqs)
        self.in_flight = [0] * replicas
        self.kv_usage = [0.0] * replicas
        self.routed = [0] * replicas
        self.affinity_hits = 0
        self._prefixes: OrderedDict[int, int] = OrderedDict()  # prefix hash -> replica

    def load(self, i: int) -> float:
        return self.in_flight[i] / self.capacity + self.kv_usage[i]

    def pick(self, token_ids: list[int]) -> int:
        loads = [self.load(i) for i in range(len(self.in_flight))]
        least = min(range(len(loads)), key=lambda i: (loads[i], self.routed[i]))
        keys = self._prefix_keys(token_ids)
        choice = least
        for key in keys:  # longest first
            owner = self._prefixes.get(key)
            if owner is not None:
                if loads[owner] <= loads[least] + AFFINITY_SLACK:
                    choice = owner
                    self.affinity_hits += owner != least
                break
        for key in keys:
            self._prefixes[key] = choice
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > MAX_PREFIXES:
            self._prefixes.popitem(last=False)
        return choice

    def _prefix_keys(self, token_ids: list[int]) -> list[int]:
        full = min(len(token_ids) // self.block_size, MAX_PREFIX_BLOCKS)
        blocks, k = [], 1
        while k <= full:
            blocks.append(k)
            k *= 2
        return [hash(tuple(token_ids[:b * self.block_size])) for b in reversed(blocks)]

    def sent(self, i: int, n: int = 1) -> None:
        self.in_flight[i] += n
        self.routed[i] += n

    def finished(self, i: int, n: int = 1) -> None:
        self.in_flight[i] = max(0, self.in_flight[i] - n)
