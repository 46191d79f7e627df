"""Per-layer quantization sensitivity: which linear layers to keep 16-bit, as a policy file.

Objects: LayerDelta (a layer's perplexity with it alone quantized, and the increase in %),
Sensitivity (the baseline, the method, every layer's delta, the layers kept, the predicted
and measured cost of the policy), `engine_parts(llm)` (the model and layer context of an
in-process LLM), `linear_layers(model)`, `auto_group(layers)`, `choose_kept(deltas, keep,
budget)`, `measure(llm, windows, kind, group_size)`, `policy_text(result)`, `report(result)`,
and `run(args)` (`tessera
quant-sensitivity`, wired in cli.py).

Flow of `run`: build the model once, dense (LLM with quantization "none", the uni
executor: the model lives in this process), read and tokenize the data file, cut
--tokens tokens of it into windows (quant/perplexity.py: pooled perplexity from prompt
logprobs, the first token of each window unscored) and measure the baseline; then for
each linear layer (layers/linear.py; embeddings and MoE routers are never quantized by a
policy, so they are not candidates, and the LM head is one only with --lm-head: a policy
quantizes it by name alone, quant_policy.py) quantize only that layer in place
(quant/convert.py), measure, and restore it. Layers are ranked by the increase; the most
sensitive are kept 16-bit: --keep N of them, or (--budget PCT) as few as leave the
predicted cost within PCT %, the predicted cost of quantizing a set being the sum of its
layers' increases (a layer whose increase came out negative, noise, counts 0). Last, the
chosen policy itself is measured (all its layers quantized at once). The file is
quant_policy.py's format: `quantization: METHOD`, `layers: {LAYER: none}` for the kept
ones (and `lm_head: METHOD` where the head was a candidate and is not kept), and
`measured:` with the baseline, the predicted and measured cost and each layer's
increase (a record; loading ignores it). Load it with `--quantization-policy FILE`.
--method fp8a8 measures fp8 as W8A8 computes (quant/quantized.py's EMULATE_W8A8: each
fp8 layer's input quantized per token) and writes an fp8 policy.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import time
from typing import Callable, Optional, Sequence

from torch import nn

from tessera.quant.perplexity import Perplexity, perplexity, read_windows
from tessera.quant_policy import ALWAYS_FULL_PRECISION, HEAD, policy_file_text

logger = logging.getLogger(__name__)
GROUPS = (128, 64, 32)


@dataclasses.dataclass
class LayerDelta:
    name: str
    ppl: float
    increase_pct: float


@dataclasses.dataclass
class Sensitivity:
    method: str
    group_size: int  # int4's; 0 for the per-channel formats
    baseline: Perplexity
    deltas: list[LayerDelta]  # most sensitive first
    kept: list[str]  # layers the policy keeps 16-bit
    predicted_pct: float  # the summed increases of the layers it quantizes
    policy_ppl: Optional[float] = None  # measured with the policy applied
    seconds: float = 0.0
    head: bool = False  # the LM head was a candidate

    @property
    def policy_increase_pct(self) -> Optional[float]:
        if self.policy_ppl is None:
            return None
        return (self.policy_ppl / self.baseline.ppl - 1.0) * 100.0


def engine_parts(llm):
    """(model, layer context) of an LLM whose engine runs in this process, on one rank."""
    runner = getattr(llm.engine.executor, "runner", None)
    if runner is None:
        raise ValueError("quantization sensitivity needs the model in this process: one rank "
                         "with the uni executor (--distributed-executor-backend uni).")
    return runner.model, runner.context


def linear_layers(model: nn.Module) -> list[nn.Module]:
    """The linear layers a policy may quantize, in model order."""
    from tessera.layers.linear import LinearBase
    return [m for m in model.modules() if isinstance(m, LinearBase)
            and not any(fnmatch.fnmatchcase(m.prefix, p) for p in ALWAYS_FULL_PRECISION)]


def auto_group(layers: Sequence[nn.Module]) -> int:
    """The largest int4 group size of 128 / 64 / 32 that divides every layer's input."""
    for group in GROUPS:
        if all(layer.in_features % group == 0 for layer in layers):
            return group
    sizes = sorted({layer.in_features for layer in layers})
    raise ValueError(f"no int4 group size of {GROUPS} divides the layers' input sizes {sizes}.")


def choose_kept(deltas: Sequence[LayerDelta], keep: Optional[int],
                budget: Optional[float]) -> tuple[list[str], float]:
    """(layers kept 16-bit, predicted cost % of quantizing the rest): the `keep` most
    sensitive, or the fewest most sensitive that bring the predicted cost within budget."""
    ranked = sorted(deltas, key=lambda d: -d.increase_pct)
    costs = [max(d.increase_pct, 0.0) for d in ranked]
    if keep is not None:
        count = min(keep, len(ranked))
    else:
        count = 0
        while count < len(ranked) and sum(costs[count:]) > budget:
            count += 1
    return [d.name for d in ranked[:count]], sum(costs[count:])


def measure(llm, windows: Sequence[Sequence[int]], kind: str, group_size: Optional[int] = None,
            keep: Optional[int] = None, budget: Optional[float] = 1.0,
            progress: Optional[Callable[[int, int, LayerDelta], None]] = None,
            lm_head: bool = False) -> Sensitivity:
    """Every linear layer's perplexity increase when it alone is quantized to kind (with
    lm_head, the LM head's too), the policy chosen from them (keep / budget: choose_kept)
    and its measured perplexity. group_size: int4's (None: auto_group); restores the
    model before returning."""
    from tessera.quant.convert import quantized_layers, quantized_method
    start = time.perf_counter()
    model, context = engine_parts(llm)
    layers = linear_layers(model) + ([model.lm_head] if lm_head else [])
    if not layers:
        raise ValueError("the model has no linear layer to quantize.")
    group = (group_size or auto_group(layers)) if kind == "int4" else 0
    method = quantized_method(context, kind, group)
    baseline = perplexity(llm, windows)
    deltas = []
    for i, layer in enumerate(layers):
        with quantized_layers([layer], method):
            got = perplexity(llm, windows)
        deltas.append(LayerDelta(layer.prefix, got.ppl, got.increase_pct(baseline)))
        if progress is not None:
            progress(i + 1, len(layers), deltas[-1])
    deltas.sort(key=lambda d: -d.increase_pct)
    kept, predicted = choose_kept(deltas, keep, budget)
    with quantized_layers([m for m in layers if m.prefix not in kept], method):
        policy_ppl = perplexity(llm, windows).ppl
    return Sensitivity(kind, group, baseline, deltas, kept, predicted, policy_ppl,
                       time.perf_counter() - start, lm_head)


def policy_text(result: Sensitivity, data: str = "") -> str:
    """The policy file (quant_policy.py's format) for result."""
    measured = {"data": data, "scored_tokens": result.baseline.tokens,
                "baseline_perplexity": round(result.baseline.ppl, 6),
                "predicted_increase_pct": round(result.predicted_pct, 4),
                "policy_perplexity": (None if result.policy_ppl is None
                                      else round(result.policy_ppl, 6)),
                "policy_increase_pct": (None if result.policy_increase_pct is None
                                        else round(result.policy_increase_pct, 4)),
                "increase_pct": {d.name: round(d.increase_pct, 4) for d in result.deltas}}
    layers = {name: "none" for name in result.kept}
    if result.head and HEAD not in layers:  # the head is quantized only by its name
        layers[HEAD] = result.method
    return policy_file_text(result.method, layers, result.group_size or 128, measured)


def report(result: Sensitivity) -> str:
    """The layers ranked, most sensitive first, and the policy's cost."""
    group = f" (group {result.group_size})" if result.group_size else ""
    lines = [f"baseline perplexity {result.baseline.ppl:.4f} over {result.baseline.tokens} "
             f"tokens; {result.method}{group}, one layer at a time:",
             f"{'rank':>4}  {'layer':<44} {'ppl':>10} {'increase %':>11}  policy"]
    kept = set(result.kept)
    for i, d in enumerate(result.deltas, 1):
        lines.append(f"{i:>4}  {d.name:<44} {d.ppl:>10.4f} {d.increase_pct:>+11.4f}  "
                     f"{'keep 16-bit' if d.name in kept else result.method}")
    lines.append(f"kept 16-bit: {len(kept)} of {len(result.deltas)} layers; predicted "
                 f"increase {result.predicted_pct:.3f}%, measured "
                 f"{result.policy_increase_pct:+.3f}% (perplexity {result.policy_ppl:.4f}); "
                 f"{result.seconds:.0f} s")
    return "\n".join(lines)


def run(args) -> int:
    """`tessera quant-sensitivity`: measure, print the ranking, write the policy file."""
    from tessera.cli_args import engine_kwargs
    from tessera.llm import LLM
    if args.keep is not None and args.keep < 0:
        raise ValueError(f"--keep must be >= 0, got {args.keep}.")
    if args.budget is not None and args.budget < 0:
        raise ValueError(f"--budget must be >= 0, got {args.budget}.")
    if min(args.tokens, args.window) < 2:
        raise ValueError(f"--tokens and --window must be at least 2, got {args.tokens} and "
                         f"{args.window}.")
    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"data file {args.data!r}: no such file.")
    kwargs = {**engine_kwargs(args), "model": args.model_tag, "quantization": "none",
              "distributed_executor_backend": "uni", "enable_prefix_caching": False,
              "enforce_eager": True}
    if kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1) > 1:
        raise ValueError("quant-sensitivity runs the model on one rank (no -tp / -pp).")
    try:
        llm = LLM(**kwargs)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"cannot load {args.model_tag!r}: {e}") from None
    windows = read_windows(llm.get_tokenizer(), args.data, args.tokens, args.window)
    budget = None if args.keep is not None else (1.0 if args.budget is None else args.budget)

    def progress(i: int, n: int, d: LayerDelta) -> None:
        logger.info("%d/%d %s: %+.4f%%", i, n, d.name, d.increase_pct)

    from tessera.quant import quantized
    w8a8 = args.method == "fp8a8"  # fp8 weights, inputs quantized as W8A8 quantizes them
    quantized.EMULATE_W8A8 = 0 if w8a8 else None
    try:
        result = measure(llm, windows, "fp8" if w8a8 else args.method, args.group_size,
                         args.keep, budget, progress, args.lm_head)
    finally:
        quantized.EMULATE_W8A8 = None
    print(report(result))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(policy_text(result, os.path.abspath(args.data)))
    print(f"wrote {args.out}: load it with --quantization-policy {args.out}")
    return 0
