"""Mixed precision as a policy: which format each linear layer takes.

Objects: QuantPolicy (default method, per-pattern overrides, patterns kept 16-bit, int4
group size, the LM head's method; `spec_for(prefix)`: the layer's format spec, "none",
"int8", "fp8", "int8/G" or "int4/G"; `parse_spec`), ALWAYS_FULL_PRECISION (MoE routers: a
few KB that choose experts), HEAD (the LM head's name), `resolve_policy(QuantConfig,
ModelInfo, native)` (the command line's options over a policy file over the checkpoint's
own formats),
`load_policy_file(path)` / `policy_file_text(...)` (read and write the file format),
`check_patterns(policy, names, num_layers)` (refuse patterns that name no layer: run by
the worker once its model is built, the front end not knowing the layers' names).
No torch: the front end resolves the policy before any process starts, so a bad file or
pattern fails at once.

Layer names are Tessera's module prefixes: `model.layers.3.self_attn.qkv_proj`,
`model.layers.3.self_attn.o_proj`, `model.layers.3.mlp.gate_up_proj`,
`model.layers.3.mlp.down_proj` (q/k/v and gate/up are stacked, so they share a format).
Patterns are shell globs (fnmatch). Embeddings stay 16-bit. The LM head (`lm_head`) stays
16-bit unless asked by name: --lm-head-quantization KIND (over the file), or a file rule
whose pattern is exactly `lm_head` (the default method and the rules' wider globs such as
`*` never reach it: its rounding errors land on every logit, so it is a choice to
measure, e.g. with benchmarks/quant_accuracy.py's '+head' methods), or else a checkpoint
that holds it quantized in a format read as it is (its exact values: `exact` below); a
head asked for the kind the checkpoint holds it in (int8 over a GGUF's Q8_0 one) keeps
the checkpoint's format (`own_head`: int8/32) rather than being rounded a second time;
keep patterns reach it as they reach any layer. The file (YAML or JSON):

    quantization: int8            # the default for layers no rule names
    group_size: 128               # int4 only (optional; the command line's wins)
    layers:                       # first matching pattern wins
      model.layers.0.mlp.down_proj: none
      "model.layers.1.*": int8
      lm_head: int8               # the LM head only by its own name

The int4 group: --quantization-group-size, else the file's, else 32 for a GGUF checkpoint
(its 4-bit blocks: measured on Qwen2.5-Coder-1.5B, int4 in groups of 128 cost +5.6%
perplexity over the GGUF, in groups of 32 +0.8%), else 128.
Precedence: keep_full_precision patterns (and the routers) first, then the file's layer
rules, then the default: --quantization if given, else the file's `quantization`, else the
checkpoint's own format per layer (a GGUF's Q4_1 layers -> int4/32, an FP8 folder's ->
fp8: models/checkpoint_quant.py), else none. A GGUF keeps its formats only where kernels
run (`native`: on the CPU the PyTorch reference would dequantize every step, so a GGUF
is expanded to 16/32-bit there, unless asked otherwise); other quantized checkpoints
keep theirs everywhere. A layer whose checkpoint format differs from the one chosen is
dequantized and re-quantized at load.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
from typing import Any, Iterable, Optional

KINDS = ("none", "int8", "fp8", "int4")
ALWAYS_FULL_PRECISION = ("*.mlp.gate", "*.shared_expert_gate")
HEAD = "lm_head"
_LAYER_INDEX = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
    default: str = "none"
    rules: tuple[tuple[str, str], ...] = ()  # (pattern, kind), first match wins
    keep: tuple[str, ...] = ()  # patterns kept 16-bit
    group_size: int = 128

    exact: tuple[tuple[str, str], ...] = ()  # (prefix, spec): the checkpoint's own, last
    head: Optional[str] = None  # the LM head's kind, over a rule naming HEAD (None: none)
    own_head: Optional[str] = None  # the checkpoint's head spec, where it can be kept

    def spec_for(self, prefix: str) -> str:
        """The format spec of the linear layer named prefix (HEAD: the LM head)."""
        if any(fnmatch.fnmatchcase(prefix, p) for p in ALWAYS_FULL_PRECISION + self.keep):
            return "none"
        if prefix == HEAD:
            kind = self.head or dict(self.rules).get(HEAD)
            if kind and self.own_head and parse_spec(self.own_head)[0] == kind:
                return self.own_head  # asked what it is already: its values, not rounded again
            return self._spec(kind) if kind else dict(self.exact).get(HEAD, "none")
        for pattern, kind in self.rules:
            if fnmatch.fnmatchcase(prefix, pattern):
                return self._spec(kind)
        return dict(self.exact).get(prefix, self._spec(self.default))

    def _spec(self, kind: str) -> str:
        return f"int4/{self.group_size}" if kind == "int4" else kind

    @property
    def specs(self) -> set[str]:
        """Every format some layer may take."""
        return self.layer_specs | {self.spec_for(HEAD)}

    @property
    def layer_specs(self) -> set[str]:
        """Every format a linear layer other than the LM head may take."""
        return ({self._spec(self.default)} | {self._spec(k) for p, k in self.rules if p != HEAD}
                | {spec for p, spec in self.exact if p != HEAD})

    @property
    def quantized(self) -> bool:
        return self.specs != {"none"}

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """The patterns (kept 16-bit, or a layer rule) that name none of these layers."""
        names = list(names)
        layers = [n for n in names if n != HEAD]  # a rule reaches the head by its name only
        return ([p for p in self.keep if not any(fnmatch.fnmatchcase(n, p) for n in names)]
                + [p for p, _ in self.rules if not (p == HEAD and HEAD in names or any(
                    fnmatch.fnmatchcase(n, p) for n in layers))])


def check_patterns(policy: QuantPolicy, names: Iterable[str], num_layers: int) -> None:
    """ValueError naming each pattern of the policy that matches no linear layer of the
    model (a typo would otherwise leave a layer quantized that was meant to stay 16-bit).
    names: the layers a worker built; `model.layers.I.` names stand for every layer
    index below num_layers too (a pipeline stage builds only its own layers), and HEAD
    (the last stage's)."""
    names = set(names) | {HEAD}
    for name in list(names):
        m = _LAYER_INDEX.match(name)
        if m:
            names.update(f"{m[1]}{i}{m[3]}" for i in range(num_layers))
    missing = policy.unmatched(names)
    if missing:
        first = sorted(n for n in names if ".layers.0." in n) or sorted(names)
        examples = ", ".join(first[:4])
        raise ValueError(f"quantization policy: {', '.join(repr(p) for p in missing)} "
                         f"match{'es' if len(missing) == 1 else ''} no linear layer of this "
                         f"model (shell globs over Tessera's layer names, e.g. {examples})")


def parse_spec(spec: str) -> tuple[str, int]:
    """"int4/32" -> ("int4", 32); "int8" -> ("int8", 0): the kind and its group (0: per
    output channel)."""
    kind, _, group = spec.partition("/")
    return kind, int(group or 0)


def _check_kind(kind: Any, where: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"{where}: {kind!r} is not a quantization; choose one of "
                         f"{', '.join(KINDS)}.")
    return kind


def load_policy_file(path: str) -> dict[str, Any]:
    """The file's fields, checked: quantization, group_size, layers [(pattern, kind)]."""
    if not os.path.isfile(path):
        raise ValueError(f"quantization policy {path!r}: no such file.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - the parser's own message names the place
        raise ValueError(f"quantization policy {path!r} does not parse: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"quantization policy {path!r}: expected a mapping with "
                         f"'quantization' and 'layers'.")
    unknown = set(data) - {"quantization", "group_size", "layers", "measured"}
    if unknown:
        raise ValueError(f"quantization policy {path!r}: unknown field(s) "
                         f"{', '.join(sorted(unknown))}.")
    layers = data.get("layers") or {}
    if not isinstance(layers, dict):
        raise ValueError(f"quantization policy {path!r}: 'layers' must map patterns to "
                         f"methods.")
    rules = [(str(p), _check_kind(k, f"{path}: layer {p!r}")) for p, k in layers.items()]
    default = data.get("quantization")
    if default is not None:
        _check_kind(default, f"{path}: quantization")
    group = data.get("group_size")
    if group not in (None, 32, 64, 128):
        raise ValueError(f"{path}: group_size must be 32, 64 or 128, got {group!r}.")
    return {"quantization": default, "group_size": group, "layers": rules}


def resolve_policy(quant, info=None, native: bool = True) -> QuantPolicy:
    """The policy a QuantConfig (config.py) asks for, over a checkpoint whose ModelInfo
    (config.py) is info; native: whether quantized kernels run (see the module's doc)."""
    keep = tuple(p.strip() for p in (quant.keep_full_precision or "").split(",") if p.strip())
    rules, file_default, group = (), None, quant.quantization_group_size
    if quant.quantization_policy:
        data = load_policy_file(quant.quantization_policy)
        rules, file_default = tuple(data["layers"]), data["quantization"]
        group = group or data["group_size"]
    if group is None:  # a GGUF's 4-bit layers come in blocks of 32: a coarser group
        group = 32 if getattr(info, "kind", None) == "gguf" else 128  # rounds them again
    own: dict = {}  # the checkpoint's formats that can be kept as they are
    if info is not None and (native or info.quant_method != "gguf"):
        own = dict(info.quant_layers or {})
    exact = () if quant.quantization or file_default else tuple(sorted(own.items()))
    default = quant.quantization or file_default or "none"
    return QuantPolicy(default, rules, keep, group, exact, quant.lm_head_quantization,
                       own.get(HEAD))


def policy_file_text(default: str, layers: dict[str, str], group_size: int = 128,
                     measured: Optional[dict[str, Any]] = None) -> str:
    """A policy file (YAML) for these choices, with what was measured as a record."""
    import yaml
    data: dict[str, Any] = {"quantization": default}
    if default == "int4" or "int4" in layers.values():
        data["group_size"] = group_size
    data["layers"] = layers
    if measured:
        data["measured"] = measured
    return yaml.safe_dump(data, sort_keys=False)
