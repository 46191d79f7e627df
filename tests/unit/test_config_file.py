"""`--config FILE.yaml` (tessera/config_file.py through cli.parse_args): every option of a
command may come from the file, converted and checked as on the command line, and the
command line wins; a bad file is one clear error naming the file and the key."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tessera.cli import parse_args


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "options.yaml"
    path.write_text(text)
    return str(path)


def test_the_file_sets_options_and_the_command_line_wins(tmp_path):
    path = _write(tmp_path, """
        model: /models/a
        port: 9001
        max-num-seqs: 64
        gpu_memory_utilization: 0.5
        enable-prefix-caching: false
        disable-access-log: true
        served-model-name: [coder, qwen-coder]
        allowed-origins: http://localhost:3000
        kv-cache-dtype: fp8
        log-level: warning
    """.replace("\n        ", "\n"))
    args = parse_args(["serve", "--config", path, "--port", "9002", "--max-num-seqs", "8"])
    assert (args.port, args.max_num_seqs) == (9002, 8)  # the command line wins
    assert args.model == "/models/a" and args.gpu_memory_utilization == 0.5
    assert args.enable_prefix_caching is False and args.disable_access_log is True
    assert args.served_model_name == ["coder", "qwen-coder"]
    assert args.allowed_origins == ["http://localhost:3000"]  # one value for a list
    assert args.kv_cache_dtype == "fp8" and args.log_level == "warning"
    # what the file changed is known, so the server logs it among the changed options
    assert args.replaced_defaults["max_num_seqs"] is None  # auto: 256, or 512 under offload
    # wherever --config stands, the command line wins
    args = parse_args(["serve", "--port", "9003", "--config", path])
    assert args.port == 9003


def test_other_commands_take_a_file_too(tmp_path):
    path = _write(tmp_path, "max-tokens: 7\ntemperature: 0.25\n")
    args = parse_args(["generate", "hello", "--config", path])
    assert (args.max_tokens, args.temperature) == (7, 0.25)
    args = parse_args(["chat", "--config", _write(tmp_path, "url: http://h:1/v1\n")])
    assert args.url == "http://h:1/v1"


@pytest.mark.parametrize("text,message", [
    ("max-num-seq: 4\n", "'max-num-seq' is not an option of `tessera serve`"),
    ("port: eighty\n", "port: invalid value 'eighty'"),
    ("port: 70000\n", "port: invalid value 70000 (70000 is not a TCP port"),
    ("max-num-seqs: [1, 2]\n", "max-num-seqs takes one value"),
    ("dtype: float8\n", "dtype: 'float8' is not one of auto, float32"),
    ("enable-prefix-caching: maybe\n", "enable-prefix-caching is a switch: give true or false"),
    ("max-num-seqs: true\n", "max-num-seqs: expected int, got True"),
    ("- port\n", "must map option names to values (got a list)"),
    ("port: [\n", "is not valid YAML"),
])
def test_a_bad_file_is_a_clear_error(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match="config file .*options.yaml") as e:
        parse_args(["serve", "--config", path])
    assert message in str(e.value)


def test_the_cli_reports_a_bad_file_in_one_line(tmp_path):
    path = _write(tmp_path, "max-num-seq: 4\n")
    proc = subprocess.run([sys.executable, "-m", "tessera", "serve", "--config", path],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"tessera: error: config file {path}: 'max-num-seq' is not "
                                   "an option of `tessera serve` (see tessera serve --help).")
    proc = subprocess.run([sys.executable, "-m", "tessera", "serve", "--config",
                           str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "No such file or directory" in proc.stderr
