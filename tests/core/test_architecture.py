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
