"""Grammar backends for constrained decoding (CPU, opt-in): xgrammar against llguidance.

On the default model's tokenizer (SmolLM2-135M's GGUF, exported once to a Hugging Face
folder) or --tokenizer PATH, per library: compiled % of --schemas (200) seeded random JSON
schemas (objects, required, additionalProperties, arrays with min/maxItems, enums, nesting,
strings with pattern / min/maxLength, integers and numbers with (exclusive) minimum / maximum,
booleans, null, anyOf); one seeded walk per compiled schema (fill the mask; if EOS is allowed
take it, and the matcher must terminate; else take a uniformly random allowed token; at most
--max-tokens, 300), judged by jsonschema (Draft 2020-12, formats on): valid, invalid,
unfinished (no EOS by the cap), stuck (empty mask, or an allowed token refused); the last
token is rolled back and must restore the mask before it. Speed: fresh compile (xgrammar's
cache off; llguidance's lexer is lazy: its first mask is listed apart), mask fill per token
(batch 1), and 64 matchers (the first 64 compiled schemas, restarting when they end) for
--batch-steps (100) steps, filled by the library's parallel call (--threads, default all
CPUs), then by a per-row loop. Probes: keywords outside the generator, 8 walks each. JSON is
compact (--any-whitespace: free whitespace, where walks linger). xgrammar's default
strict_mode forbids unlisted properties, which JSON Schema and llguidance allow (walks then
wander into random keys): --xgr-non-strict compares like with like. "xgrammar (tessera's)"
is Tessera's route (structured/xgrammar_backend.py): the schemas it takes xgrammar for,
its masks, which must give no invalid output.

    .venv/bin/python benchmarks/grammar_backends.py [--schemas 200] [--tokenizer PATH]
        [--batch-steps 100] [--threads N] [--seed 0] [--any-whitespace] [--xgr-non-strict]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

NAMES = ["id", "name", "age", "tags", "price", "email", "kind", "meta", "x", "y", "flag",
         "note", "code", "level", "owner", "size", "color", "items"]
PATTERNS = [r"^[a-z]{1,8}$", r"^[A-Z][a-z]{0,6}$", r"^[0-9]{3}-[0-9]{4}$", r"^(red|green|blue)$",
            r"^[a-f0-9]{4,8}$", r"^\d{2,4}$", r"^[a-z]{1,4}\.[a-z]{2,3}$", r"^[A-Z]{2}[0-9]{1,3}$",
            r"[a-z]{3}", r"^(ab)+$"]
ENUM_POOL = ["a", "b c", "xyz", "Q", 0, 1, 42, -7, True, False, None, "é"]
BOUNDS = [("minimum",), ("maximum",), ("minimum", "maximum"), ("exclusiveMinimum", "maximum"),
          ("exclusiveMinimum", "exclusiveMaximum")]
INT, BOOL, NULL = {"type": "integer"}, {"type": "boolean"}, {"type": "null"}
PROBES = {  # keywords outside the generator
    "not": {"not": {"type": "string"}}, "const": {"const": "fixed"},
    "uniqueItems": {"type": "array", "items": {"enum": [1, 2]}, "minItems": 2,
                    "uniqueItems": True},
    "multipleOf": INT | {"multipleOf": 7, "minimum": 0, "maximum": 1000},
    "oneOf": {"oneOf": [INT, BOOL]}, "allOf": {"allOf": [INT | {"minimum": 0}, {"maximum": 9}]},
    "$ref/$defs": {"$defs": {"d": INT | {"minimum": 0, "maximum": 9}}, "type": "array",
                   "items": {"$ref": "#/$defs/d"}},
    "patternProperties": {"type": "object", "patternProperties": {"^x[0-9]$": BOOL},
                          "additionalProperties": False},
    "minProperties": {"type": "object", "properties": {"a": NULL}, "minProperties": 1,
                      "additionalProperties": False},
    "prefixItems": {"type": "array", "prefixItems": [BOOL, NULL], "items": False},
    "format:date": {"type": "string", "format": "date"},
    "lookahead pattern": {"type": "string", "pattern": "^(?!ab)[a-z]{2}$"}}


def gen_schema(r: random.Random, d: int = 0) -> dict:
    """A seeded random schema (an object at the top three times in four)."""
    kind = "object" if d == 0 and r.random() < 0.75 else r.choice(
        ["string", "pattern", "integer", "number", "boolean", "null", "enum"]
        + ["object", "array", "anyOf"] * (d < 3))
    if kind in ("boolean", "null"):
        return {"type": kind}
    if kind == "pattern":
        return {"type": "string", "pattern": r.choice(PATTERNS)}
    if kind == "enum":
        return {"enum": r.sample(ENUM_POOL, r.randint(1, 5))}
    if kind == "anyOf":
        return {"anyOf": [gen_schema(r, d + 1) for _ in range(r.randint(2, 3))]}
    if kind == "object":
        names = r.sample(NAMES, r.randint(1, 4))
        s = {"type": "object", "properties": {n: gen_schema(r, d + 1) for n in names},
             "required": [n for n in names if r.random() < 0.6]}
        return s | ({"additionalProperties": False} if r.random() < 0.5 else {})
    if kind in ("integer", "number"):
        lo = r.randint(-100, 100) if kind == "integer" else round(r.uniform(-100, 100), 2)
        hi = lo + r.randint(2, 300) if kind == "integer" else round(lo + r.uniform(.5, 300), 2)
        return {"type": kind} | {k: lo if "inimum" in k else hi for k in r.choice(BOUNDS)}
    string = kind == "string"
    s = {"type": "string"} if string else {"type": "array", "items": gen_schema(r, d + 1)}
    lo = r.randint(0, 3 if string else 2) if r.random() < 0.5 else 0
    if lo:
        s["minLength" if string else "minItems"] = lo
    if r.random() < (0.75 if string else 0.6):
        s["maxLength" if string else "maxItems"] = lo + r.randint(0, 10 if string else 3)
    return s


class Xgr:
    name = "xgrammar"

    def __init__(self, tok, vocab, args):
        import xgrammar as xgr
        ws, self.x = args.any_whitespace, xgr
        self.opts = {"any_whitespace": ws, "strict_mode": not args.xgr_non_strict} | (
            {} if ws else {"separators": (",", ":")})
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        self.comp = xgr.GrammarCompiler(info, max_threads=args.threads, cache_enabled=False)
        batcher, pieces = xgr.BatchGrammarMatcher(max_threads=args.threads), info.decoded_vocab
        self.fill = lambda m, bm, i=0: m.fill_next_token_bitmask(bm, i)
        self.fill_par = lambda ms, bm: batcher.batch_fill_next_token_bitmask(ms, bm)
        self.accept = lambda m, t: m.accept_token(t)
        self.ended = lambda m: m.is_terminated()
        self.decode = lambda ids: b"".join(pieces[i] for i in ids)

    def compile(self, schema):
        return self.x.GrammarMatcher(self.comp.compile_json_schema(json.dumps(schema),
                                                                   **self.opts))


class XgrTessera(Xgr):
    """Tessera's xgrammar path (structured/xgrammar_backend.py): only the schemas `fits`
    admits (the others are llguidance's: counted here as not compiled), the bounded
    strings' character class fixed, compact JSON."""
    name = "xgrammar (tessera's)"

    def __init__(self, tok, vocab, args):
        super().__init__(tok, vocab, args)
        from tessera.structured.xgrammar_backend import XGrammarCompiler
        self.tessera = XGrammarCompiler(tok, vocab, [tok.eos_token_id], args.threads)

    def compile(self, schema):
        from tessera.structured.xgrammar_backend import fits
        if not fits(schema):
            raise ValueError("not taken: llguidance serves it")
        return self.x.GrammarMatcher(self.tessera._compile(schema))


class Llg:
    name = "llguidance"

    def __init__(self, tok, vocab, args):
        import llguidance
        import llguidance.hf
        import llguidance.numpy as lnp
        self.M, self.ws, self.warnings = llguidance.LLMatcher, args.any_whitespace, Counter()
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
        ex = llguidance.LLExecutor(num_threads=args.threads)
        self.fill = lambda m, bm, i=0: lnp.fill_next_token_bitmask(m, bm, i)
        self.fill_par = lambda ms, bm: lnp.fill_next_token_bitmask_par(
            ex, list(zip(ms, range(len(ms)))), bm)
        self.accept = lambda m, t: m.consume_token(t)
        self.ended = lambda m: m.is_stopped() and not m.is_error()
        self.decode = self.tok.decode_bytes

    def compile(self, schema):
        g = self.M.grammar_from_json_schema(json.dumps(schema),
                                           overrides={"whitespace_flexible": self.ws})
        m = self.M(self.tok, g, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        self.warnings.update(w[:90] for w in m.get_grammar_warnings())
        return m


def allowed(row, vocab):
    return np.unpackbits(row.view(np.uint8), bitorder="little")[:vocab].nonzero()[0]


def walk(be, m, rng, ctx, cap, times):
    """One random walk: (status, token ids, rollback ok). Fill times (us) go to `times`."""
    vocab, eos = ctx["vocab"], ctx["eos"]
    bm, prev, toks, rb_ok = np.zeros((1, (vocab + 31) // 32), np.int32), None, [], None
    for _ in range(cap + 1):
        t0 = time.perf_counter_ns()
        be.fill(m, bm)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        ids = allowed(bm[0], vocab)
        if toks and (eos in ids or len(toks) == cap):  # roll the last token back and redo it
            mask, _ = bm.copy(), m.rollback(1)
            be.fill(m, bm)
            rb_ok = bool((bm == prev).all()) and be.accept(m, toks[-1])
            be.fill(m, bm)
            rb_ok = rb_ok and bool((bm == mask).all())
        if eos in ids:
            return ("done" if be.accept(m, eos) and be.ended(m) else "stuck"), toks, rb_ok
        if len(ids) == 0 or len(toks) == cap:
            return ("stuck" if len(ids) == 0 else "unfinished"), toks, rb_ok
        prev, t = bm.copy(), int(ids[rng.randrange(len(ids))])
        if not be.accept(m, t):
            return "stuck", toks, rb_ok
        toks.append(t)


def coverage(be, schemas, args, ctx):
    r = {"ok": [], "compile_ms": [], "mask_us": [], "first_us": [], "outcomes": Counter(),
         "errors": Counter(), "examples": [], "rollback_bad": 0}
    for i, s in enumerate(schemas):
        t0 = time.perf_counter()
        try:
            m = be.compile(s)
        except Exception as e:  # noqa: BLE001  (either library's compile error)
            r["errors"][str(e).strip().splitlines()[-1][:90]] += 1
            continue
        r["compile_ms"].append((time.perf_counter() - t0) * 1e3)
        times, why = [], None
        st, toks, rb = walk(be, m, random.Random(args.seed * 100003 + i), ctx,
                            args.max_tokens, times)
        ctx["special_hits"][be.name] += bool(set(toks) & ctx["special"])
        raw = be.decode(toks)
        try:
            if st == "done":
                v = Draft202012Validator(s, format_checker=Draft202012Validator.FORMAT_CHECKER)
                err = best_match(v.iter_errors(json.loads(raw.decode("utf-8"))))
                why = None if err is None else str(err.validator)
        except ValueError as e:  # UnicodeDecodeError, JSONDecodeError
            why = type(e).__name__
        out = st if st != "done" else "valid" if why is None else "invalid:" + why
        r["ok"].append(i), r["first_us"].append(times[0]), r["mask_us"].extend(times)
        r["outcomes"][out] += 1
        r["rollback_bad"] += rb is False
        if out.startswith("invalid") and len(r["examples"]) < args.examples:
            r["examples"].append(f"  {out}: schema {json.dumps(s)[:240]}\n    text {raw[:160]!r}")
    return r


def batch(be, schemas, ok, args, ctx, par):
    """Per-step fill times (us) of 64 matchers walked together."""
    vocab, eos = ctx["vocab"], ctx["eos"]
    ms = [be.compile(schemas[ok[i % len(ok)]]) for i in range(64)]
    bm = np.zeros((64, (vocab + 31) // 32), np.int32)
    rng, lens, times = random.Random(args.seed), [0] * 64, []
    for _ in range(args.batch_steps):
        t0 = time.perf_counter_ns()
        be.fill_par(ms, bm) if par else [be.fill(m, bm, i) for i, m in enumerate(ms)]
        times.append((time.perf_counter_ns() - t0) / 1e3)
        for i, m in enumerate(ms):
            ids = allowed(bm[i], vocab)
            t = int(ids[rng.randrange(len(ids))]) if len(ids) else -1
            if eos in ids or t < 0 or lens[i] >= args.max_tokens or not be.accept(m, t):
                m.reset()
            lens[i] = 0 if eos in ids or t < 0 or lens[i] >= args.max_tokens else lens[i] + 1
    return times


def mp(xs, fmt):  # median / p95
    return " / ".join(f"{np.percentile(xs, p):{fmt}}" if len(xs) else "-" for p in (50, 95))


def load_tokenizer(path):
    from transformers import AutoTokenizer
    if path is None:
        from tessera.default_model import default_model_path
        path = default_model_path()
    if path.endswith(".gguf"):  # the folder tessera exports once (frontend/gguf_tokenizer.py)
        from tessera.frontend.gguf_tokenizer import exported_tokenizer_dir
        path = exported_tokenizer_dir(path)
    return AutoTokenizer.from_pretrained(path), path


def probes(backends, args, ctx):
    print("\nprobes (valid/invalid/unfinished/stuck of 8 walks, or the compile error):")
    for label, spec in PROBES.items():
        cells = []
        for be in backends:
            r = coverage(be, [spec] * 8, args, ctx)
            o, bad = r["outcomes"], [k for k in r["outcomes"] if k.startswith("invalid")]
            cells.append(f"rejected: {next(iter(r['errors']))[:60]}" if r["errors"] else
                         f"{o['valid']}/{sum(o[k] for k in bad)}/{o['unfinished']}/{o['stuck']}"
                         + "".join(" " + b for b in bad))
        print(f"  {label:18} | " + " | ".join(f"{b.name}: {c}" for b, c in zip(backends, cells)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer folder or .gguf")
    for flag, default in (("--schemas", 200), ("--max-tokens", 300), ("--batch-steps", 100),
                          ("--threads", os.cpu_count()), ("--seed", 0), ("--examples", 3)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--any-whitespace", action="store_true")
    ap.add_argument("--xgr-non-strict", action="store_true", help="strict_mode=False")
    args = ap.parse_args()
    tok, path = load_tokenizer(args.tokenizer)
    ctx = {"vocab": len(tok), "eos": tok.eos_token_id, "special_hits": Counter(),
           "special": set(tok.all_special_ids) - {tok.eos_token_id}}
    rng = random.Random(args.seed)
    schemas = [gen_schema(rng) for _ in range(args.schemas)]
    [Draft202012Validator.check_schema(s) for s in schemas]
    print(f"tokenizer {path} (vocab {len(tok)}, eos {ctx['eos']}); {len(schemas)} schemas, "
          f"seed {args.seed}, {'free' if args.any_whitespace else 'compact'} JSON, "
          f"{args.threads} threads, xgrammar strict_mode={not args.xgr_non_strict}")
    rows, backends = [], []
    for cls in (Xgr, XgrTessera, Llg):
        t0 = time.perf_counter()
        backends.append(be := cls(tok, len(tok), args))
        print(f"\n== {be.name}: tokenizer set-up {time.perf_counter() - t0:.2f} s")
        r = coverage(be, schemas, args, ctx)
        par, loop = ([], []) if not r["ok"] else (batch(be, schemas, r["ok"], args, ctx, True),
                                                   batch(be, schemas, r["ok"], args, ctx, False))
        o, n = r["outcomes"], max(len(r["ok"]), 1)
        rows.append((be.name, f"{100 * len(r['ok']) / len(schemas):.1f}",
                     f"{100 * o['valid'] / n:.1f}",
                     str(sum(v for k, v in o.items() if k.startswith("invalid"))),
                     str(o["unfinished"]), str(o["stuck"]), mp(r["compile_ms"], ".2f"),
                     mp(r["mask_us"], ".1f"), mp(r["first_us"], ".0f"),
                     f"{mp(par, '.0f')} ({mp(loop, '.0f')})"))
        print(f"compile errors: {dict(r['errors']) or 'none'}\noutcomes: {dict(o)}; masks "
              f"timed: {len(r['mask_us'])}; rollback mismatches: {r['rollback_bad']}; walks "
              f"with special tokens (not EOS): {ctx['special_hits'][be.name]}")
        print(f"grammar warnings: {dict(be.warnings)}" if getattr(be, "warnings", None) else "",
              *r["examples"], sep="\n")
    probes(backends, args, ctx)
    head = ("library", "compiled %", "valid %", "invalid", "unfinished", "stuck",
            "compile ms med / p95", "mask us med / p95 (batch 1)", "1st mask us med / p95",
            "batch-64 fill us/step med / p95: par (loop)")
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
