"""tests/comfy_stub mirrors the real ComfyUI's signatures (runs only when COMFYUI_DIR is set).

The stub mirrors ComfyUI 0.27; the pack also runs on v0.3.64. Additive changes of a newer
ComfyUI (a new keyword argument with a default, a new constant) pass; a removal or a rename
fails: every parameter the stub has must exist in the real signature, in the same order and
kind, with the same default, unless the real ComfyUI is older than the stub and the parameter
is one the stub knows to be newer (NEWER_THAN_0_3_64). A real parameter without a default that
the stub lacks fails too (callers written against the stub would break).
"""
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STUB_DIR = os.path.join(os.path.dirname(HERE), "comfy_stub")

# Stub-only keyword arguments and defaults that differ on purpose.
STUB_ONLY = {
    "comfy.model_base.BaseModel.__init__": {"diffusion_model"},  # wrap a prebuilt module
    "comfy.model_base.WAN21.__init__": {"diffusion_model", "unet_model"},
}
DEFAULT_DIFFERS = {
    "comfy.model_base.BaseModel.__init__": {"unet_model"},  # real default: the SD UNetModel class
}
# Parameters of ComfyUI 0.27 that v0.3.64 does not have yet.
_IO_NEW = {"raw_link", "advanced"}
NEWER_THAN_0_3_64 = {
    "comfy.model_patcher.ModelPatcher.clone": {"disable_dynamic", "model_override", "force_deepcopy"},
    "comfy.model_management.free_memory": {"for_dynamic", "pins_required", "ram_required"},
    "comfy_api.latest._io.Input.__init__": _IO_NEW,
    "comfy_api.latest._io.WidgetInput.__init__": _IO_NEW,
    "comfy_api.latest._io.Boolean.Input.__init__": _IO_NEW | {"extra_dict"},
    "comfy_api.latest._io.Int.Input.__init__": _IO_NEW | {"extra_dict"},
    "comfy_api.latest._io.Float.Input.__init__": _IO_NEW | {"extra_dict", "gradient_stops"},
    "comfy_api.latest._io.String.Input.__init__": _IO_NEW | {"extra_dict"},
    "comfy_api.latest._io.Combo.Input.__init__": _IO_NEW | {"extra_dict"},
    "comfy_api.latest._io.MultiCombo.Input.__init__": _IO_NEW | {"extra_dict"},
    "comfy_api.latest._io.Model.Input.__init__": _IO_NEW,
    "comfy_api.latest._io.Schema.__init__": {"search_aliases", "is_dev_only", "price_badge", "accept_all_inputs",
                                             "essentials_category", "has_intermediate_output"},
    "comfy_api.latest._io.HiddenHolder.__init__": {"comfy_usage_source"},
}
# Defaults that changed since v0.3.64 (None -> a list factory); the pack passes these explicitly.
DEFAULT_CHANGED_SINCE_0_3_64 = {"comfy_api.latest._io.Schema.__init__": {"inputs", "outputs", "hidden"}}
# v0.3.64's INPUT_TYPES took (include_hidden, return_schema); 0.27 takes none: the pack never calls it.
OLDER_EXTRA = {"comfy_api.latest._io.ComfyNode.INPUT_TYPES": {"include_hidden", "return_schema"}}


def _dump(python, mode, path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([python, os.path.join(HERE, "dump_signatures.py"), mode, path], capture_output=True,
                       text=True, timeout=120, cwd=path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def real_version(comfy_dir) -> tuple[int, ...]:
    with open(os.path.join(comfy_dir, "comfyui_version.py")) as f:
        return tuple(int(x) for x in re.search(r"(\d+)\.(\d+)\.(\d+)", f.read()).groups())


def compare(name: str, rsig: list, ssig: list, older: bool) -> list[str]:
    """Problems of one signature pair ([name, kind, default] lists)."""
    problems = []
    real = {p[0]: p for p in rsig}
    newer = NEWER_THAN_0_3_64.get(name, set()) if older else set()
    stub_only = STUB_ONLY.get(name, set())
    shared = [p for p in ssig if p[0] in real]
    for p in ssig:
        if p[0] not in real and p[0] not in newer | stub_only:
            problems.append(f"{name}: the stub's parameter {p[0]!r} is not in the real signature (removed or renamed?)")
    for p in shared:
        r = real[p[0]]
        if r[1] != p[1]:
            problems.append(f"{name}: {p[0]} is {r[1]} in the real ComfyUI, {p[1]} in the stub")
        changed = DEFAULT_CHANGED_SINCE_0_3_64.get(name, set()) if older else set()
        if r[2] != p[2] and p[0] not in DEFAULT_DIFFERS.get(name, set()) | changed:
            problems.append(f"{name}: default of {p[0]}: real {r[2]}, stub {p[2]}")
    order_real = [p[0] for p in rsig if p[0] in {q[0] for q in shared}]
    if [p[0] for p in shared] != order_real:
        problems.append(f"{name}: parameter order differs: real {order_real}, stub {[p[0] for p in shared]}")
    tolerated = OLDER_EXTRA.get(name, set()) if older else set()
    for p in rsig:
        names = {q[0] for q in ssig}
        if p[0] not in names and p[2] is None and p[1] not in ("VAR_POSITIONAL", "VAR_KEYWORD") \
                and p[0] not in tolerated:
            problems.append(f"{name}: the real ComfyUI has a required parameter {p[0]!r} the stub lacks")
    return problems


def test_stub_signatures_match_real():
    comfy_dir = os.environ["COMFYUI_DIR"]
    older = real_version(comfy_dir) < (0, 27, 0)
    real = _dump(os.environ.get("COMFYUI_PYTHON") or sys.executable, "real", comfy_dir)
    stub = _dump(sys.executable, "stub", STUB_DIR)
    problems = []
    for name, rsig in real["signatures"].items():
        ssig = stub["signatures"].get(name)
        if isinstance(rsig, str):
            problems.append(f"{name}: not in the real ComfyUI ({rsig})")
        elif isinstance(ssig, str) or ssig is None:
            problems.append(f"{name}: missing in stub ({ssig})")
        else:
            problems += compare(name, rsig, ssig, older)
    for t, v in stub["io_types"].items():
        if real["io_types"].get(t) != v:
            problems.append(f"io type {t}: real {real['io_types'].get(t)}, stub {v}")
    for c, members in stub["constants"].items():
        rm = real["constants"].get(c, {})
        for k, v in members.items():
            if rm.get(k) != v and not (older and k in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES")):
                problems.append(f"constant {c}.{k}: real {rm.get(k)!r}, stub {v!r}")
    assert not problems, "\n".join(problems)


def test_the_comparison_fails_on_removals_and_renames():
    """The rules themselves: additive is fine, a removal, a rename or a new required one is not."""
    base = [["self", "POSITIONAL_OR_KEYWORD", None], ["a", "POSITIONAL_OR_KEYWORD", "1"]]
    assert compare("f", base + [["new", "POSITIONAL_OR_KEYWORD", "None"]], base, older=False) == []
    assert compare("f", base[:1], base, older=False)  # the real one lost 'a'
    assert compare("f", base[:1] + [["b", "POSITIONAL_OR_KEYWORD", "1"]], base, older=False)  # renamed
    assert compare("f", base + [["req", "POSITIONAL_OR_KEYWORD", None]], base, older=False)  # new required
    assert compare("f", [base[0], ["a", "POSITIONAL_OR_KEYWORD", "2"]], base, older=False)  # default changed
