"""Stub of comfy_api/latest/_io.py (ComfyUI v0.3.64): the V3 node schema API.

Same names, argument names, order and defaults as the real module for what a node pack uses:
Input(id, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None),
WidgetInput(..., default=None, socketless=None, widget_type=None, force_input=None, extra_dict=None),
Boolean / Int / Float / String / Combo / MultiCombo inputs, socket types (Model, Latent,
Conditioning, Image, Mask, Vae, Clip, Sigmas, ...), Custom(io_type), Output(id=None,
display_name=None, tooltip=None, is_output_list=False), Schema (dataclass), Hidden,
HiddenHolder, ComfyNode (define_schema / execute / validate_inputs / fingerprint_inputs /
check_lazy_status; GET_SCHEMA, INPUT_TYPES, RETURN_TYPES, FUNCTION, EXECUTE_NORMALIZED,
PREPARE_CLASS_CLONE, GET_NODE_INFO_V1), NodeOutput(*args, ui=None, expand=None,
block_execution=None).
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal


def prune_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class classproperty:
    def __init__(self, f):
        self.f = f

    def __get__(self, obj, owner):
        return self.f(owner)


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh: Literal["first", "last"] = "first",
                 timeout: int = None, max_retries: int = None, refresh: int = None):
        self.route = route
        self.refresh_button = refresh_button
        self.control_after_refresh = control_after_refresh
        self.timeout = timeout
        self.max_retries = max_retries
        self.refresh = refresh

    def as_dict(self):
        return prune_dict({"route": self.route, "refresh_button": self.refresh_button,
                           "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                           "max_retries": self.max_retries, "refresh": self.refresh})


class _StringIOType(str):
    """io_type string: "*" matches anything; comma lists match when one is a subset."""

    def __ne__(self, value: object) -> bool:
        if self == "*" or value == "*":
            return False
        if not isinstance(value, str):
            return True
        a, b = frozenset(self.split(",")), frozenset(value.split(","))
        return not (b.issubset(a) or a.issubset(b))


# ----------------------------------------------------------------------------- inputs / outputs
class _IO_V3:
    Parent = None

    @property
    def io_type(self):
        return self.Parent.io_type

    @property
    def Type(self):
        return self.Parent.Type


class Input(_IO_V3):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None, raw_link: bool = None, advanced: bool = None):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.lazy = lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}
        self.rawLink = raw_link
        self.advanced = advanced

    def as_dict(self):
        return prune_dict({"display_name": self.display_name, "optional": self.optional,
                           "tooltip": self.tooltip, "lazy": self.lazy, "rawLink": self.rawLink,
                           "advanced": self.advanced}) | prune_dict(self.extra_dict)

    def get_io_type(self):
        return _StringIOType(self.io_type)


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, socketless: bool = None, widget_type: str = None, force_input: bool = None,
                 extra_dict=None, raw_link: bool = None, advanced: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link, advanced)
        self.default = default
        self.socketless = socketless
        self.widget_type = widget_type
        self.force_input = force_input

    def as_dict(self):
        return super().as_dict() | prune_dict({"default": self.default, "socketless": self.socketless,
                                               "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self):
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output(_IO_V3):
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip
        self.is_output_list = is_output_list

    def as_dict(self):
        return prune_dict({"display_name": self.display_name, "tooltip": self.tooltip,
                           "is_output_list": self.is_output_list})

    def get_io_type(self):
        return self.io_type


class _ComfyType(ABC):
    Type = Any
    io_type: str = None


class ComfyTypeI(_ComfyType):
    class Input(Input):
        ...


class ComfyTypeIO(ComfyTypeI):
    class Output(Output):
        ...


def _subclass(cls, name):
    return type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": name})


def comfytype(io_type: str, **kwargs):
    """Binds io_type to a type class and gives it its own Input / Output subclasses."""

    def decorator(cls):
        if not issubclass(cls, _ComfyType):
            cls = type(cls.__name__, (cls, ComfyTypeIO), {"__module__": cls.__module__, "__doc__": cls.__doc__})
        for part in ("Input", "Output"):
            inner = getattr(cls, part, None)
            if inner is not None:
                inner = _subclass(inner, f"{cls.__name__}.{part}")
                inner.Parent = cls
                setattr(cls, part, inner)
        cls.io_type = _StringIOType(io_type)
        return cls

    return decorator


def Custom(io_type: str) -> type[ComfyTypeIO]:
    """A socket type of your own, e.g. io.Custom("HEAD_PROFILE").Input("profile")."""

    @comfytype(io_type=io_type)
    class CustomComfyType(ComfyTypeIO):
        ...

    return CustomComfyType


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: bool = None, label_on: str = None, label_off: str = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None,
                     advanced: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.label_on = label_on
            self.label_off = label_off

        def as_dict(self):
            return super().as_dict() | prune_dict({"label_on": self.label_on, "label_off": self.label_off})


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: int = None, min: int = None, max: int = None, step: int = None,
                     control_after_generate: bool = None, display_mode: NumberDisplay = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None,
                     advanced: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min = min
            self.max = max
            self.step = step
            self.control_after_generate = control_after_generate
            self.display_mode = display_mode

        def as_dict(self):
            return super().as_dict() | prune_dict({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     default: float = None, min: float = None, max: float = None, step: float = None,
                     round: float = None, display_mode: NumberDisplay = None, gradient_stops: list = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None,
                     advanced: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.min = min
            self.max = max
            self.step = step
            self.round = round
            self.display_mode = display_mode
            self.gradient_stops = gradient_stops

        def as_dict(self):
            return super().as_dict() | prune_dict({
                "min": self.min, "max": self.max, "step": self.step, "round": self.round,
                "display": self.display_mode, "gradient_stops": self.gradient_stops})


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                     multiline=False, placeholder: str = None, default: str = None, dynamic_prompts: bool = None,
                     socketless: bool = None, force_input: bool = None, extra_dict=None, raw_link: bool = None,
                     advanced: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link, advanced)
            self.multiline = multiline
            self.placeholder = placeholder
            self.dynamic_prompts = dynamic_prompts

        def as_dict(self):
            return super().as_dict() | prune_dict({"multiline": self.multiline, "placeholder": self.placeholder,
                                                   "dynamicPrompts": self.dynamic_prompts})


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: list[str] | list[int] | type[Enum] = None, display_name: str = None,
                     optional=False, tooltip: str = None, lazy: bool = None, default: str | int | Enum = None,
                     control_after_generate: bool = None, upload: UploadType = None,
                     image_folder: FolderType = None, remote: RemoteOptions = None, socketless: bool = None,
                     extra_dict=None, raw_link: bool = None, advanced: bool = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [v.value for v in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None, extra_dict,
                             raw_link, advanced)
            self.multiselect = False
            self.options = options
            self.control_after_generate = control_after_generate
            self.upload = upload
            self.image_folder = image_folder
            self.remote = remote

        def as_dict(self):
            return super().as_dict() | prune_dict({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None,
                "remote": self.remote.as_dict() if self.remote else None})

    class Output(Output):
        def __init__(self, id: str = None, display_name: str = None, options: list[str] = None, tooltip: str = None,
                     is_output_list=False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []

        @property
        def io_type(self):
            return self.options


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    Type = list[str]

    class Input(Combo.Input):
        def __init__(self, id: str, options: list[str], display_name: str = None, optional=False, tooltip: str = None,
                     lazy: bool = None, default: list[str] = None, placeholder: str = None, chip: bool = None,
                     control_after_generate: bool = None, socketless: bool = None, extra_dict=None,
                     raw_link: bool = None, advanced: bool = None):
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, control_after_generate,
                             socketless=socketless, extra_dict=extra_dict, raw_link=raw_link, advanced=advanced)
            self.multiselect = True
            self.placeholder = placeholder
            self.chip = chip

        def as_dict(self):
            return super().as_dict() | prune_dict({"multi_select": self.multiselect,
                                                   "placeholder": self.placeholder, "chip": self.chip})


def _socket(name: str, io_type: str):
    cls = type(name, (ComfyTypeIO,), {"__module__": __name__})
    return comfytype(io_type)(cls)


Image = _socket("Image", "IMAGE")
Mask = _socket("Mask", "MASK")
Latent = _socket("Latent", "LATENT")
Conditioning = _socket("Conditioning", "CONDITIONING")
Sampler = _socket("Sampler", "SAMPLER")
Sigmas = _socket("Sigmas", "SIGMAS")
Noise = _socket("Noise", "NOISE")
Guider = _socket("Guider", "GUIDER")
Clip = _socket("Clip", "CLIP")
ControlNet = _socket("ControlNet", "CONTROL_NET")
Vae = _socket("Vae", "VAE")
Model = _socket("Model", "MODEL")
ClipVision = _socket("ClipVision", "CLIP_VISION")
ClipVisionOutput = _socket("ClipVisionOutput", "CLIP_VISION_OUTPUT")
UpscaleModel = _socket("UpscaleModel", "UPSCALE_MODEL")
Audio = _socket("Audio", "AUDIO")
Video = _socket("Video", "VIDEO")
LoraModel = _socket("LoraModel", "LORA_MODEL")
Hooks = _socket("Hooks", "HOOKS")
TimestepsRange = _socket("TimestepsRange", "TIMESTEPS_RANGE")
LatentOperation = _socket("LatentOperation", "LATENT_OPERATION")
WanCameraEmbedding = _socket("WanCameraEmbedding", "WAN_CAMERA_EMBEDDING")
AnyType = _socket("AnyType", "*")


# ----------------------------------------------------------------------------- hidden inputs
class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    def __init__(self, unique_id: str, prompt: Any, extra_pnginfo: Any, dynprompt: Any,
                 auth_token_comfy_org: str, api_key_comfy_org: str, comfy_usage_source: str = None, **kwargs):
        self.comfy_usage_source = comfy_usage_source
        self.unique_id = unique_id
        self.prompt = prompt
        self.extra_pnginfo = extra_pnginfo
        self.dynprompt = dynprompt
        self.auth_token_comfy_org = auth_token_comfy_org
        self.api_key_comfy_org = api_key_comfy_org

    def __getattr__(self, key: str):
        return None

    @classmethod
    def from_dict(cls, d: dict | None):
        d = d or {}
        return cls(unique_id=d.get(Hidden.unique_id), prompt=d.get(Hidden.prompt),
                   extra_pnginfo=d.get(Hidden.extra_pnginfo), dynprompt=d.get(Hidden.dynprompt),
                   auth_token_comfy_org=d.get(Hidden.auth_token_comfy_org),
                   api_key_comfy_org=d.get(Hidden.api_key_comfy_org))


# ----------------------------------------------------------------------------- schema
@dataclass
class NodeInfoV1:
    input: dict = None
    input_order: dict = None
    is_input_list: bool = None
    output: list = None
    output_is_list: list = None
    output_name: list = None
    output_tooltips: list = None
    output_matchtypes: list = None
    name: str = None
    display_name: str = None
    description: str = None
    python_module: Any = None
    category: str = None
    output_node: bool = None
    deprecated: bool = None
    experimental: bool = None
    dev_only: bool = None
    api_node: bool = None
    price_badge: dict = None
    search_aliases: list = None
    essentials_category: str = None
    has_intermediate_output: bool = None


def add_to_dict_v1(i: Input, input: dict):
    key = "optional" if i.optional else "required"
    as_dict = i.as_dict()
    as_dict.pop("optional", None)
    input.setdefault(key, {})[i.id] = (i.get_io_type(), as_dict)


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    search_aliases: list[str] = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    price_badge: Any = None
    not_idempotent: bool = False
    enable_expand: bool = False
    accept_all_inputs: bool = False
    essentials_category: str | None = None
    has_intermediate_output: bool = False

    def validate(self):
        input_ids = [i.id for i in self.inputs] if self.inputs is not None else []
        output_ids = [o.id for o in self.outputs] if self.outputs is not None else []
        issues = []
        if len(set(input_ids)) != len(input_ids):
            issues.append(f"Input ids must be unique, but {[k for k, c in Counter(input_ids).items() if c > 1]} are not.")
        if len(set(output_ids)) != len(output_ids):
            issues.append(f"Output ids must be unique, but {[k for k, c in Counter(output_ids).items() if c > 1]} are not.")
        both = set(input_ids) & set(output_ids)
        if both:
            issues.append(f"Ids must be unique between inputs and outputs, but {both} are not.")
        if issues:
            raise ValueError("\n".join(issues))

    def finalize(self):
        if self.is_api_node:
            self.hidden = self.hidden or []
            for h in (Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org):
                if h not in self.hidden:
                    self.hidden.append(h)
        if self.is_output_node:
            self.hidden = self.hidden or []
            for h in (Hidden.prompt, Hidden.extra_pnginfo):
                if h not in self.hidden:
                    self.hidden.append(h)
        if self.outputs is not None:
            for i, output in enumerate(self.outputs):
                if output.id is None:
                    output.id = f"_{i}_{output.io_type}_"

    def get_v1_info(self, cls) -> NodeInfoV1:
        input = {"required": {}}
        for i in self.inputs or []:
            add_to_dict_v1(i, input)
        for h in self.hidden or []:
            input.setdefault("hidden", {})[h.name] = (h.value,)
        outs = self.outputs or []
        return NodeInfoV1(
            input=input,
            input_order={k: list(v.keys()) for k, v in input.items()},
            is_input_list=self.is_input_list,
            output=[o.io_type for o in outs],
            output_is_list=[o.is_output_list for o in outs],
            output_name=[o.display_name if o.display_name else o.io_type for o in outs],
            output_tooltips=[o.tooltip if o.tooltip else None for o in outs],
            name=self.node_id, display_name=self.display_name, category=self.category,
            description=self.description, output_node=self.is_output_node,
            has_intermediate_output=self.has_intermediate_output, deprecated=self.is_deprecated,
            experimental=self.is_experimental, dev_only=self.is_dev_only, api_node=self.is_api_node,
            price_badge=self.price_badge, search_aliases=self.search_aliases or None,
            essentials_category=self.essentials_category,
            python_module=getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"))


# ----------------------------------------------------------------------------- nodes
class _UIOutput(ABC):
    def __init__(self):
        pass

    @abstractmethod
    def as_dict(self) -> dict:
        ...


class NodeOutput:
    """Standardized node output: positional outputs plus optional ui / expand / block_execution."""

    def __init__(self, *args: Any, ui: _UIOutput | dict = None, expand: dict = None, block_execution: str = None):
        self.args = args
        self.ui = ui
        self.expand = expand
        self.block_execution = block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NodeOutput":
        # v0.3.64 builds cls(args=..., ...), which raises TypeError: returning a dict from
        # execute() does not work there. The stub fails the same way on purpose.
        raise TypeError("NodeOutput.__init__() got an unexpected keyword argument 'args' "
                        "(ComfyUI v0.3.64 cannot take a dict from a V3 execute(); return io.NodeOutput)")

    def __getitem__(self, index) -> Any:
        return self.args[index]


def _first_real_override(cls, name, base):
    base_func = getattr(base, name).__func__
    for c in cls.mro():
        if c is base:
            break
        if name in c.__dict__:
            func = getattr(c, name).__func__
            if func is not base_func:
                return getattr(cls, name)
    return None


class ComfyNode:
    """Base class of V3 nodes. All state lives in classmethods; ComfyUI runs execute() on a
    locked clone of the class (setting a class attribute there raises AttributeError)."""

    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None
    resources = None
    hidden: HiddenHolder = None

    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs) -> list[str]:
        return [name for name in kwargs if kwargs[name] is None]

    def __init__(self):
        self.local_resources = None
        self.__class__.VALIDATE_CLASS()

    @classmethod
    def GET_BASE_CLASS(cls):
        return ComfyNode

    @classmethod
    def VALIDATE_CLASS(cls):
        if _first_real_override(cls, "define_schema", ComfyNode) is None:
            raise Exception(f"No define_schema function was defined for node class {cls.__name__}.")
        if _first_real_override(cls, "execute", ComfyNode) is None:
            raise Exception(f"No execute function was defined for node class {cls.__name__}.")

    @classproperty
    def FUNCTION(cls):  # noqa: N802
        return "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute) else "EXECUTE_NORMALIZED"

    @staticmethod
    def _normalize(cls, out):
        if out is None:
            out = NodeOutput()
        elif isinstance(out, NodeOutput):
            pass
        elif isinstance(out, tuple):
            out = NodeOutput(*out)
        elif isinstance(out, dict):
            out = NodeOutput.from_dict(out)
        else:
            raise Exception(f"Invalid return type from node: {type(out)}")
        if out.expand is not None and not cls.SCHEMA.enable_expand:
            raise Exception(f"Node {cls.__name__} is not expandable, but expand included in NodeOutput; "
                            "developer should set enable_expand=True on node's Schema to allow this.")
        return out

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> NodeOutput:  # noqa: N802
        return ComfyNode._normalize(cls, cls.execute(*args, **kwargs))

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, *args, **kwargs) -> NodeOutput:  # noqa: N802
        return ComfyNode._normalize(cls, await cls.execute(*args, **kwargs))

    @classmethod
    def PREPARE_CLASS_CLONE(cls, hidden_inputs: dict):  # noqa: N802
        clone = type(f"{cls.__name__}Clone", (cls,) + cls.__bases__, dict(cls.__dict__))
        clone.hidden = HiddenHolder.from_dict(hidden_inputs)
        return clone

    @classmethod
    def FINALIZE_SCHEMA(cls):  # noqa: N802
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802
        cls.VALIDATE_CLASS()
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        outs = schema.outputs or []
        cls._RETURN_TYPES = [o.io_type for o in outs]
        cls._RETURN_NAMES = [o.display_name if o.display_name else o.io_type for o in outs]
        cls._OUTPUT_IS_LIST = [o.is_output_list for o in outs]
        cls._OUTPUT_TOOLTIPS = [o.tooltip if o.tooltip else None for o in outs]
        cls.SCHEMA = schema
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:  # noqa: N802
        return asdict(cls.GET_SCHEMA().get_v1_info(cls))

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return cls.FINALIZE_SCHEMA().get_v1_info(cls).input

    def _schema_attr(name, fn):  # noqa: N805
        def getter(cls):
            return fn(cls.GET_SCHEMA() if cls.SCHEMA is None else cls.SCHEMA)
        getter.__name__ = name
        return classproperty(getter)

    DESCRIPTION = _schema_attr("DESCRIPTION", lambda s: s.description)
    CATEGORY = _schema_attr("CATEGORY", lambda s: s.category)
    OUTPUT_NODE = _schema_attr("OUTPUT_NODE", lambda s: s.is_output_node)
    INPUT_IS_LIST = _schema_attr("INPUT_IS_LIST", lambda s: s.is_input_list)
    NOT_IDEMPOTENT = _schema_attr("NOT_IDEMPOTENT", lambda s: s.not_idempotent)
    DEPRECATED = _schema_attr("DEPRECATED", lambda s: s.is_deprecated)
    EXPERIMENTAL = _schema_attr("EXPERIMENTAL", lambda s: s.is_experimental)
    API_NODE = _schema_attr("API_NODE", lambda s: s.is_api_node)
    RETURN_TYPES = classproperty(lambda cls: (cls.GET_SCHEMA(), cls._RETURN_TYPES)[1])
    RETURN_NAMES = classproperty(lambda cls: (cls.GET_SCHEMA(), cls._RETURN_NAMES)[1])
    OUTPUT_IS_LIST = classproperty(lambda cls: (cls.GET_SCHEMA(), cls._OUTPUT_IS_LIST)[1])
    OUTPUT_TOOLTIPS = classproperty(lambda cls: (cls.GET_SCHEMA(), cls._OUTPUT_TOOLTIPS)[1])
    del _schema_attr


__all__ = [
    "FolderType", "UploadType", "RemoteOptions", "NumberDisplay", "comfytype", "Custom", "Input", "WidgetInput",
    "Output", "ComfyTypeI", "ComfyTypeIO", "Boolean", "Int", "Float", "String", "Combo", "MultiCombo", "Image",
    "Mask", "Latent", "Conditioning", "Sampler", "Sigmas", "Noise", "Guider", "Clip", "ControlNet", "Vae", "Model",
    "ClipVision", "ClipVisionOutput", "UpscaleModel", "Audio", "Video", "LoraModel", "Hooks", "TimestepsRange",
    "LatentOperation", "WanCameraEmbedding", "AnyType", "HiddenHolder", "Hidden", "NodeInfoV1", "Schema",
    "ComfyNode", "NodeOutput", "add_to_dict_v1",
]
