"""Test helpers that do what ComfyUI's loader and executor do with a V3 node (stub-only module).

- import_pack(root, name): imports a pack folder the way nodes.load_custom_node does
  (spec_from_file_location with the folder as the package's search path), once per name.
- load_pack_nodes(module): like nodes.load_custom_node in v0.3.64: NODE_CLASS_MAPPINGS wins;
  otherwise awaits comfy_entrypoint(), checks it is a ComfyExtension, awaits get_node_list()
  and calls GET_SCHEMA() on every class. Returns ({node_id: cls}, {node_id: display_name}).
- run_node(cls, hidden=None, fill_defaults=True, **inputs): validates like execution.py
  (required inputs, INT/FLOAT min/max, combo options, validate_inputs), then runs execute() on a
  locked clone of the class (as make_locked_method_func does) and returns the io.NodeOutput.
- ui_dict(node_output): the dict ComfyUI sends to the frontend for NodeOutput.ui.
- node_info(cls): the /object_info entry (GET_NODE_INFO_V1()).
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import os
import sys


class NodeValidationError(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(f"{e['details']}: {e['message']}" for e in errors))
        self.errors = errors


def _io():
    from comfy_api.latest import io
    return io


def lock_class(cls):
    def locked_instance_setattr(self, name, value):
        raise AttributeError(f"Cannot set attribute '{name}' on immutable instance of {type(self).__name__}")

    class LockedMeta(type(cls)):
        def __setattr__(cls_, name, value):
            raise AttributeError(f"Cannot modify class attribute '{name}' on locked class '{cls_.__name__}'")

    d = dict(cls.__dict__)
    d["__setattr__"] = locked_instance_setattr
    return LockedMeta(cls.__name__, cls.__bases__, d)


def _run(coro_or_value):
    if inspect.iscoroutine(coro_or_value):
        return asyncio.run(coro_or_value)
    return coro_or_value


def import_pack(root: str, name: str):
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def load_pack_nodes(module):
    from comfy_api.latest import ComfyExtension
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is not None:
        return dict(mappings), dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
    entry = getattr(module, "comfy_entrypoint", None)
    if entry is None or not callable(entry):
        raise AssertionError("pack exports neither NODE_CLASS_MAPPINGS nor a callable comfy_entrypoint")
    ext = _run(entry())
    if not isinstance(ext, ComfyExtension):
        raise AssertionError("comfy_entrypoint did not return a ComfyExtension")
    node_list = _run(ext.get_node_list())
    if not isinstance(node_list, list):
        raise AssertionError("get_node_list() did not return a list")
    classes, names = {}, {}
    for cls in node_list:
        schema = cls.GET_SCHEMA()
        classes[schema.node_id] = cls
        if schema.display_name is not None:
            names[schema.node_id] = schema.display_name
    return classes, names


def node_info(cls) -> dict:
    return cls.GET_NODE_INFO_V1()


def schema_inputs(cls) -> dict:
    """{input id: io.Input} in schema order."""
    return {i.id: i for i in (cls.GET_SCHEMA().inputs or [])}


def ui_dict(out):
    io = _io()
    ui = out.ui
    if ui is None or isinstance(ui, dict):
        return ui
    assert isinstance(ui, io._UIOutput), type(ui)
    return ui.as_dict()


def _validate(cls, schema, inputs):
    io = _io()
    errors = []
    vfn = None
    if "validate_inputs" in {k for c in cls.mro() if c is not io.ComfyNode for k in c.__dict__}:
        vfn = cls.validate_inputs
    v_args = set()
    v_kwargs = False
    if vfn is not None:
        spec = inspect.getfullargspec(vfn)
        v_args, v_kwargs = set(spec.args), spec.varkw is not None
    for inp in schema.inputs or []:
        if inp.id not in inputs:
            if not inp.optional:
                errors.append({"type": "required_input_missing", "message": "Required input is missing",
                               "details": inp.id})
            continue
        val = inputs[inp.id]
        if inp.id in v_args or v_kwargs:
            continue
        io_type = inp.get_io_type()
        if io_type in ("INT", "FLOAT") and not isinstance(val, (list, tuple)):
            if getattr(inp, "min", None) is not None and val < inp.min:
                errors.append({"type": "value_smaller_than_min",
                               "message": f"Value {val} smaller than min of {inp.min}", "details": inp.id})
            if getattr(inp, "max", None) is not None and val > inp.max:
                errors.append({"type": "value_bigger_than_max",
                               "message": f"Value {val} bigger than max of {inp.max}", "details": inp.id})
        if isinstance(inp, io.Combo.Input) and not inp.multiselect and inp.options is not None:
            if val not in inp.options:
                errors.append({"type": "value_not_in_list", "message": "Value not in list", "details": inp.id})
    if errors:
        raise NodeValidationError(errors)
    if vfn is not None:
        spec = inspect.getfullargspec(vfn)
        args = inputs if spec.varkw is not None else {k: v for k, v in inputs.items() if k in spec.args}
        r = _run(vfn(**args))
        if r is not True:
            raise NodeValidationError([{"type": "custom_validation_failed",
                                        "message": str(r), "details": cls.__name__}])


def run_node(cls, hidden=None, fill_defaults=True, **inputs):
    """Run a V3 node class the way ComfyUI v0.3.64 does; returns io.NodeOutput."""
    io = _io()
    schema = cls.GET_SCHEMA()
    inputs = dict(inputs)
    if fill_defaults:
        for inp in schema.inputs or []:
            if inp.id not in inputs and isinstance(inp, io.WidgetInput) and inp.default is not None:
                inputs[inp.id] = inp.default
    _validate(cls, schema, inputs)
    clone = cls.PREPARE_CLASS_CLONE(hidden or {})
    locked = lock_class(clone)
    fn = getattr(cls, cls.FUNCTION).__func__
    return _run(fn(locked, **inputs))


def model_sampling_sd3(model, shift, multiplier=1000):
    """What the core ModelSamplingSD3 node does: clone + object patch "model_sampling".

    The shift then shows in model.get_model_object("model_sampling").shift, and in
    model.model.model_sampling.shift only while this clone is loaded (load_models_gpu).
    """
    import comfy.model_sampling
    m = model.clone()

    class ModelSamplingAdvanced(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    ms = ModelSamplingAdvanced(model.model.model_config)
    ms.set_parameters(shift=shift, multiplier=multiplier)
    m.add_object_patch("model_sampling", ms)
    return m
