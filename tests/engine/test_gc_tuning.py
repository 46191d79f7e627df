"""Start-up objects frozen out of Python's collector, and given back (tessera/gc_tuning.py)."""
from __future__ import annotations

import gc
import weakref

import pytest

from tessera import LLM, SamplingParams
from tessera.gc_tuning import FULL_EVERY, PauseMeter, freeze_after_startup, frozen, unfreeze


class _Node:
    pass


def _cycle() -> tuple:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # only a full collection frees these
    return weakref.ref(a), (a, b)


def test_frozen_objects_leave_collections_until_unfrozen():
    ref, objs = _cycle()
    try:
        assert freeze_after_startup() > 0
        assert not any(o is objs[0] for o in gc.get_objects())  # out of every collection
        del objs
        meter = PauseMeter().start()
        gc.collect()
        pauses = meter.stop()
        assert ref() is not None  # frozen: the collection did not walk the dead cycle
        assert pauses[2]["count"] == 1  # the full collection was seen
    finally:
        unfreeze()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None  # given back, the cycle is freed


def test_freezes_nest_and_the_last_release_gives_back():
    python_thresholds = gc.get_threshold()
    freeze_after_startup()
    freeze_after_startup()
    try:
        assert gc.get_threshold()[2] >= FULL_EVERY  # full collections rarer while frozen
        unfreeze()
        assert gc.get_freeze_count() > 0  # one holder left
    finally:
        unfreeze()
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == python_thresholds


def test_frozen_block_releases_however_it_ends():
    with pytest.raises(RuntimeError):
        with frozen():
            assert gc.get_freeze_count() > 0
            raise RuntimeError("a benchmark failed")
    assert gc.get_freeze_count() == 0


def test_llm_freezes_only_when_asked_and_release_gives_it_back(tiny_llama):
    folder, _ = tiny_llama
    plain = LLM(folder, skip_tokenizer_init=True, num_blocks=32)
    assert gc.get_freeze_count() == 0  # a user's process is left alone by default
    del plain
    before = len(gc.get_objects())
    llm = LLM(folder, skip_tokenizer_init=True, num_blocks=32, freeze_gc=True)
    try:
        assert gc.get_freeze_count() >= before  # the imports, the model, the engine
        engine = weakref.ref(llm.engine)
        out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))
        assert len(out[0].outputs[0].token_ids) == 4
    finally:
        llm.release_gc()
    assert gc.get_freeze_count() == 0
    llm.engine.cycle = llm.engine  # even an engine in a reference cycle goes, once dropped
    del llm
    gc.collect()
    assert engine() is None
