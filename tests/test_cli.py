"""`tessera generate` as a user runs it: a real subprocess with the default model."""
from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_generate_chat_answers_paris():
    proc = run_cli("generate", "--chat", "What is the capital of France?", "--cpu-threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "KV cache" in proc.stderr  # the start-up log says what it set up
    assert "CPU engine: 1 intra-op thread\n" in proc.stderr


def test_python_dash_m_tessera_is_the_cli():
    proc = subprocess.run([sys.executable, "-m", "tessera", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "bench" in proc.stdout


def test_bad_option_value_is_a_clear_error():
    proc = run_cli("generate", "hi", "--dtype", "float8")
    assert proc.returncode == 2
    assert "--dtype: invalid choice: 'float8'" in proc.stderr  # argparse lists the choices
    proc = run_cli("generate", "hi", "--max-num-seqs", "0")  # checked by the config
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("tessera: error: max_num_seqs must be "
                                                    ">= 1, got 0.")


def test_bench_throughput_and_latency_on_a_tiny_model(tiny_llama, tmp_path):
    """`tessera bench` end to end on the CPU: --seed picks the request set (the same seed,
    the same prompt tokens), the JSON has the workload's figures."""
    import json
    folder, _ = tiny_llama
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / f"{name}.json"
        proc = run_cli("bench", "throughput", "--model", folder, "--num-prompts", "4",
                       "--input-range", "4", "12", "--output-range", "2", "3", "--seed",
                       str(seed), "--json", str(out), "--device", "cpu")
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = json.loads(out.read_text())
    assert runs["a"]["seed"] == 5 and runs["a"]["num_prompts"] == 4
    assert 8 <= runs["a"]["output_tokens"] <= 12 and runs["a"]["output_tok_s"] > 0
    assert runs["a"]["input_tokens"] == runs["b"]["input_tokens"]
    lengths = {r["input_tokens"] for r in runs.values()}
    assert len(lengths) == 2, "seed 6 draws other prompt lengths than seed 5"
    out = tmp_path / "lat.json"
    proc = run_cli("bench", "latency", "--model", folder, "--batch-size", "2", "--input-len",
                   "6", "--output-len", "4", "--json", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["batch"] == 2 and r["decode_steps"] >= 1 and r["tok_s"] > 0


def test_bad_serve_guard_values_are_refused_before_anything_starts():
    for option, value, message in (
            ("--max-connections", "0", "--max-connections must be at least 1 (got 0)"),
            ("--request-read-timeout", "0", "--request-read-timeout must be at least 0.001"),
            ("--stream-stall-timeout", "nan", "--stream-stall-timeout must be at least 0.001"),
            ("--shutdown-timeout", "-1", "--shutdown-timeout must be at least 0 (got -1)")):
        proc = run_cli("serve", option, value, "--port", "1")
        assert proc.returncode == 2, (option, proc.stderr)
        assert message in proc.stderr, (option, proc.stderr)


def test_the_connection_limit_follows_the_open_file_limit():
    from tessera.server.http_protocol import (FD_MARGIN, default_max_connections,
                                              raise_open_file_limit)
    assert default_max_connections(4096) == 4096 - FD_MARGIN
    assert default_max_connections(100) == 16  # never below a usable few
    assert default_max_connections(None) == 65536  # unlimited
    limit = raise_open_file_limit()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit == (None if soft == resource.RLIM_INFINITY else soft)
    assert soft == hard or hard == resource.RLIM_INFINITY  # raised as far as allowed
