"""Engine options on the command line, generated from the config's fields.

One place defines an option, its type, its default and its help: the field of a config
part (config.py). `add_engine_args(parser)` adds `--max-num-batched-tokens 512` and the
like (booleans as `--flag / --no-flag`) to any subcommand (serve, generate, bench);
`engine_kwargs(args)` gives them back as the keyword arguments `EngineConfig.from_kwargs`
takes.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from tessera.config import PARTS

_ALIASES = {"tensor_parallel_size": ["-tp"], "pipeline_parallel_size": ["-pp"]}


def _field_type(cls, field: dataclasses.Field):
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_engine_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    for part, cls in PARTS:
        group = parser.add_argument_group(f"engine: {part}")
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            flags = ["--" + f.name.replace("_", "-")] + _ALIASES.get(f.name, [])
            kind = _field_type(cls, f)
            help_text = f.metadata.get("help", "")
            if "default:" not in help_text:
                help_text = f"{help_text} (default: {f.default})".lstrip()
            if kind is bool:
                group.add_argument(*flags, action=argparse.BooleanOptionalAction,
                                   default=f.default, help=help_text)
            else:
                group.add_argument(*flags, type=kind, default=f.default, help=help_text,
                                   choices=f.metadata.get("choices"))


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for _, cls in PARTS for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}
