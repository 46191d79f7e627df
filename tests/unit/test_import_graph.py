"""The package's import graph: no cycles, and the processes' boundaries hold.

Read statically from the source (every `import` and `from ... import`, inside functions
too, for the cycle check): the modules of the API process (server/, frontend/, engine/
and what they import at module level) reach no torch, no Triton and no model code
(models' torch modules, layers/, kernels/, worker/); the engine core process's modules
(engine/, executor/base.py) reach none either. Then, in a fresh interpreter, importing the
server's modules really leaves torch and triton out of sys.modules.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import tessera

ROOT = Path(tessera.__file__).parent
MODEL_CODE = ("tessera.layers", "tessera.kernels", "tessera.worker", "tessera.models.llama",
              "tessera.models.loader", "tessera.models.interface", "tessera.quant")
NO_TORCH = ("torch", "triton")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    """Modules `path` imports (tessera's resolved to modules, others by top package)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level: also inside if/try at the top, not in functions
        nodes = [n for stmt in tree.body for n in ast.walk(stmt)
                 if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        nodes += [n for stmt in tree.body if isinstance(stmt, ast.ClassDef)
                  for n in stmt.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: set[str] = set()
    known = _MODULES
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: not used in this package, but resolve anyway
                base = module.rsplit(".", node.level)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            if name == "__future__" or _in_type_checking(tree, node):
                continue
            submodules = {f"{name}.{a.name}" for a in node.names} & known.keys()
            found |= submodules  # `from tessera.kernels import skinny_gemm`: that module
            if len(submodules) < len(node.names):  # names defined in the package itself
                found.add(name)
    return found


def _in_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"
                and any(target is n for stmt in node.body for n in ast.walk(stmt))):
            return True
    return False


_MODULES = _modules()


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    graph = {}
    for module, path in _MODULES.items():
        targets = _imports(path, module, top_level_only)
        graph[module] = {t for t in targets if t in _MODULES and t != module}
        graph[module] |= {t.split(".")[0] for t in targets if not t.startswith("tessera")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def _reach(graph: dict[str, set[str]], starts: list[str]) -> dict[str, str]:
    """Every module reachable from starts -> the module that first imported it."""
    seen, todo = {s: s for s in starts}, list(starts)
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return seen


def _is_model_code(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in MODEL_CODE)


def _forbidden(reached: dict[str, str]) -> list[str]:
    return sorted(f"{m} (imported by {by})" for m, by in reached.items()
                  if m in NO_TORCH or _is_model_code(m))


def test_no_import_cycles():
    """Imports inside functions count too: a lazy import is still a dependency."""
    assert _cycles(_graph(top_level_only=False)) == []


def test_api_and_core_processes_import_no_torch_triton_or_model_code():
    graph = _graph(top_level_only=True)
    api = [m for m in _MODULES if m.startswith(("tessera.server", "tessera.frontend",
                                                "tessera.engine"))]
    assert _forbidden(_reach(graph, api + ["tessera.cli", "tessera.config"])) == []
    core = [m for m in _MODULES if m.startswith("tessera.engine")] + ["tessera.executor.base",
                                                                      "tessera.executor.multiproc"]
    assert _forbidden(_reach(graph, core)) == []


def test_the_checker_sees_what_a_worker_imports():
    """The same check does flag the worker side (so the assertions above can fail)."""
    reached = _reach(_graph(top_level_only=True), ["tessera.worker.worker"])
    assert "torch" in reached and "tessera.models.loader" in reached
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]


def test_importing_the_server_loads_no_torch_or_triton():
    code = ("import sys, tessera.cli, tessera.server.app, tessera.server.serve, "
            "tessera.engine.mp_client, tessera.engine.core_proc;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton') "
            "or any(m == x or m.startswith(x + '.') for x in %r));"
            "print(bad); sys.exit(1 if bad else 0)" % (MODEL_CODE,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT.parent)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
