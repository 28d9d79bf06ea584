"""Stub of ComfyUI's top-level folder_paths.py (v0.3.64), rooted in a temp directory.

Mirrors: supported_pt_extensions, folder_names_and_paths {name: ([paths], extensions)},
base_path, models_dir, map_legacy("unet"->"diffusion_models", "clip"->"text_encoders"),
get/set_output_directory, get/set_temp_directory, get/set_input_directory,
get/set_user_directory, get_directory_by_type, annotated_filepath, get_annotated_filepath(name,
default_dir=None), exists_annotated_filepath, add_model_folder_path(folder_name, full_folder_path,
is_default=False), get_folder_paths, get_full_path(folder_name, filename),
get_full_path_or_raise, get_filename_list(folder_name) (sorted, relative, "/"-joined),
get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0) ->
(full_output_folder, filename, counter, subfolder, filename_prefix).

Stub-only: set_base_directory(path) re-roots everything (like `main.py --base-directory`); the
default root is $COMFY_STUB_BASE_DIR or a fresh temp dir, removed when the process exits.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

_MODEL_FOLDERS = {
    "checkpoints": (["checkpoints"], supported_pt_extensions),
    "configs": (["configs"], {".yaml"}),
    "loras": (["loras"], supported_pt_extensions),
    "vae": (["vae"], supported_pt_extensions),
    "text_encoders": (["text_encoders", "clip"], supported_pt_extensions),
    "diffusion_models": (["unet", "diffusion_models"], supported_pt_extensions),
    "clip_vision": (["clip_vision"], supported_pt_extensions),
    "embeddings": (["embeddings"], supported_pt_extensions),
    "upscale_models": (["upscale_models"], supported_pt_extensions),
    "model_patches": (["model_patches"], supported_pt_extensions),
}

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
base_path = models_dir = output_directory = temp_directory = input_directory = user_directory = ""


def set_base_directory(path: str) -> None:
    """Stub-only: put models/, output/, input/, temp/, user/, custom_nodes/ under `path`."""
    global base_path, models_dir, output_directory, temp_directory, input_directory, user_directory
    base_path = os.path.abspath(path)
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    for name, (subdirs, exts) in _MODEL_FOLDERS.items():
        folder_names_and_paths[name] = ([os.path.join(models_dir, d) for d in subdirs], set(exts))
    folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")
    user_directory = os.path.join(base_path, "user")
    for d in (output_directory, input_directory):
        os.makedirs(d, exist_ok=True)


def _default_base_directory() -> str:
    """$COMFY_STUB_BASE_DIR (left alone), else a fresh temp dir that is removed at exit."""
    if os.environ.get("COMFY_STUB_BASE_DIR"):
        return os.environ["COMFY_STUB_BASE_DIR"]
    path = tempfile.mkdtemp(prefix="comfy_stub_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


set_base_directory(_default_base_directory())


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def set_output_directory(output_dir: str) -> None:
    global output_directory
    output_directory = output_dir


def set_temp_directory(temp_dir: str) -> None:
    global temp_directory
    temp_directory = temp_dir


def set_input_directory(input_dir: str) -> None:
    global input_directory
    input_directory = input_dir


def set_user_directory(user_dir: str) -> None:
    global user_directory
    user_directory = user_dir


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def get_user_directory() -> str:
    return user_directory


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": get_output_directory, "temp": get_temp_directory,
            "input": get_input_directory}.get(type_name, lambda: None)()


def annotated_filepath(name: str) -> tuple[str, str | None]:
    for tag, getter in (("[output]", get_output_directory), ("[input]", get_input_directory),
                        ("[temp]", get_temp_directory)):
        if name.endswith(tag):
            return name[:-(len(tag) + 1)], getter()
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = default_dir if default_dir is not None else get_input_directory()
    return os.path.join(base_dir, name)


def exists_annotated_filepath(name) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        full = os.path.join(folder, filename)
        if os.path.isfile(full):
            return full
        if os.path.islink(full):
            logging.warning("WARNING path %s exists but doesn't link anywhere, skipping.", full)
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_filename_list(folder_name: str) -> list[str]:
    folder_name = map_legacy(folder_name)
    folders, exts = folder_names_and_paths[folder_name]
    out = set()
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs[:] = [d for d in dirs if d != ".git"]
            rel = [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files]
            out.update(filter_files_extensions(rel, exts))
    return sorted(out)


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    if "%" in filename_prefix:
        now = time.localtime()
        for k, v in (("%width%", image_width), ("%height%", image_height), ("%year%", now.tm_year),
                     ("%month%", f"{now.tm_mon:02}"), ("%day%", f"{now.tm_mday:02}"),
                     ("%hour%", f"{now.tm_hour:02}"), ("%minute%", f"{now.tm_min:02}"),
                     ("%second%", f"{now.tm_sec:02}")):
            filename_prefix = filename_prefix.replace(k, str(v))
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
    counter = 1
    if os.path.isdir(full_output_folder):
        n = len(filename)
        for f in os.listdir(full_output_folder):
            if os.path.normcase(f[:n]) == os.path.normcase(filename) and f[n:n + 1] == "_":
                try:
                    counter = max(counter, int(f[n + 1:].split("_")[0]) + 1)
                except ValueError:
                    pass
    else:
        os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, counter, subfolder, filename_prefix
