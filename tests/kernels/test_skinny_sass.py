"""The skinny GEMM compiled for sm_90 without a GPU (benchmarks/kernels/skinny_sass.py,
run as a script: Triton compiles there, not interprets; its wheel's ptxas and nvdisasm):
with QUANT_PRELOAD an int8 / fp8 W's first tile is loaded before the PDL wait (ACQBULK in
the SASS), as a dense W's always is; without it no W load precedes the wait; and the K
loop is the MMA's. With fp8 activations (kernels/skinny_a8.py) an fp8 W's loop is the
fp8 warpgroup MMA's (QGMMA), with no widening: fewer than 1.5 instructions a weight
against the widening loop's more than 3. With x made fp16 in the kernel (FP16_X) an fp8
W widens natively (F2FP) and an int8 one by the magic-number PTX, each in fewer
instructions than to bf16. What the knobs are for, checked where no GPU runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "kernels",
                    "skinny_sass.py")


def test_only_preloaded_and_dense_tiles_precede_the_wait():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, TOOL, "--kinds", "dense,int8,fp8,a8,int8x16,fp8x16",
                          "--preload",
                          "0,1", "--json"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    found = {(r["kind"], r["preload"]): r for r in map(json.loads, out.stdout.splitlines())}
    # a 32 x 256 tile over 64 threads in 16-byte loads: 8 a thread (bf16: 16)
    assert found[("dense", False)]["loads_before_wait"] == 16
    for kind in ("int8", "fp8"):
        assert found[(kind, True)]["loads_before_wait"] == 8
        assert found[(kind, False)]["loads_before_wait"] == 0
    a8 = found.pop(("a8", False))
    fp8x16, int8x16 = found.pop(("fp8x16", False)), found.pop(("int8x16", False))
    assert fp8x16["mix"].get("F2FP", 0) > 0  # e4m3 -> fp16 pairs, one instruction each
    assert fp8x16["per_weight"] < 2.5 < 4 < found[("fp8", False)]["per_weight"]
    assert int8x16["per_weight"] < 3.1 < 3.5 < found[("int8", False)]["per_weight"]
    for r in found.values():
        assert r["mix"].get("HMMA", 0) > 0 and r["per_weight"] > 0
    assert a8["mix"].get("QGMMA", 0) > 0 and "HMMA" not in a8["mix"]
    assert a8["per_weight"] < 1.5 < 3 < found[("fp8", False)]["per_weight"]
