"""`tessera serve --deployment FILE`: two models of a deployment file, placed by the plan on
the CPU's two "devices", behind one endpoint and routed by `model`: each answers as the
one-model server does, only the named model's engine works, /v1/models and KServe list
both, an unknown name is a 404, and a file the devices cannot hold, or a per-model option
on the command line, is refused before anything starts."""
from __future__ import annotations

import re
import subprocess
import sys

import httpx
import openai
import pytest

from tessera.default_model import default_model_path
from tests.helpers.launch import start_server

DEPLOYMENT = """\
hardware: {{preset: cpu, count: 2}}
duration: 20
group_sizes: [1]
models:
  - {{name: chat, model: {path}, precision: int4, rate: 0.5, prompt_len: [8, 64],
      output_len: [4, 16], slo: {{e2e: 60}}}}
  - {{name: summarize, model: {path}, precision: int4, rate: 0.2, prompt_len: [32, 128],
      output_len: 8, slo: {{e2e: 60}}}}
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    path = folder / "two-models.yaml"
    path.write_text(DEPLOYMENT.format(path=default_model_path()))
    srv = start_server(str(folder), "--deployment", str(path), "--cpu-threads", "1",
                       "--num-blocks", "128")
    yield srv
    srv.stop()


def _generated(srv) -> dict[str, float]:
    text = httpx.get(srv.base_url + "/metrics").text
    return {name: float(v) for name, v in re.findall(
        r'^tessera:generation_tokens_total\{model_name="(\w+)"\} (\S+)$', text, re.M)}


def test_requests_go_to_the_model_they_name(deployment, sdk, model_name):
    client = openai.OpenAI(base_url=deployment.v1, api_key="x", max_retries=0, timeout=120)
    assert {m.id for m in client.models.list().data} == {"chat", "summarize"}
    assert "chose" in deployment.log() or "chosen" in deployment.log()  # the plan is logged
    want = sdk.completions.create(model=model_name, prompt="The sky is", max_tokens=6,
                                  temperature=0).choices[0].text
    for name in ("chat", "summarize"):
        before = _generated(deployment)
        r = client.completions.create(model=name, prompt="The sky is", max_tokens=6,
                                      temperature=0)
        assert r.model == name and r.choices[0].text == want
        after = _generated(deployment)
        grew = {n for n in after if after[n] > before.get(n, 0)}
        assert grew == {name}  # only the named model's engine worked
    with pytest.raises(openai.NotFoundError, match="`chitchat` does not exist"):
        client.completions.create(model="chitchat", prompt="x", max_tokens=1)


def test_kserve_routes_by_model_name(deployment):
    r = httpx.post(deployment.base_url + "/v2/models/summarize/infer", timeout=60, json={
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                    "data": ["Hello"]}], "parameters": {"max_tokens": 2}})
    assert r.status_code == 200 and r.json()["model_name"] == "summarize"
    assert httpx.get(deployment.base_url + "/v2/models/chat/ready").status_code == 200


def _serve_fails(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "tessera.cli", "serve", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    return proc.stderr


def test_bad_deployments_are_refused_before_starting(tmp_path):
    too_big = tmp_path / "too-big.yaml"
    too_big.write_text("hardware: {preset: cpu, count: 1, memory_gib: 1}\n"
                       "models:\n  - {name: big, model: llama-3-70b, rate: 1, slo: {e2e: 9}}\n")
    assert "model 'big' needs 131.4 GiB of weights; 1 x CPU hold 0.9 GiB" in _serve_fails(
        "--deployment", str(too_big))
    ok = tmp_path / "ok.yaml"
    ok.write_text(DEPLOYMENT.format(path=default_model_path()))
    err = _serve_fails("--deployment", str(ok), "--tensor-parallel-size", "2")
    assert "--deployment sets tensor_parallel_size per model" in err
    err = _serve_fails("--deployment", str(ok), "some-model")
    assert "--deployment names the models" in err
