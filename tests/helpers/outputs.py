"""`assert_same_greedy(reference, outputs)`: the same greedy tokens and, at each, logprobs
within `tol` (a parallel layout or executor against one process)."""
from __future__ import annotations


def assert_same_greedy(reference, outputs, tol: float = 1e-4) -> None:
    assert len(reference) == len(outputs)
    for ref, out in zip(reference, outputs):
        assert out.outputs[0].token_ids == ref.outputs[0].token_ids
        for a, b, t in zip(out.outputs[0].logprobs, ref.outputs[0].logprobs,
                           ref.outputs[0].token_ids):
            assert abs(a[t].logprob - b[t].logprob) < tol
