"""Logging: one timestamped format for every Tessera process and for uvicorn.

    2026-12-03 10:41:07.123 INFO api tessera.server: engine ready: ...
    (time, level, which process: api | engine | rank0.. | cli, module, message)

`setup_logging(level, process)` configures a process's root logger (each entry point calls
it: the CLI, the engine core process, each worker process; children get the level on their
command line); `uvicorn_log_config(level, process)` gives uvicorn the same format;
LEVELS names the choices of `--log-level`.
"""
from __future__ import annotations

import logging
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
_DATE = "%Y-%m-%d %H:%M:%S"


def _format(process: str) -> str:
    return f"%(asctime)s.%(msecs)03d %(levelname)s {process} %(name)s: %(message)s"


def setup_logging(level: str = "info", process: str = "cli") -> None:
    logging.basicConfig(level=level.upper(), format=_format(process), datefmt=_DATE, force=True)


def uvicorn_log_config(level: str, process: str = "api") -> dict[str, Any]:
    handler = {"class": "logging.StreamHandler", "formatter": "tessera",
               "stream": "ext://sys.stderr"}
    logger = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"tessera": {"format": _format(process), "datefmt": _DATE}},
            "handlers": {"default": handler},
            "loggers": {"uvicorn": logger, "uvicorn.error": logger, "uvicorn.access": logger}}


def level_name() -> str:
    """This process's level, as a child's --log-level."""
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
