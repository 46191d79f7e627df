"""`tessera serve [MODEL]`: the engine in its own process, the API here, on uvicorn.

Flow, failing fast: parse options (engine options generated from the config dataclasses;
the port's range checked by argparse) -> torch kept out of this process
(frontend/torch_free.py) -> the listening socket bound (a taken port fails here, in a
second, before any model is read) -> MPClient (engine/mp_client.py: the checkpoint's
metadata read once and the tokenizer loaded here; a context longer than the model's is
refused here) -> the engine core process started and awaited (weights, KV cache; a
failure or Ctrl-C stops it and removes its IPC folder; one per data-parallel replica, and
with `--deployment FILE` one per model per device group its plan gave it:
server/deployment.py, requests routed by `model`) -> uvicorn on the bound socket,
with Tessera's log format (logs.py), the API key check, the body bound and CORS
(server/app.py). Start-up phases are logged with their times, and a
line every 4 s while one lasts. If the
engine process dies, the server fails in-flight requests, answers /health with 503 and
exits with status 1. On SIGTERM or Ctrl-C it drains (`draining_server`): no new
connections, requests in flight get `--shutdown-timeout` seconds to finish, then a 503 in
the OpenAI shape (an error event and [DONE] on a stream), then the engines stop.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

from tessera import __version__
from tessera.cli_args import add_engine_args, engine_kwargs
from tessera.config import EngineConfig
from tessera.default_model import FILENAME as DEFAULT_FILENAME
from tessera.server.deployment import ServedModel
from tessera.frontend.torch_free import keep_torch_out
from tessera.gc_tuning import freeze_after_startup, unfreeze
from tessera.server.tool_parsers import PARSERS

logger = logging.getLogger("tessera.server")
DEFAULT_MODEL_NAME = DEFAULT_FILENAME.split(".")[0]  # SmolLM2-135M-Instruct


def port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1..65535)")
    return port


def add_serve_parser(sub, parents: list) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI API, KServe v2)",
                       parents=parents)
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="HF folder or .gguf file (default: SmolLM2-135M-Instruct)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on "
                                                       "(default: 127.0.0.1)")
    g.add_argument("--port", type=port_number, default=8000, help="TCP port (default: 8000)")
    g.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on every route but the health "
                        "probes (/health, /v2/health/live, /v2/health/ready) (default: "
                        "$TESSERA_API_KEY, else no key)")
    g.add_argument("--open-metrics", action="store_true",
                   help="with --api-key, leave /metrics open (for a scraper without the key)")
    g.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="the model's names in the API: requests may use any, responses give "
                        f"the first (default: the model's path, or {DEFAULT_MODEL_NAME})")
    g.add_argument("--deployment", default=None, metavar="FILE",
                   help="serve the models of a deployment file (YAML/JSON, as `tessera plan` "
                        "reads) as its plan places them: AlpaServe-style placement of many "
                        "models on shared devices, requests routed by `model`")
    g.add_argument("--max-body-bytes", type=int, default=4 << 20,
                   help="largest request body; more is a 413 (default: 4 MiB)")
    g.add_argument("--trust-request-chat-template", action="store_true",
                   help="let requests bring their own chat_template (Jinja, rendered in a "
                        "sandbox); refused by default")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="let the model decide whether to call tools (tool_choice 'auto', the "
                        "default with tools); needs --tool-call-parser")
    g.add_argument("--tool-call-parser", choices=PARSERS, default=None,
                   help="how the model writes tool calls: hermes (Hermes, Qwen2.5; also "
                        "models whose template ignores tools, which get them as text) or "
                        "llama3_json (Llama 3.1/3.2)")
    g.add_argument("--prompt-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="longest time tokenizing a request's prompts or rendering its chat "
                        "template may take, off the event loop, before it is refused "
                        "(default: 10)")
    g.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="open HTTP connections at most; one more is answered 503 and closed "
                        "at once (default: the open-file limit, raised to its hard limit, "
                        "less 128)")
    g.add_argument("--request-read-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request's headers and body must arrive within this time of its "
                        "first byte, else 408 and the connection is closed (default: 30)")
    g.add_argument("--stream-stall-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="a stream whose client reads nothing for this long is dropped and its "
                        "request aborted, its KV blocks freed (default: 60)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM / Ctrl-C: new connections are refused at once, requests "
                        "in flight may finish for this long; those still running then end "
                        "with a 503 error (an error event and [DONE] on a stream) "
                        "(default: 30)")
    g.add_argument("--stats-interval", type=float, default=10.0,
                   help="seconds between stats log lines while busy (default: 10)")
    g.add_argument("--disable-access-log", action="store_true",
                   help="no log line per HTTP request (default: logged)")
    g.add_argument("--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
                   help="CORS: web pages of these origins may call the API, e.g. "
                        "http://localhost:3000, or * for any (default: none)")
    g.add_argument("--allowed-methods", nargs="+", default=["*"], metavar="METHOD",
                   help="CORS: the methods allowed to them (default: *)")
    g.add_argument("--allowed-headers", nargs="+", default=["*"], metavar="HEADER",
                   help="CORS: the request headers allowed to them (default: *)")
    g.add_argument("--allow-credentials", action="store_true",
                   help="CORS: allow cookies and credentials (default: not allowed)")
    add_engine_args(p)
    p.set_defaults(func=run_serve, serve_parser=p)


def run_serve(args: argparse.Namespace) -> int:
    keep_torch_out()  # this process only speaks HTTP and tokenizes (frontend/torch_free.py)
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        args.serve_parser.error("--enable-auto-tool-choice needs --tool-call-parser "
                                f"({', '.join(PARSERS)})")
    for name, value, low in (("--max-connections", args.max_connections, 1),
                             ("--request-read-timeout", args.request_read_timeout, 1e-3),
                             ("--stream-stall-timeout", args.stream_stall_timeout, 1e-3),
                             ("--shutdown-timeout", args.shutdown_timeout, 0)):
        if value is not None and not value >= low:
            args.serve_parser.error(f"{name} must be at least {low:g} (got {value:g})")
    kwargs = engine_kwargs(args)
    if args.deployment:
        return asyncio.run(serve(_deployed(args, kwargs), args))
    if args.model_tag:
        kwargs["model"] = args.model_tag
    config = EngineConfig.from_kwargs(**kwargs)
    names = args.served_model_name or [config.model.model or DEFAULT_MODEL_NAME]
    return asyncio.run(serve([ServedModel(names, config)], args))


def _deployed(args: argparse.Namespace, kwargs: dict) -> list[ServedModel]:
    """The deployment file's models, placed by the plan (server/deployment.py)."""
    if args.model_tag or args.served_model_name:
        args.serve_parser.error("--deployment names the models; give no MODEL or "
                                "--served-model-name with it")
    from tessera.server.deployment import place_models
    kwargs.pop("model", None)
    try:
        models, report = place_models(args.deployment, kwargs)
    except ValueError as e:
        args.serve_parser.error(str(e))
    logger.info("the plan for %s:\n%s", args.deployment, report)
    return models


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening before the engine starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


_NOT_OPTIONS = ("func", "serve_parser", "command", "model_tag", "api_key", "config",
                "replaced_defaults")


def _options(args: argparse.Namespace) -> str:
    """The options given other values than their defaults (by a config file or the
    command line), as flags."""
    parser, replaced = args.serve_parser, getattr(args, "replaced_defaults", {})
    changed = []
    for k, v in sorted(vars(args).items()):
        if k not in _NOT_OPTIONS and replaced.get(k, parser.get_default(k)) != v:
            value = " ".join(map(str, v)) if isinstance(v, list) else v
            changed.append(f"--{k.replace('_', '-')} {value}")
    return " ".join(changed) or "none"


async def serve(models: list[ServedModel], args: argparse.Namespace) -> int:
    import uvicorn

    from tessera.logs import uvicorn_log_config
    from tessera.server.app import CorsOptions, create_app

    sock = _listen(args.host, args.port)
    logger.info("tessera %s serving %s on http://%s:%d; options changed: %s%s", __version__,
                ", ".join(" = ".join(m.names) for m in models), args.host, args.port,
                _options(args), f" (config file {args.config})" if args.config else "")
    try:
        clients = await _start_clients(models)
    except BaseException:
        sock.close()
        raise
    freeze_after_startup()  # gc_tuning.py: no full collections walking start-up
    state = _states(models, clients, args)
    everyone = state.all_models()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        stats = [asyncio.create_task(_log_stats(m.metrics, args.stats_interval))
                 for m in everyone]
        try:
            yield
        finally:
            for task in stats:
                task.cancel()
            unfreeze()
            state.prompts.shutdown()
            await asyncio.gather(*(c.shutdown() for c in clients))

    cors = CorsOptions(args.allowed_origins, args.allowed_methods, args.allowed_headers,
                       args.allow_credentials)
    app = create_app(state, args.api_key, args.max_body_bytes, lifespan, cors,
                     args.open_metrics)
    from tessera.server.http_protocol import (default_max_connections, guarded_protocol,
                                              raise_open_file_limit)
    open_files = raise_open_file_limit()  # a descriptor per connection
    max_connections = args.max_connections or default_max_connections(open_files)
    server = draining_server(uvicorn.Config(
        app, log_config=uvicorn_log_config(args.log_level), log_level=args.log_level,
        access_log=not args.disable_access_log,
        http=guarded_protocol(args.request_read_timeout, max_connections),
        timeout_graceful_shutdown=args.shutdown_timeout + ANSWER_S),
        clients, args.shutdown_timeout)

    def on_dead(message: str) -> None:
        logger.error("shutting down: %s", message)
        server.should_exit = True

    for client in clients:
        client.on_dead = on_dead
    await server.serve(sockets=[sock])
    return 1 if state.dead() or not server.started else 0


ANSWER_S = 5.0  # after the shutdown timeout, the time routes have to answer their 503s


def draining_server(config, clients: list, drain_s: float):
    """A uvicorn Server whose shutdown drains: uvicorn stops accepting and waits for the
    requests in flight; after drain_s those still running are ended with a 503 error
    (EngineClient.fail_in_flight), which their routes answer in the OpenAI shape (an error
    event and [DONE] on a stream) within ANSWER_S, before uvicorn would cancel them."""
    import uvicorn

    class _Draining(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            logger.info("shutting down: requests in flight have %.0f s to finish", drain_s)
            timer = asyncio.get_running_loop().call_later(drain_s, self._expire)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def _expire(self) -> None:
            ended = sum(c.fail_in_flight(
                f"The server is shutting down: this request did not finish within the "
                f"{drain_s:g} s shutdown timeout.", 503) for c in clients)
            if ended:
                logger.warning("shutdown timeout: %d request(s) in flight ended with 503",
                               ended)

    return _Draining(config)


async def _start_clients(models: list[ServedModel]) -> list:
    """Each model's MPClient (metadata and tokenizer read here), then every engine process
    started at once; on a failure or Ctrl-C / SIGTERM every engine is stopped."""
    from tessera.engine.mp_client import MPClient

    start = time.monotonic()
    async with _heartbeat("reading the model's metadata and tokenizer"):
        clients = [await asyncio.to_thread(MPClient, m.config, None, m.placements)
                   for m in models]
    logger.info("tokenizer and model metadata ready in %.1f s", time.monotonic() - start)
    start = time.monotonic()
    engines = sum(len(c.cores) for c in clients)
    async with _heartbeat(f"starting {engines} engine process{'es' * (engines > 1)} "
                          "(weights, KV cache, warm-up)"):
        # a deployment's engines may share GPUs: each starts once the others hold theirs
        await _start_engines(clients, any(m.placements for m in models))
    for m, c in zip(models, clients):
        w = c.ready.worker
        logger.info("engine ready in %.1f s: %s on %s (%s), %.2f GiB of weights (%s) loaded "
                    "in %.1f s%s", time.monotonic() - start, m.names[0], w.device, w.dtype,
                    w.weight_gib, w.describe_weights(), w.load_seconds,
                    f"; {len(c.cores)} replicas behind one name (a router balances them by "
                    "load and prefix affinity)" if len(c.cores) > 1 else "")
    return clients


def _states(models: list[ServedModel], clients: list, args: argparse.Namespace):
    """The first model's ServerState, holding every other model's by each of its names;
    their metrics share one registry."""
    from tessera.server.app import ServerState
    from tessera.server.metrics import ServerMetrics
    from tessera.server.prompt_work import PromptWorkers
    from tessera.server.tools import ToolOptions

    prompts = PromptWorkers(timeout_s=args.prompt_timeout)
    tools = ToolOptions(args.enable_auto_tool_choice, args.tool_call_parser)
    states, shared = [], None
    for m, client in zip(models, clients):
        w = client.ready.worker
        metrics = ServerMetrics(m.names[0], w.weight_bytes, w.memory, shared)
        shared = shared or metrics
        client.observers.append(metrics)
        if len(client.cores) > 1:
            metrics.replicas = client
        states.append(ServerState(client, metrics, m.names, client.input.model_path,
                                  int(time.time()), prompts, args.trust_request_chat_template,
                                  tools, stream_stall_s=args.stream_stall_timeout))
    first = states[0]
    first.others = {name: st for st in states[1:] for name in st.model_names}
    return first


@contextlib.asynccontextmanager
async def _heartbeat(doing: str, every_s: float = 4.0):
    """Logs what start-up is doing, and again every few seconds while it lasts."""
    logger.info("%s ...", doing)
    start = time.monotonic()

    async def beat():
        while True:
            await asyncio.sleep(every_s)
            logger.info("still %s (%.0f s)", doing, time.monotonic() - start)
    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def _start_engines(clients: list, one_at_a_time: bool = False) -> None:
    """Every client's start() (at once, or one engine after another), with SIGTERM as
    well as Ctrl-C cancelling them (each then stops its engines and removes their IPC
    folders before the error goes on)."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        if one_at_a_time:
            for c in clients:
                await c.start(one_at_a_time=True)
        else:
            await asyncio.gather(*(c.start() for c in clients))
    except BaseException:
        await asyncio.gather(*(c.shutdown() for c in clients))
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _log_stats(metrics, interval: float) -> None:
    last = None
    while True:
        await asyncio.sleep(interval)
        s = metrics.stats
        now = (s.prompt_tokens, s.generation_tokens, s.running, s.waiting)
        if now != last:  # quiet while idle
            logger.info(metrics.log_line())
            last = now
