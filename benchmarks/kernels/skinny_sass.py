"""The skinny decode GEMM (kernels/skinny_gemm.py) compiled for a GPU on a machine without
one: what its K loop costs in instructions, read from the SASS. No device time needed.

Triton compiles for a `GPUTarget` (default sm_90) with the ptxas and nvdisasm its wheel
carries; the pointer and integer arguments get the 16-divisibility hints the launcher
gives real ones (K, N and the strides of the Llama shapes are multiples of 16), so the
loads vectorize as they do on the GPU. Printed per variant: the shared memory a program
takes, the W loads (LDG) issued before the PDL wait (ACQBULK, griddepcontrol.wait), the
K loop's instructions (the SASS between the loop's label and its back branch, the
software pipeline's steady state) per weight a thread reads, and their mix.
Kinds: dense (bf16), int8, fp8 (widened to bf16), int4 (groups of 128), a8 (an fp8 W
times x quantized to fp8 in the kernel: kernels/skinny_a8.py), each in its launcher's
tiles unless the options set them (TILES).

    python benchmarks/kernels/skinny_sass.py --kinds dense,int8,fp8 --preload 0,1
    python benchmarks/kernels/skinny_sass.py --kinds fp8,a8,int4 --preload 0
    python benchmarks/kernels/skinny_sass.py --kinds int8 --block-k 512 --stages 3
    python benchmarks/kernels/skinny_sass.py --kinds dense,int8,fp8x16 --block-m 8
    python benchmarks/kernels/skinny_sass.py --kinds int8,fp8 --block-m 8 --warps 4 --slices
    python benchmarks/kernels/skinny_sass.py --kinds int4 --block-m 8 --warps 4 --slices --on-acc
(--json: one object a variant; tests/kernels/test_skinny_sass.py reads those.)

The compiler here may not be the GPU machine's (Triton 3.9 on the CPU machines, 3.6 on
the H200): a guide to where the instructions go, not a measurement of speed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile

# compiled, not interpreted: @triton.jit reads this when the kernels' modules are imported
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from tessera.kernels.skinny_gemm import _skinny_gemm  # noqa: E402

# a8: an fp8 W times x quantized to fp8 in the kernel (kernels/skinny_a8.py)
W_TYPES = {"dense": "*bf16", "int8": "*i8", "fp8": "*fp8e4nv", "int4": "*u8", "a8": "*fp8e4nv",
           "int8x16": "*i8", "fp8x16": "*fp8e4nv"}
# x16: an int8 / fp8 W times x made fp16 in the kernel (skinny_gemm.FP16_X)
X16_KINDS = {"int8x16": "int8", "fp8x16": "fp8"}
GROUPS = {"int4": 128}  # the kinds in groups: int4 g128, as quantized at load
# (block_n, block_k, warps) where the options leave them: the launchers' own for quantized
# W (skinny_config.quant_config, a8_config); 32 x 256 on 2 warps for a dense W
TILES = {"int4": (32, 512, 2), "a8": (64, 256, 4)}
INTS = {"M", "N", "K", "stride_xm", "stride_ym", "stride_kvs", "num_parts", "K_PER"}
DIVISIBLE = {"N", "K", "stride_xm", "stride_ym", "K_PER"}


def compile_variant(kind: str, preload: bool, block_n: int, block_k: int, warps: int,
                    stages: int, arch: int, block_m: int = 16, slices: int = 1,
                    on_acc: bool = False):
    """The plain product (no bias, norm or epilogue) of a bf16 x and a `kind` W, PDL on;
    slices > 1: K sliced among that many warps (a per-row W: SkinnyConfig.slices)."""
    names = list(_skinny_gemm.arg_names)
    const = dict(KIND={"dense": "", "a8": "fp8", **X16_KINDS}.get(kind, kind),
                 GROUP=GROUPS.get(kind, 0), FAST=kind != "dense", A8=kind == "a8",
                 X16=kind in X16_KINDS, XQ_ROWS=1, PREP_K=2048,
                 XQ_ONE_PASS=True,  # a8, x16: the columns of a program fit one prep step
                 HAS_BIAS=False, GATED=False, ROPE=False, NORM_IN=False, NORM_OUT=False,
                 PART_BLOCK=1, NUM_Q=0, NUM_KV=0, HALF=0, FP8_CACHE=False, PRE_ROUND=False,
                 EVEN=True, PRECISION="tf32", BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                 PREFETCH_K=max(block_k, 128), LINE=128 // (2 if kind == "dense" else 1),
                 TRIGGER_STEPS=2, USE_PDL=True, SPLIT=1, HALVES=False, PRELOAD=preload,
                 SLICES=slices, ON_ACC=on_acc)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if name in const:
            signature[name] = "constexpr"
            constexprs[(i,)] = const[name]
        elif name in INTS:
            signature[name] = "i32"
        elif name == "eps":
            signature[name] = "fp32"
        else:  # a pointer: W's type, the index and counter tensors', else bf16 / fp32
            signature[name] = (W_TYPES[kind] if name == "w_ptr" else
                               ("*fp16" if kind in X16_KINDS else "*fp8e4nv")
                               if name == "xq_ptr" else
                               "*i64" if name in ("pos_ptr", "slot_ptr") else
                               "*i32" if name == "count_ptr" else
                               "*fp32" if name in ("part_ptr", "scale_ptr", "offset_ptr",
                                                   "work_ptr") else "*bf16")
        if signature[name].startswith("*") or name in DIVISIBLE:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=_skinny_gemm, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages})


def sass(kernel) -> list[str]:
    """The kernel's SASS lines (nvdisasm from Triton's wheel)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([tool, "-c", f.name], capture_output=True, text=True,
                              check=True).stdout.splitlines()


def opcode(line: str) -> str:
    """"/*0420*/ @P3 LDG.E.128 R24, ..." -> "LDG" ("" for labels and blank lines)."""
    m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T\d]\s+)?([A-Z0-9_]+)", line)
    return m.group(1) if m else ""


def loop_body(lines: list[str]) -> list[str]:
    """The opcodes of the K loop: the longest stretch from a label to a branch back to it
    with an MMA in it (a8's prep loops have none)."""
    best: list[str] = []
    labels = {m.group(1): i for i, line in enumerate(lines)
              if (m := re.match(r"\s*(\.L_x_\d+):", line))}
    for i, line in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            body = [op for op in map(opcode, lines[labels[m.group(1)]:i + 1]) if op]
            if any(op.endswith("MMA") for op in body):
                best = max(best, body, key=len)
    return best


def tiles(kind: str, args: argparse.Namespace) -> tuple[int, int, int]:
    """(block_n, block_k, warps): the options', else the kind's own (TILES)."""
    own = TILES.get(kind, (32, 256, 2))
    return tuple(o if a is None else a
                 for a, o in zip((args.block_n, args.block_k, args.warps), own))


def analyse(kind: str, preload: bool, args: argparse.Namespace) -> dict:
    """One variant's figures: shared bytes, LDGs before the wait (None: no wait), the K
    loop's instructions, per weight, and their mix."""
    block_n, block_k, warps = tiles(kind, args)
    slices = warps if args.slices and kind not in ("dense", "a8") else 1
    kernel = compile_variant(kind, preload, block_n, block_k, warps,
                             args.stages, args.arch, args.block_m, slices,
                             args.on_acc and kind == "int4" and slices > 1)
    lines = sass(kernel)
    ops = [opcode(line) for line in lines]
    early = (sum(op == "LDG" for op in ops[:ops.index("ACQBULK")])
             if "ACQBULK" in ops else None)
    body = loop_body(lines)
    per_thread = block_n * block_k / (32 * warps)  # weights a step
    return {"kind": kind, "preload": preload, "tiles": [block_n, block_k, warps],
            "slices": slices,
            "shared_bytes": kernel.metadata.shared,
            "loads_before_wait": early, "loop_instructions": len(body),
            "per_weight": len(body) / per_thread,
            "mix": dict(collections.Counter(body).most_common())}


def describe(r: dict) -> str:
    mix = ", ".join(f"{op} {n}" for op, n in list(r["mix"].items())[:10])
    n, k, w = r["tiles"]
    sliced = f" (K in {r['slices']} slices)" if r["slices"] > 1 else ""
    return (f"{r['kind']:>5} preload={int(r['preload'])}  {n} x {k} on {w} warps{sliced}  shared "
            f"{r['shared_bytes'] / 1024:.0f} KiB  LDG before the wait "
            f"{r['loads_before_wait']}  loop {r['loop_instructions']} instructions, "
            f"{r['per_weight']:.2f} a weight\n        {mix}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="dense,int8,fp8")
    ap.add_argument("--preload", default="0,1", help="QUANT_PRELOAD values (quantized kinds)")
    ap.add_argument("--block-n", type=int, help="default: the kind's (TILES)")
    ap.add_argument("--block-k", type=int)
    ap.add_argument("--warps", type=int)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--block-m", type=int, default=16,
                    help="x's rows padded to (skinny_gemm.MIN_BLOCK_M: 8 is the MMA's least)")
    ap.add_argument("--slices", action="store_true",
                    help="quantized kinds: each step's columns sliced among the warps")
    ap.add_argument("--on-acc", action="store_true",
                    help="sliced int4: scales on the products (quant_tiles.INT4_ON_ACC)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--json", action="store_true", help="one JSON object a variant")
    args = ap.parse_args()
    unknown = set(args.kinds.split(",")) - set(W_TYPES)
    if unknown:
        ap.error(f"--kinds takes {', '.join(W_TYPES)}, not "
                 f"{', '.join(sorted(unknown))}")
    if not args.json:
        print(f"Triton {triton.__version__}, sm_{args.arch}: {args.stages} stages, bf16 x of "
              f"one row padded to {args.block_m}")
    for kind in args.kinds.split(","):
        for preload in sorted({int(p) for p in args.preload.split(",")}):
            if preload and (kind in ("dense", "a8") or kind in GROUPS or kind in X16_KINDS):
                continue  # dense: always before the wait; groups, a8: never (the launcher's)
            r = analyse(kind, bool(preload), args)
            print(json.dumps(r) if args.json else describe(r), flush=True)


if __name__ == "__main__":
    main()
