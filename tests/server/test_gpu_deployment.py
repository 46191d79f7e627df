"""On a GPU (run on the lent H200; results in benchmarks/RESULTS.md): a deployment file's two
models placed on one GPU by the plan (`tessera serve --deployment`) start one after the
other, each sizing its KV cache within its share of the GPU, and both answer."""
from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers.launch import start_server

pytestmark = pytest.mark.gpu

DEPLOYMENT = """\
hardware: {preset: h200, count: 1}
duration: 10
models:
  - {name: big, model: qwen2.5-0.5b, rate: 2, prompt_len: [64, 512], output_len: 64,
     slo: {ttft: 1.0, tpot: 0.1}}
  - {name: small, model: smollm2-135m, rate: 2, prompt_len: [64, 512], output_len: 64,
     slo: {ttft: 1.0, tpot: 0.1}}
"""


def test_two_models_share_one_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    path = tmp_path / "one-gpu.yaml"
    path.write_text(DEPLOYMENT)
    srv = start_server(str(tmp_path), "--deployment", str(path), "--max-model-len", "2048",
                       timeout=900)
    try:
        for name in ("big", "small"):
            r = httpx.post(srv.v1 + "/completions", timeout=120, json={
                "model": name, "prompt": list(range(10, 60)), "max_tokens": 8})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
        text = httpx.get(srv.base_url + "/metrics").text
        mem = {(m, k): float(v) for k, m, v in re.findall(
            r'^tessera:memory_bytes\{kind="(\w+)",model_name="(\w+)"\} (\S+)$', text, re.M)}
        total = torch.cuda.mem_get_info()[1]
        held = sum(mem[(m, k)] for m in ("big", "small") for k in ("kv_cache", "weights_device"))
        print("memory by engine:", {k: v / 2**30 for k, v in mem.items()
                                    if k[1] in ("kv_cache", "weights_device")},
              "total GiB", total / 2**30)
        assert mem[("big", "kv_cache")] > 2**30 and mem[("small", "kv_cache")] > 2**30
        assert held <= 0.9 * total
    finally:
        srv.stop()
    print(srv.log()[-3000:])
