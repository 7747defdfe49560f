"""The package's shape (docs/architecture.md), read from its source: no import loop between
its modules, no private name imported from another file, ``import minicaps`` loading nothing
until a name is used, and no importlib where a plain import would do."""
import ast
import subprocess
import sys
from pathlib import Path

import minicaps

ROOT = Path(minicaps.__file__).parent
PACKAGES = ("backend", "ops", "fast", "nn", "data", "training", "io", "viz", "cli")


def modules():
    """{dotted name: parsed source} of every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text()))
    return found


def imported(name, path, node):
    """The absolute module an ImportFrom in module ``name`` (file ``path``) reads."""
    if node.level == 0:
        return node.module
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def top_level_imports(mods):
    """{module: set of package modules it imports when it is imported} (imports inside
    functions run later, so they cannot make a loop at import time)."""
    graph = {}
    for name, (path, tree) in mods.items():
        edges = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                target = imported(name, path, node)
                for alias in node.names:     # "from minicaps.data import multimnist"
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def test_the_package_is_laid_out_by_role():
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "gradcheck.py", "values.py"]


def find_loop(graph):
    """A chain of modules importing one another back to the first, or None: a depth-first
    walk of ``graph`` ({module: modules it imports})."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue               # a package importing its own submodule
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                loop = visit(nxt)
                if loop:
                    return loop
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            loop = visit(node)
            if loop:
                return loop
    return None


def test_no_import_loop():
    loop = find_loop(top_level_imports(modules()))
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_a_loop_is_found_where_there_is_one():
    """The check above can fail: modules importing each other, directly or around."""
    assert find_loop({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_loop({"p": {"p.x"}, "p.x": set()}) is None


def test_no_private_name_is_imported_from_another_file():
    mods = modules()
    private = []
    for name, (path, tree) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and imported(name, path, node).startswith(
                    "minicaps"):
                private += [f"{path.relative_to(ROOT)}: {a.name} from {node.module}"
                            for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def test_import_minicaps_loads_nothing_until_a_name_is_used():
    code = ("import sys, minicaps; before = sorted(m for m in sys.modules "
            "if m.startswith('minicaps') or m in ('numpy', 'scipy', 'PIL', 'matplotlib'));"
            "minicaps.CapsNet; after = 'minicaps.nn.capsnet' in sys.modules;"
            "print(before, after, 'minicaps.data.registry' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["['minicaps']", "True", "False"]


def test_importlib_only_where_the_module_is_named_at_run_time():
    # __init__: names imported on first use (PEP 562); backend/device and nccl:
    # CuPy's submodules under whatever name CuPy (or its stand-in) has; cli/bench: a
    # file of the source checkout
    allowed = {"__init__.py", "backend/device.py", "training/nccl.py", "cli/bench.py"}
    users = {str(path.relative_to(ROOT)) for path, tree in modules().values()
             if "importlib" in path.read_text()}
    assert users <= allowed, users - allowed


def test_every_public_name_of_the_package_is_there():
    for name in minicaps.__all__:
        assert getattr(minicaps, name) is not None, name
