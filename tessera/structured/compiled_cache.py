"""CompiledCache: compiled grammars kept by key, the least recently used dropped past a
size; thread-safe (the API process checks grammars in a pool, the worker compiles on
its own thread). `get(key, make)` gives the kept value or makes one outside the lock
(two threads missing at once may both make it; the last one is kept); an exception from
`make` propagates and nothing is kept. Used by structured/grammar.py (llguidance) and
structured/xgrammar_backend.py.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


class CompiledCache:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"a compiled-grammar cache holds at least one entry, not {size}")
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
