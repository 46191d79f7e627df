"""The conventions vLLM users reach for, on a live server started from a YAML file
(`--config`, the command line's --port winning over the file's) with the key in
$TESSERA_API_KEY: several --served-model-name, GET /version, CORS for the allowed origin
only, a --chat-template file, and the `tessera chat` / `tessera complete` clients."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tessera import __version__
from tests.helpers.launch import start_server
from tests.server.helpers import assert_error, metric, wait_until_idle

KEY = "from-the-environment"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "http://app.example"
# SmolLM2's ChatML, with a default system message that shows the template is this one
TEMPLATE = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Tessera's "
            "test assistant.<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>"
            "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conventions")
    (folder / "chat.jinja").write_text(TEMPLATE)
    (folder / "serve.yaml").write_text(
        f"port: 1\nnum-blocks: 300\nserved-model-name: [smol, smollm2]\n"
        f"allowed-origins: [{ORIGIN}]\nchat-template: {folder / 'chat.jinja'}\n"
        "stats-interval: 1\n")
    env = {**os.environ, "TESSERA_API_KEY": KEY}
    srv = start_server(str(folder), "--config", str(folder / "serve.yaml"), env=env)
    yield srv
    srv.stop()


def test_the_file_configured_the_server_and_its_log_says_so(conv):
    log = conv.log()
    line = next(x for x in log.splitlines() if "options changed:" in x)
    assert "serving smol = smollm2 on http://127.0.0.1:" in line
    assert "--num-blocks 300" in line and "--served-model-name smol smollm2" in line
    assert "(config file " in line and KEY not in log
    assert "--port 1 " not in line  # the command line's port won


def test_version_is_open(conv):
    r = httpx.get(conv.base_url + "/version", timeout=30)
    assert r.status_code == 200 and r.json() == {"version": __version__}


def test_the_key_comes_from_the_environment(conv):
    assert_error(httpx.get(conv.v1 + "/models", timeout=30), 401)
    r = httpx.get(conv.v1 + "/models", headers=AUTH, timeout=30)
    assert [m["id"] for m in r.json()["data"]] == ["smol", "smollm2"]


def test_any_served_name_works_and_responses_give_the_first(conv):
    client = openai.OpenAI(base_url=conv.v1, api_key=KEY)
    for name in ("smol", "smollm2"):
        out = client.completions.create(model=name, prompt="Hello", max_tokens=2)
        assert out.model == "smol"
    with pytest.raises(openai.NotFoundError, match="The model `smollm3` does not exist"):
        client.completions.create(model="smollm3", prompt="Hello", max_tokens=2)
    r = httpx.get(conv.base_url + "/v2/models/smollm2/ready", headers=AUTH, timeout=30)
    assert r.status_code == 200


def test_the_chat_template_file_is_the_one_applied(conv):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    tokens = httpx.post(conv.base_url + "/tokenize", json={"messages": messages},
                        headers=AUTH, timeout=30).json()["tokens"]
    text = httpx.post(conv.base_url + "/detokenize", json={"tokens": tokens}, headers=AUTH,
                      timeout=30).json()["prompt"]
    assert text.startswith("<|im_start|>system\nYou are Tessera's test assistant.")


def test_cors_for_the_allowed_origin_only(conv):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(conv.v1 + "/chat/completions", headers={"Origin": ORIGIN, **preflight},
                      timeout=30)  # a preflight carries no key, and needs none
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.options(conv.v1 + "/chat/completions",
                      headers={"Origin": "http://elsewhere.example", **preflight}, timeout=30)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.get(conv.v1 + "/models", headers={"Origin": ORIGIN, **AUTH}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(conv.v1 + "/models", headers={"Origin": "http://elsewhere.example", **AUTH},
                  timeout=30)
    assert "access-control-allow-origin" not in r.headers


def test_cors_is_off_without_allowed_origins(server):
    r = httpx.options(server.v1 + "/chat/completions",
                      headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
                      timeout=30)
    assert "access-control-allow-origin" not in r.headers


# -- tessera chat / tessera complete ----------------------------------------------------------
def _client(*args: str, stdin: str = "", key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_API_KEY"}
    if key is not None:
        env["TESSERA_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "tessera", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def _looked_up_tokens(conv) -> float:
    """Prompt tokens the engine has seen (every prompt is looked up in the prefix cache)."""
    assert wait_until_idle(conv.base_url, 60, AUTH)
    time.sleep(1.5)  # the engine's last stats
    return metric(httpx.get(conv.base_url + "/metrics", timeout=30, headers=AUTH).text,
                  "tessera:prefix_cache_queries_total")


QUESTIONS = ["What is the capital of France?", "And what is the capital of Italy?"]


def test_chat_quick_answers(conv):
    proc = _client("chat", "--url", conv.v1, "-q", QUESTIONS[0], "--temperature", "0",
                   "--max-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout and proc.stderr == ""


def test_chat_keeps_the_conversation(conv):
    """The second turn of a conversation carries the first: more prompt tokens than the
    same two questions asked apart."""
    common = ["--url", conv.base_url, "--temperature", "0", "--max-tokens", "16"]
    before = _looked_up_tokens(conv)
    for question in QUESTIONS:
        assert _client("chat", *common, "-q", question).returncode == 0
    apart = _looked_up_tokens(conv) - before
    proc = _client("chat", *common, stdin="\n".join(QUESTIONS) + "\n")
    assert proc.returncode == 0, proc.stderr
    together = _looked_up_tokens(conv) - before - apart
    assert "Paris" in proc.stdout
    assert together > apart + 5, (apart, together)


def test_complete_reads_prompts_from_standard_input(conv):
    proc = _client("complete", "--url", conv.v1, "--model", "smollm2", "--temperature", "0",
                   "--max-tokens", "6", stdin="The capital of France is\n1, 2, 3, 4,\n")
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.splitlines()
    assert len(answers) >= 2 and "Paris" in proc.stdout and " 5" in proc.stdout


@pytest.mark.parametrize("args,key,message", [
    (["--model", "nope"], KEY, "tessera: error: the server answered 404: The model `nope` "
                               "does not exist."),
    ([], "wrong", "tessera: error: the server answered 401: Invalid or missing API key"),
    (["--max-tokens", "-3"], KEY, "tessera: error: the server answered 400: "),
])
def test_client_errors_are_one_line(conv, args, key, message):
    proc = _client("chat", "--url", conv.v1, "-q", "hi", *args, key=key)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.splitlines()) == 1


def test_client_without_a_server_is_one_line():
    proc = _client("complete", "--url", "http://127.0.0.1:9/v1", "-q", "hi")
    assert proc.returncode == 1
    assert proc.stderr.startswith("tessera: error: cannot reach the server at "
                                  "http://127.0.0.1:9/v1")
