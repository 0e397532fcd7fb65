"""The house rules, checked on the source: imports point one way (no cycles, function-local imports
included), no module reaches into another's private names, the core never imports the rooms built
on top of it, and the public API imports with only torch and triton."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Rooms built on top of the library: the core must never import them.
TOP_ROOMS = ("tritonwino.cli", "tritonwino.experiments", "tritonwino.pruning")
# The core: what `import tritonwino.sparse_conv` may pull in.
CORE = ("tritonwino.kernels", "tritonwino._checks", "tritonwino._cpu_path", "tritonwino._triton_path",
        "tritonwino.dispatch", "tritonwino.dwm", "tritonwino.env", "tritonwino.functional", "tritonwino.modules",
        "tritonwino.ops", "tritonwino.packing", "tritonwino.reference", "tritonwino.sparse_conv", "tritonwino.tables",
        "tritonwino.transforms", "tritonwino.tuning")
EXTRA_PACKAGES = ("pandas", "matplotlib", "tqdm", "sklearn")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts = ["tritonwino", "kernels", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


FILES = {_module_name(p): p for d in ("tritonwino", "kernels") for p in (ROOT / d).rglob("*.py")}


def _resolve(mod: str, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = mod.split(".")
    if FILES[mod].name != "__init__.py":
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(mod: str) -> tuple[set[str], list[str]]:
    """(modules of the package that ``mod`` imports anywhere in its body, private names it imports)."""
    deps, privates = set(), []
    for node in ast.walk(ast.parse(FILES[mod].read_text())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("tritonwino"))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node.level, node.module)
            if not target.startswith("tritonwino"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in FILES:
                    deps.add(sub)
                else:
                    deps.add(target)
                    if a.name.startswith("_") and target != mod:
                        privates.append(f"{mod}: from {target} import {a.name}")
    return {d for d in deps if d in FILES and d != mod}, privates


GRAPH = {m: _imports(m)[0] for m in FILES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def _is_package_of(parent: str, child: str) -> bool:
    # a package's __init__ may import its own submodules (re-exports)
    return FILES[parent].name == "__init__.py" and child.startswith(parent + ".")


def test_no_import_cycles_including_function_local_imports():
    cycles = [c for c in _cycles() if not all(_is_package_of(a, b) or _is_package_of(b, a)
                                               for a in c for b in c if a != b)]
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    privates = [p for m in FILES for p in _imports(m)[1]]
    assert not privates, "\n".join(privates)


def test_core_never_imports_the_rooms_on_top():
    bad = [f"{m} -> {d}" for m in FILES if m.startswith(CORE) for d in GRAPH[m] if d.startswith(TOP_ROOMS)]
    assert not bad, "\n".join(bad)


def test_kernels_import_nothing_of_the_python_layer():
    bad = [f"{m} -> {d}" for m in FILES if m.startswith("tritonwino.kernels") for d in GRAPH[m]
           if not d.startswith("tritonwino.kernels")]
    assert not bad, "\n".join(bad)


def test_public_api_imports_without_the_experiment_packages():
    """``import tritonwino.sparse_conv`` with pandas, matplotlib, tqdm and scikit-learn made
    unimportable, as in a venv holding only torch and triton (and numpy)."""
    code = (
        "import sys\n"
        f"BLOCKED = {EXTRA_PACKAGES!r}\n"
        "for name in BLOCKED:\n"
        "    sys.modules[name] = None  # `import name` now fails as if it were not installed\n"
        "import torch\n"
        "import tritonwino, tritonwino.sparse_conv as sc\n"
        "x, w = torch.randn(1, 4, 6, 6), torch.randn(8, 4, 3, 3)\n"
        "y = sc.winograd_conv2d(x, w, padding=1, backend='torch')\n"
        "assert y.shape == (1, 8, 6, 6)\n"
        "loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in BLOCKED)\n"
        "print(tritonwino.__version__, loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("[]"), proc.stdout


def test_public_names_are_importable_from_sparse_conv():
    import tritonwino
    import tritonwino.sparse_conv as sc

    for name in ("winograd_conv2d", "sparse_winograd_conv2d", "pack_winograd_weight", "PackedWinogradWeight",
                 "SparseWinogradConv2d", "convert", "tune_model", "explain", "compact_state_dict", "BACKENDS"):
        assert hasattr(sc, name), name
        assert name in sc.__all__
    assert isinstance(tritonwino.__version__, str) and tritonwino.__version__[0].isdigit()


def test_public_callables_document_args_and_an_example():
    import tritonwino.sparse_conv as sc

    for name in ("winograd_conv2d", "sparse_winograd_conv2d", "pack_winograd_weight", "convert", "tune_model",
                 "explain", "compact_state_dict"):
        doc = getattr(sc, name).__doc__ or ""
        assert "Example:" in doc, f"{name} has no Example: section"
    for name in ("winograd_conv2d", "sparse_winograd_conv2d", "pack_winograd_weight", "convert"):
        assert "Args:" in getattr(sc, name).__doc__, f"{name} has no Args: section"


def test_cli_room_has_one_file_per_subcommand():
    from tritonwino import cli

    for name, module, _ in cli.SUBCOMMANDS:
        assert (ROOT / "tritonwino" / "cli" / f"{module}.py").exists(), name
        assert module == name.replace("-", "_")
