"""`tessera serve` starting up as a user meets it: a taken port fails in seconds without
reading the model; options that cannot work (a port out of range, a context longer than
the model's, a GGUF tensor type that cannot be read) fail before the engine starts; an
interrupted start (SIGINT before the engine process exists, while it loads, or once
serving) leaves no process and no IPC folder behind; start-up names its phases and their
times, a line at least every 5 s; a start that fails in the engine prints one
`tessera: error:` line and exits 1."""
from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import torch


def _serve(tmp_path, *args: str) -> subprocess.Popen:
    """`tessera serve` as a terminal would start it: Ctrl-C (SIGINT) not ignored, even
    when this test run was itself started in the background (`cmd &` in a script ignores
    SIGINT, and children inherit that)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the IPC folders go here
    return subprocess.Popen([sys.executable, "-m", "tessera", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_taken_port_fails_fast_without_loading_the_model(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        start = time.monotonic()
        proc = _serve(tmp_path, "--port", str(taken.getsockname()[1]))
        _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 3, err
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith("tessera: error: cannot listen on")
    assert "Loading weights" not in err and "Traceback" not in err


def _unreadable_gguf(path) -> str:
    """A GGUF header whose one tensor has a type (Q8_K) the gguf package cannot dequantize."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(256)
    w.add_head_count(2)
    w.add_feed_forward_length(512)
    w.add_block_count(1)
    w.add_vocab_size(4)
    w.add_tensor("token_embd.weight", np.zeros((4, 292), np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("case", ["port out of range", "context too long", "unreadable GGUF"])
def test_options_are_checked_before_the_engine_starts(tmp_path, case):
    args, expected = {
        "port out of range": (["--port", "99999"], "99999 is not a TCP port (1..65535)"),
        "context too long": (["--port", str(_free_port()), "--max-model-len", "100000"],
                             "max_model_len 100000 is longer than the model's context "
                             "(8192 positions)."),
        "unreadable GGUF": ([_unreadable_gguf(tmp_path / "q8k.gguf"), "--port",
                             str(_free_port())], "1 tensor(s) of type Q8_K (e.g. "
                                                 "token_embd.weight)"),
    }[case]
    start = time.monotonic()
    proc = _serve(tmp_path, *args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert expected in err.strip().splitlines()[-1]
    assert "starting the engine" not in err and "Traceback" not in err
    assert time.monotonic() - start < 15, err  # seconds, not a model load


def test_start_up_says_what_it_does_at_least_every_5_s(server):
    """From the first line to 'engine ready' (the session's server on the default model),
    each phase is named with its time and no two timestamped lines are 5 s apart."""
    stamps, ready = [], None
    # anywhere in a line: the weights' progress bar shares lines with log records
    for m in re.finditer(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [A-Z]+ \w+ [\w.]+: "
                         r"(.*)", server.log()):
        stamps.append(datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f"))
        if m.group(2).startswith("engine ready in"):
            ready = len(stamps)
            break
    assert ready, server.log()
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) < 5, gaps
    log = server.log()
    for phase in (r"tokenizer and model metadata ready in [\d.]+ s",
                  r"engine process \d+ up: loading the model",
                  r"GiB of weights \(float32 [\d.]+ GiB; float32 activations, cpu\) "
                  r"loaded in [\d.]+ s",
                  r"KV cache .* set up in [\d.]+ s", r"engine ready in [\d.]+ s"):
        assert re.search(phase, log), phase


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.parametrize("when", ["before the engine", "while the engine loads",
                                  "once serving"])
def test_an_interrupted_start_leaves_no_process_and_no_folder(tmp_path, when):
    port = _free_port()
    proc = _serve(tmp_path, "--port", str(port), "--num-blocks", "64")
    seen: set[int] = set()
    if when == "before the engine":
        time.sleep(0.5)
    elif when == "once serving":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen |= _descendants(proc.pid)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert seen, "no engine process appeared"
    else:  # the engine process exists and is loading
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            seen |= _descendants(proc.pid)
            time.sleep(0.1)
        assert seen, "no engine process appeared"
        time.sleep(1.5)
    seen |= _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)  # the API process only: its children must follow
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in seen if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tessera-")], os.listdir(tmp_path)
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_engine_that_cannot_start_is_one_error_line(tmp_path):
    """The device is checked in the engine process (it has torch): its failure comes back
    as one line, exit status 1, and nothing is left behind."""
    proc = _serve(tmp_path, "--port", str(_free_port()), "--device", "cuda")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert lines[-1] == ("tessera: error: the engine failed to start: ValueError: device "
                         "'cuda' was asked for, but CUDA is not available here.")
    assert "Traceback" not in err
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tessera-")]
