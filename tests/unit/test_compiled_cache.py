"""The compiled-grammar cache (structured/compiled_cache.py): kept values are given back
without making them again, the least recently used is dropped past the size, a failed
make keeps nothing, threads share one cache (missing a key at once, churning past its
size), and a size under one is refused."""
from __future__ import annotations

import threading

import pytest

from tessera.structured.compiled_cache import CompiledCache


def test_keeps_the_most_recently_used():
    made = []
    cache = CompiledCache(2)

    def make(key):
        return lambda: made.append(key) or key.upper()

    assert cache.get("a", make("a")) == "A"
    assert cache.get("b", make("b")) == "B"
    assert cache.get("a", make("a")) == "A"  # kept; now the most recent
    assert cache.get("c", make("c")) == "C"  # drops b, the least recent
    assert len(cache) == 2
    assert cache.get("a", make("a")) == "A"
    assert cache.get("b", make("b")) == "B"  # made again
    assert made == ["a", "b", "c", "b"]


def test_a_failed_make_keeps_nothing():
    cache = CompiledCache(4)

    def fail():
        raise ValueError("bad grammar")

    with pytest.raises(ValueError, match="bad grammar"):
        cache.get("x", fail)
    assert len(cache) == 0
    assert cache.get("x", lambda: None) is None  # None is a value like any other
    assert cache.get("x", fail) is None


def test_threads_share_it():
    """Threads missing one key at once all get a value, and every value made is one of
    theirs; threads over more keys than it holds leave it at its size."""
    cache = CompiledCache(4)
    start, made, got, wrong = threading.Barrier(16), [], [], []

    def miss_together(i):
        start.wait()
        got.append(cache.get("k", lambda: made.append(i) or i))

    def churn(i):
        for j in range(50):
            key = (i + j) % 12
            if cache.get(key, lambda: key * 10) != key * 10:
                wrong.append(key)

    for target in (miss_together, churn):
        threads = [threading.Thread(target=target, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(got) == 16 and set(got) <= set(made) and len(made) >= 1
    assert wrong == [] and len(cache) == 4


def test_a_size_under_one_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        CompiledCache(0)
