"""The container files (Dockerfile, compose.yaml, .dockerignore) against the code: the
image's entrypoint and the compose service's command are options `tessera serve` accepts,
everything copied exists, the default model's package is the Makefile's. (No image is
built here: the CPU machines have no Docker daemon; see README, "Docker".)"""
from __future__ import annotations

import json
import pathlib
import re
import shlex

import yaml

from tessera.cli import parse_args
from tessera.default_model import PIP_SPEC

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_image_serves_with_options_tessera_accepts():
    steps = _dockerfile()
    assert steps[0][0] == "FROM" and steps[0][1].startswith("nvidia/cuda:")
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    assert entry[:2] == ["tessera", "serve"]
    args = parse_args(entry[1:] + ["/models/some-model", "--max-num-seqs", "8"])
    assert (args.host, args.port, args.model_tag) == ("0.0.0.0", 8000, "/models/some-model")
    assert dict(steps)["EXPOSE"] == "8000"
    assert "tessera = \"tessera.cli:main\"" in (ROOT / "pyproject.toml").read_text()


def test_what_the_image_copies_exists_and_the_default_model_is_the_makefiles():
    for kind, rest in _dockerfile():
        if kind == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), source
    assert f"SMOLLM2 := {PIP_SPEC}" in (ROOT / "Makefile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored)


def test_the_compose_service_runs_that_image_with_valid_options():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["tessera"]
    assert service["build"] == "."
    args = parse_args(["serve", *service["command"]])
    assert args.served_model_name == ["coder", "qwen-coder"]
    assert "TESSERA_API_KEY" in service["environment"]
    assert any(re.fullmatch(r"\d+:8000", p) for p in service["ports"])
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
