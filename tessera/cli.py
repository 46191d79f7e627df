"""`tessera` command line: generate, serve, bench, plan, distill, and chat / complete
(clients of a server).

Engine options are generated from the fields of the config dataclasses (cli_args.py: one
place defines an option, its type, its default and its help), e.g.
`--max-num-batched-tokens 512`. Subcommands import what they run only when run.

    tessera generate "Once upon a time" --max-tokens 32
    tessera generate --chat "What is the capital of France?"
    tessera serve [MODEL] --port 8000
    tessera bench latency --model llama-3-8b --load-format dummy --batch-size 1
    tessera chat --url http://127.0.0.1:8000/v1
    tessera serve --config serve.yaml      (config_file.py: the command line wins)
    tessera quant-sensitivity MODEL --data text.txt --method int4 --budget 2 --out policy.yaml
    tessera distill --teacher T --student-layers 8 --data FILES --steps N --out DIR
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional

from tessera import __version__
from tessera.cli_args import add_engine_args, engine_kwargs
from tessera.config_file import apply_config_file, subcommand_parser
from tessera.logs import LEVELS, setup_logging


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)


def _generate(args: argparse.Namespace) -> int:
    from tessera.llm import LLM

    llm = LLM(**engine_kwargs(args))
    params = llm.engine.default_sampling_params()
    changes: dict[str, Any] = {"max_tokens": args.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.chat and "temperature" not in changes and "temperature" not in llm.engine.generation_defaults:
        changes["temperature"] = 0.0  # a one-shot answer: greedy unless asked otherwise
    params = params.clone(**changes)
    if args.chat:
        out = llm.chat([{"role": "user", "content": args.prompt}], params)[0]
    else:
        out = llm.generate(args.prompt, params)[0]
    print(out.outputs[0].text)
    return 0


def _quant_sensitivity(args: argparse.Namespace) -> int:
    from tessera.quant.sensitivity import run
    return run(args)


def _add_quant_sensitivity_parser(sub, parents: list) -> None:
    p = sub.add_parser("quant-sensitivity", parents=parents,
                       help="rank linear layers by the perplexity one costs when quantized "
                            "and write a policy keeping the worst 16-bit")
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help="HF folder or .gguf file (default: SmolLM2-135M-Instruct)")
    g = p.add_argument_group("sensitivity")
    g.add_argument("--data", required=True, metavar="FILE",
                   help="text the perplexity is measured on")
    g.add_argument("--method", choices=("int8", "fp8", "fp8a8", "int4"), default="int8",
                   help="the format the other layers take (default: int8); fp8a8: fp8 "
                        "measured as W8A8 runs it (each fp8 layer's input quantized per "
                        "token, as GPUs of compute capability 8.9+ do for prompts); the "
                        "policy is fp8's")
    g.add_argument("--group-size", type=int, choices=(32, 64, 128), default=None,
                   help="int4's group (default: the largest of 128, 64, 32 dividing every layer)")
    g.add_argument("--tokens", type=int, default=1024,
                   help="tokens of the data to measure on (default: 1024)")
    g.add_argument("--window", type=int, default=512,
                   help="tokens per scored window; each window's first is unscored (default: 512)")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--budget", type=float, default=None, metavar="PCT",
                       help="keep as few layers 16-bit as leave the predicted perplexity "
                            "increase within PCT %% (default: 1)")
    which.add_argument("--keep", type=int, default=None, metavar="N",
                       help="keep the N most sensitive layers 16-bit")
    g.add_argument("--lm-head", action="store_true",
                   help="measure the LM head too, as a candidate like any layer (the policy "
                        "quantizes it where the budget allows; default: it stays 16-bit)")
    g.add_argument("--out", required=True, metavar="POLICY.yaml", help="the policy file to write")
    add_engine_args(p, skip=("model", "quantization", "keep_full_precision",
                             "lm_head_quantization", "quantization_policy",
                             "quantization_group_size",
                             "quantization_calibration", "calibration_tokens",
                             "distributed_executor_backend", "enforce_eager",
                             "skip_tokenizer_init", "enable_prefix_caching"))
    p.set_defaults(func=_quant_sensitivity)


def build_parser() -> argparse.ArgumentParser:
    from tessera.bench.cli import add_bench_parser
    from tessera.client_cli import add_client_parsers
    from tessera.server.serve import add_serve_parser

    parser = argparse.ArgumentParser(prog="tessera", description="LLM inference engine and server")
    parser.add_argument("--version", action="version", version=f"tessera {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LEVELS, default="info",
                        help="how much to log (default: info; debug adds tracebacks)")
    common.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="options from a YAML file (`max-num-seqs: 64`, one per line); "
                             "the command line wins (default: none)")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="complete one prompt and print the text",
                         parents=[common])
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    _sampling_args(gen)
    add_engine_args(gen)
    gen.set_defaults(func=_generate)
    add_serve_parser(sub, [common])
    add_bench_parser(sub, [common])
    add_client_parsers(sub, [common])
    _add_quant_sensitivity_parser(sub, [common])
    from tessera.planner.plan import add_plan_parser
    add_plan_parser(sub, [common])
    from tessera.distill.cli import add_distill_parser
    add_distill_parser(sub, [common])
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, over a --config file's values (which become the defaults)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        replaced = apply_config_file(subcommand_parser(parser, args.command), args.config)
        args = parser.parse_args(argv)
        args.replaced_defaults = replaced
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """Exit codes: 0 done; 2 bad options or inputs (found before anything starts: one
    `tessera: error:` line); 1 a start or run that failed (one such line; the traceback at
    --log-level debug); 130 interrupted (Ctrl-C)."""
    try:
        args = parse_args(argv)
    except (ValueError, FileNotFoundError) as e:
        return _error(e, 2)
    setup_logging(args.log_level, "api" if args.command == "serve" else "cli")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        return _error(e, 2)
    except (RuntimeError, OSError) as e:
        return _error(e, 1)
    except KeyboardInterrupt:
        print("tessera: interrupted", file=sys.stderr)
        return 130


def _error(e: Exception, code: int) -> int:
    logging.getLogger("tessera").debug("the error in full", exc_info=e)
    print(f"tessera: error: {e}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
