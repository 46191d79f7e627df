"""`tessera bench profile`: the step-time profile `tessera plan` reads, alone and with
another model taking turns (`--colocated-with`): every timed step is a sample of its
shape and time, the fits read back, and the other engine's requests all finish."""
from __future__ import annotations

import json

from tessera.cli import main
from tessera.planner.latency import load_profile


def test_profile_alone_and_colocated(tiny_llama, tmp_path, capsys):
    folder, out = tiny_llama[0], tmp_path / "p.json"
    assert main(["bench", "profile", "--model", folder, "--batch-sizes", "1", "2", "4",
                 "--input-lens", "8", "24", "--colocated-with", folder, "--num-blocks",
                 "64", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "profile " in printed and f"with {folder}" in printed
    data = json.loads(out.read_text())
    alone, turns = data["samples"], data["colocated"]["samples"]
    assert len(alone) == len(turns) >= 2 * 3 * 15  # a prefill, then decodes to 16 tokens
    assert {s[1] for s in alone} >= {1, 2, 4}  # sequences per step: the batch sizes
    assert all(s[3] > 0 for s in alone + turns)
    solo, _ = load_profile(str(out))
    shared, meta = load_profile(str(out), colocated=True)
    assert solo.step_seconds(4, 4, 64) > 0 and shared.step_seconds(4, 4, 64) > 0
    assert meta["model"] == folder
    assert meta["precision"] == meta["dtype"] == "float32"  # what the planner scales from
