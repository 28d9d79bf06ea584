"""The core's layout rules, read from its source: imports point one way (no cycles, none
hidden inside functions), the core never imports ComfyUI, and the sampling loop knows no
cache policy by name."""
from __future__ import annotations

import ast
import os

from helpers import ROOT

CORE = os.path.join(ROOT, "dummy_forcing_core")
HOST_MODULES = ("comfy", "comfy_api", "folder_paths", "nodes", "comfy_extras")


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(CORE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return out


def _imports(name: str, path: str):
    """[(imported core module, at module level?)] and the host modules imported."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    top_level = {id(n) for n in tree.body}
    found, host = [], []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                targets = [node.module]
        for t in targets:
            if t.split(".")[0] in HOST_MODULES:
                host.append(t)
            if t.startswith("dummy_forcing_core"):
                found.append((t, id(node) in top_level))
    return found, host


def _graph():
    mods = _modules()
    graph, nested, hosts = {}, [], []
    for name, path in mods.items():
        found, host = _imports(name, path)
        hosts += [(name, h) for h in host]
        deps = set()
        for target, top in found:
            while target not in mods and "." in target:  # "from .x import y" names x.y
                target = target.rsplit(".", 1)[0]
            if target == name or target not in mods:
                continue
            if top:
                deps.add(target)
            else:
                nested.append((name, target))
        graph[name] = deps
    return graph, nested, hosts


def test_core_never_imports_the_host():
    _, _, hosts = _graph()
    assert hosts == []


def test_no_function_level_imports_of_core_modules():
    _, nested, _ = _graph()
    assert nested == [], "a function-level import hides a dependency (and maybe a cycle)"


def test_core_imports_have_no_cycles():
    graph, _, _ = _graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if d.endswith("__init__") or d == "dummy_forcing_core":
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [d]))
            if not state.get(d):
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m != "dummy_forcing_core" and not state.get(m):
            visit(m, [m])


def test_the_sampling_loop_knows_no_cache_policy_by_name():
    graph, _, _ = _graph()
    for loop in ("dummy_forcing_core.sampler", "dummy_forcing_core.video_session", "dummy_forcing_core.chunk_runner"):
        assert not {"dummy_forcing_core.dummy_forcing", "dummy_forcing_core.head_profile"} & graph[loop], loop


# ------------------------------------------------------------------------------------ runtime vs tools
# The runtime is what ComfyUI runs: nodes/ and every module the nodes import, directly or not.
# The small model's command-line tools (drawing its world, training, the demo, the evaluation)
# live in tiny_model_tools/ and must stay out of it.
TOOLS = "tiny_model_tools"
NODES_DIR = os.path.join(ROOT, "nodes")


def _repo_modules(root: str) -> dict[str, str]:
    """{dotted name: file} of the repo's own packages (nodes, dummy_forcing_core, tiny_model_tools)."""
    out = {}
    for pkg in ("nodes", "dummy_forcing_core", TOOLS):
        for folder, _, files in os.walk(os.path.join(root, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), root)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return out


def _all_imports(name: str, path: str) -> set[str]:
    """Every module a file imports, anywhere in it (top level or inside a function), absolute."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def _reachable(root: str, start_package: str = "nodes") -> set[str]:
    """The repo modules ``start_package`` imports, followed through every import (packages' own
    __init__ included, as Python runs them)."""
    mods = _repo_modules(root)
    todo = [m for m in mods if m == start_package or m.startswith(start_package + ".")]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for target in _all_imports(m, mods[m]):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c runs a, a.b and a.b.c
                if ".".join(parts[:i]) in mods:
                    todo.append(".".join(parts[:i]))
    return seen


def test_the_runtime_never_reaches_the_tiny_model_tools():
    runtime = _reachable(ROOT)
    assert "dummy_forcing_core.tiny.model" in runtime and "dummy_forcing_core.tiny.codec" in runtime  # followed
    assert not {m for m in runtime if m.split(".")[0] == TOOLS}, "the nodes reach the small model's tools"
    core = [m for m in _repo_modules(ROOT) if m.split(".")[0] == "dummy_forcing_core"]
    assert not [m for m in core if any(t.split(".")[0] == TOOLS for t in _all_imports(m, _repo_modules(ROOT)[m]))]


def test_the_reachability_check_finds_a_planted_import(tmp_path):
    """The walk follows relative, absolute and function-level imports through the core."""
    for pkg in ("nodes", "dummy_forcing_core/tiny", TOOLS):
        os.makedirs(tmp_path / pkg)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "nodes" / "a.py").write_text("from . import b\n")
    (tmp_path / "nodes" / "b.py").write_text("def f():\n    from dummy_forcing_core.tiny import model\n")
    (tmp_path / "dummy_forcing_core" / "tiny" / "model.py").write_text("from ..tiny.codec import X\n")
    (tmp_path / "dummy_forcing_core" / "tiny" / "codec.py").write_text("import tiny_model_tools.train\n")
    (tmp_path / TOOLS / "train.py").write_text("")
    found = _reachable(str(tmp_path))
    assert {"nodes.b", "dummy_forcing_core.tiny.model", "dummy_forcing_core.tiny.codec", f"{TOOLS}.train"} <= found
    (tmp_path / "dummy_forcing_core" / "tiny" / "codec.py").write_text("X = 1\n")
    assert not {m for m in _reachable(str(tmp_path)) if m.startswith(TOOLS)}


def test_importing_the_pack_loads_no_tool_module():
    """The same at run time: ComfyUI's import of the pack (here on the headless stub) puts no
    module of the tools in sys.modules."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, {stub!r}); sys.path.insert(0, {tests!r})\n"
            "import comfy_stub_tools\n"
            "pack = comfy_stub_tools.import_pack({root!r}, 'ComfyUI_Dummy_Forcing')\n"
            "comfy_stub_tools.load_pack_nodes(pack)\n"
            "assert 'ComfyUI_Dummy_Forcing.nodes.tiny_nodes' in sys.modules, sorted(sys.modules)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == {tools!r}))\n")
    tests = os.path.join(ROOT, "tests")
    r = subprocess.run([sys.executable, "-c", code.format(stub=os.path.join(tests, "comfy_stub"), tests=tests,
                                                          root=ROOT, tools=TOOLS)],
                       capture_output=True, text=True, timeout=300, cwd=tests)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
