"""`tessera generate` as a user runs it: a real subprocess with the default model."""
from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_generate_chat_answers_paris():
    proc = run_cli("generate", "--chat", "What is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "KV cache" in proc.stderr  # the start-up log says what it set up


def test_bad_option_value_is_a_clear_error():
    proc = run_cli("generate", "hi", "--dtype", "float8")
    assert proc.returncode == 2
    assert "dtype 'float8' is not supported" in proc.stderr
