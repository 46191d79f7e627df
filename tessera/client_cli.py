"""`tessera chat` and `tessera complete`: a terminal client of a running server.

    tessera chat --url http://127.0.0.1:8000/v1            (a conversation: one line a turn)
    tessera chat -q "What is the capital of France?"       (one question, one answer)
    echo "Once upon a time" | tessera complete             (each line a prompt)

`add_client_parsers(sub, parents)` defines both subcommands. Each talks to the server's
OpenAI API over HTTP (httpx; no torch, no model here): ServerClient finds the model (the
first of GET /v1/models unless --model names one), then streams /v1/chat/completions or
/v1/completions and prints the text as it comes. A chat keeps its history, so each turn
sees the ones before. The key comes from --api-key or $TESSERA_API_KEY. A server that
cannot be reached or answers with an error is one `tessera: error:` line (exit 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any, Optional

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def add_client_parsers(sub, parents: list) -> None:
    for name, run, what in (("chat", run_chat, "chat with a running server's model"),
                            ("complete", run_complete, "complete prompts on a running server")):
        p = sub.add_parser(name, help=what, description=what, parents=parents)
        p.add_argument("--url", default=DEFAULT_URL,
                       help=f"the server's OpenAI API (default: {DEFAULT_URL})")
        p.add_argument("--model", default=None,
                       help="a served model name (default: the first the server lists)")
        p.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY") or None,
                       help="the server's key (default: $TESSERA_API_KEY, else none)")
        p.add_argument("-q", "--quick", default=None, metavar="TEXT",
                       help="send this one message or prompt, print the answer and exit "
                            "(default: read lines from standard input)")
        p.add_argument("--max-tokens", type=int, default=None,
                       help="tokens to generate at most (default: the server's)")
        p.add_argument("--temperature", type=float, default=None,
                       help="sampling temperature (default: the server's)")
        if name == "chat":
            p.add_argument("--system-prompt", default=None,
                           help="a system message to start the conversation (default: none)")
        p.set_defaults(func=run)


class ServerClient:
    """The server's OpenAI API: which model, and streamed answers."""

    def __init__(self, args: argparse.Namespace):
        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
        url = args.url.rstrip("/")
        self.base = url if url.endswith("/v1") else url + "/v1"
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(600.0, connect=10.0))
        self.options = {k: v for k, v in (("max_tokens", args.max_tokens),
                                          ("temperature", args.temperature)) if v is not None}
        self.model = args.model or self._first_model()

    def _first_model(self) -> str:
        models = self._get("/models").get("data") or []
        if not models:
            raise RuntimeError(f"the server at {self.base} serves no model")
        return models[0]["id"]

    def _get(self, path: str) -> dict[str, Any]:
        import httpx
        try:
            response = self.http.get(self.base + path)
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the server at {self.base}: {e}") from None
        _raise_for_error(response)
        return response.json()

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        """The text of each streamed chunk of POST path."""
        import httpx
        body = {"model": self.model, **self.options, **body, "stream": True}
        try:
            with self.http.stream("POST", self.base + path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response)
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        raise RuntimeError(f"the server failed: {chunk['error'].get('message')}")
                    for choice in chunk.get("choices", []):
                        text = choice.get("text") or (choice.get("delta") or {}).get("content")
                        if text:
                            yield text
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach the server at {self.base}: {e}") from None


def _raise_for_error(response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    raise RuntimeError(f"the server answered {response.status_code}: {message}")


def _print_stream(pieces: Iterator[str]) -> str:
    text = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        text.append(piece)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(text)


def _lines(quick: Optional[str]) -> Iterator[str]:
    """The messages: --quick's, or standard input's lines (with a prompt on a terminal)."""
    if quick is not None:
        yield quick
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def run_chat(args: argparse.Namespace) -> int:
    client = ServerClient(args)
    messages: list[dict[str, str]] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    for line in _lines(args.quick):
        messages.append({"role": "user", "content": line})
        answer = _print_stream(client.stream("/chat/completions", {"messages": messages}))
        messages.append({"role": "assistant", "content": answer})
    return 0


def run_complete(args: argparse.Namespace) -> int:
    client = ServerClient(args)
    for line in _lines(args.quick):
        _print_stream(client.stream("/completions", {"prompt": line}))
    return 0
