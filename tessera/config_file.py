"""`--config FILE.yaml`: a command's options from a YAML file, the command line winning.

`apply_config_file(parser, path)` reads a mapping of option names (as on the command line,
without the dashes: `max-num-seqs: 64`; underscores work too) to values, checks each
against the option it names (its type and choices; true/false for switches; a list, or one
value, for options that take several) and makes them the parser's defaults, so that an
option given on the command line wins. It returns the defaults it replaced (the server
logs what differs from them). Errors (ValueError) name the file and the key.

    # serve.yaml                      tessera serve --config serve.yaml --port 9000
    model: /models/Qwen2.5-Coder-1.5B
    served-model-name: [coder, qwen-coder]
    max-num-seqs: 64
    enable-prefix-caching: false
"""
from __future__ import annotations

import argparse
from typing import Any


def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of `tessera NAME`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    data = _read(path)
    actions = {a.dest: a for a in parser._actions
               if a.option_strings and a.dest not in ("help", "config")}
    values: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            raise ValueError(f"config file {path}: {key!r} is not an option of "
                             f"`{parser.prog}` (see {parser.prog} --help).")
        values[dest] = _convert(actions[dest], value, f"config file {path}: {key}")
    replaced = {dest: parser.get_default(dest) for dest in values}
    parser.set_defaults(**values)
    return replaced


def _read(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise FileNotFoundError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must map option names to values (got a "
                         f"{type(data).__name__}).")
    return data


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    if action.nargs == 0:  # a switch: --flag, --no-flag
        if not isinstance(value, bool):
            raise ValueError(f"{where} is a switch: give true or false, not {value!r}.")
        return value
    if value is None:
        return None
    several = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if not several:
        if isinstance(value, (list, dict)):
            raise ValueError(f"{where} takes one value, not {value!r}.")
        return _one(action, value, where)
    items = value if isinstance(value, list) else [value]
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise ValueError(f"{where} takes {action.nargs} values, not {value!r}.")
    if action.nargs == "+" and not items:
        raise ValueError(f"{where} takes at least one value.")
    return [_one(action, item, where) for item in items]


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)) or (isinstance(value, bool) and action.type is not None):
        kind = getattr(action.type, "__name__", "one value")
        raise ValueError(f"{where}: expected {kind}, got {value!r}.")
    text = str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid value {value!r} ({e}).") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: {value!r} is not one of "
                         f"{', '.join(map(str, action.choices))}.")
    return converted
