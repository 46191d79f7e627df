"""`tessera serve [MODEL]`: the engine in its own process, the API here, on uvicorn.

Flow: parse options (engine options generated from the config dataclasses) -> torch kept
out of this process (frontend/torch_free.py) -> MPClient (engine/mp_client.py: tokenizer
and model metadata here; the engine core process loads weights and the KV cache) ->
FastAPI app with a lifespan that waits for the engine, logs what was set
up and starts the periodic stats line -> uvicorn. If the engine process dies, the server
fails in-flight requests, answers /health with 503 and exits with status 1.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time

from tessera.cli_args import add_engine_args, engine_kwargs
from tessera.config import EngineConfig
from tessera.default_model import FILENAME as DEFAULT_FILENAME
from tessera.frontend.torch_free import keep_torch_out
from tessera.gc_tuning import freeze_after_startup, unfreeze

logger = logging.getLogger("tessera.server")
DEFAULT_MODEL_NAME = DEFAULT_FILENAME.split(".")[0]  # SmolLM2-135M-Instruct


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI API, KServe v2)")
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="HF folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-body-bytes", type=int, default=4 << 20)
    p.add_argument("--stats-interval", type=float, default=10.0,
                   help="seconds between stats log lines while busy")
    add_engine_args(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    keep_torch_out()  # this process only speaks HTTP and tokenizes (frontend/torch_free.py)
    kwargs = engine_kwargs(args)
    if args.model_tag:
        kwargs["model"] = args.model_tag
    config = EngineConfig.from_kwargs(**kwargs)
    return asyncio.run(serve(config, args))


async def serve(config: EngineConfig, args: argparse.Namespace) -> int:
    import uvicorn

    from tessera.engine.mp_client import MPClient
    from tessera.server.app import ServerState, create_app
    from tessera.server.metrics import ServerMetrics

    name = args.served_model_name or config.model.model or DEFAULT_MODEL_NAME
    client = MPClient(config)
    metrics = ServerMetrics(name)
    client.observers.append(metrics)
    state = ServerState(client, metrics, name, client.input.model_path, int(time.time()))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        ready = await client.start()
        freeze_after_startup()  # gc_tuning.py: no full collections walking start-up
        w = ready.worker
        logger.info("engine ready: %s on %s (%s), %.2f GiB of weights loaded in %.1f s",
                    name, w.device, w.dtype, w.weight_gib, w.load_seconds)
        tokens = ready.num_blocks * ready.block_size
        logger.info("KV cache (%s): %d tokens in %d blocks of %d; maximum concurrency at "
                    "full context (%d tokens): %.2fx", w.kv_cache_dtype,
                    tokens, ready.num_blocks, ready.block_size, ready.max_model_len,
                    tokens / ready.max_model_len)
        stats = asyncio.create_task(_log_stats(metrics, args.stats_interval))
        try:
            yield
        finally:
            stats.cancel()
            unfreeze()
            await client.shutdown()

    app = create_app(state, args.api_key, args.max_body_bytes, lifespan)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="info", timeout_graceful_shutdown=3))

    def on_dead(message: str) -> None:
        logger.error("shutting down: %s", message)
        server.should_exit = True

    client.on_dead = on_dead
    await server.serve()
    return 1 if client.dead or not server.started else 0


async def _log_stats(metrics, interval: float) -> None:
    last = None
    while True:
        await asyncio.sleep(interval)
        s = metrics.stats
        now = (s.prompt_tokens, s.generation_tokens, s.running, s.waiting)
        if now != last:  # quiet while idle
            logger.info(metrics.log_line())
            last = now
