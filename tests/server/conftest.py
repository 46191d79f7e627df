"""A live `tessera serve` process (the default model, on CPU) for the server tests.

`server` is shared by the whole session (`sdk` and `api`: an openai SDK client and an
httpx client of it); `start_server(tmp_dir, *args)`
(tests/helpers/launch.py) starts another one (e.g. with --api-key) and the returned
handle stops it. Only loopback addresses are used.
"""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers.launch import start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = start_server(str(tmp_path_factory.mktemp("server")), "--num-blocks", "600",
                       "--max-waiting", "1024", "--stats-interval", "2",
                       "--trust-request-chat-template",  # the field tests send templates
                       "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def sdk(server):
    """The openai SDK against the shared server."""
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def api(server):
    """A plain HTTP client of the shared server."""
    with httpx.Client(base_url=server.base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def model_name() -> str:
    return "SmolLM2-135M-Instruct"
