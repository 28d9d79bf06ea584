"""Where head profiles live in a ComfyUI install, and how Profile Heads saves one.

Saved to ``<output>/dummy_forcing/profiles/<name>.safetensors`` (never overwriting: ``_2``,
``_3``, ... are tried), listed from there and from ``<models>/dummy_forcing_profiles`` as the
folder_paths folder ``dummy_forcing_profiles``. :func:`check_save_name` checks everything
that can be checked before a run (the name, its length, the folder), so a bad name fails
before minutes of profiling, not after.
"""
from __future__ import annotations

import os
import re

import folder_paths

from dummy_forcing_core.errors import SettingError
from dummy_forcing_core.head_profile import HeadProfile

__all__ = ["PROFILE_FOLDER", "profile_output_dir", "register_profile_folders", "list_profiles", "profile_path",
           "check_save_name", "save_profile"]

PROFILE_FOLDER = "dummy_forcing_profiles"
PROFILE_OUTPUT_SUBDIR = os.path.join("dummy_forcing", "profiles")
PROFILE_EXT = ".safetensors"
MAX_SUFFIXES = 10000
NAME_BYTES = 255 - len(f"_{MAX_SUFFIXES}{PROFILE_EXT}") - len(".head_profile.XXXXXXXX.tmp")


def profile_output_dir() -> str:
    return os.path.join(folder_paths.get_output_directory(), PROFILE_OUTPUT_SUBDIR)


def register_profile_folders() -> None:
    """<models>/dummy_forcing_profiles and <output>/dummy_forcing/profiles as the folder
    'dummy_forcing_profiles' (idempotent; also picks up a changed output directory)."""
    add = getattr(folder_paths, "add_model_folder_path", None)
    if add is None:
        return
    models_dir = getattr(folder_paths, "models_dir", None)
    if models_dir:
        add(PROFILE_FOLDER, os.path.join(models_dir, PROFILE_FOLDER))
    add(PROFILE_FOLDER, profile_output_dir())


def list_profiles() -> list[str]:
    register_profile_folders()
    try:
        names = folder_paths.get_filename_list(PROFILE_FOLDER)
    except Exception:
        names = []
    return sorted(n for n in names if n.lower().endswith(PROFILE_EXT))


def profile_path(name: str) -> str:
    register_profile_folders()
    path = folder_paths.get_full_path(PROFILE_FOLDER, name)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(PROFILE_FOLDER))
        raise SettingError("input", "profile_name", f"head profile {name!r} not found in {where}")
    return path


def check_save_name(name: str) -> str:
    """The path prefix ``<output>/dummy_forcing/profiles/<name>`` for a valid ``save_name``,
    with the folder made (or a SettingError naming 'save_name' saying what to change)."""
    name = (name or "").strip()
    if name.lower().endswith(PROFILE_EXT):
        name = name[: -len(PROFILE_EXT)]
    if not name or name in (".", "..") or re.search(r"[\\/:*?\"<>|\x00-\x1f]", name) or name.startswith("."):
        raise SettingError("profiling", "save_name", f"'save_name' {name!r} is not a plain file name; use letters, "
                           "digits, '-', '_' (no folders), e.g. self_forcing_480p")
    if len(name.encode("utf-8")) > NAME_BYTES:
        raise SettingError("profiling", "save_name", f"'save_name' is {len(name.encode('utf-8'))} bytes long; file "
                           f"names may have at most {NAME_BYTES} here: use a shorter name")
    folder = profile_output_dir()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise SettingError("profiling", "save_name", f"cannot create the profile folder {folder} ({e.strerror or e}); "
                           "something in its path is a file, or the output folder is not writable") from e
    if not os.access(folder, os.W_OK):
        raise SettingError("profiling", "save_name", f"the profile folder {folder} is not writable")
    return os.path.join(folder, name)


def save_profile(profile: HeadProfile, prefix: str) -> str:
    """Save as ``<prefix>.safetensors`` or the first free ``<prefix>_N.safetensors``, reserving
    the name first (another run may pick it too); never overwrites, never loops forever. A
    dangling symlink or any other entry counts as taken."""
    for i in range(1, MAX_SUFFIXES + 1):
        path = prefix + (PROFILE_EXT if i == 1 else f"_{i}{PROFILE_EXT}")
        if os.path.lexists(path):
            continue
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        try:
            return profile.save(path)
        except BaseException:
            if os.path.lexists(path) and os.path.getsize(path) == 0:
                os.remove(path)
            raise
    raise SettingError("profiling", "save_name", f"{prefix}{PROFILE_EXT} and its {MAX_SUFFIXES - 1} numbered "
                       "variants are all taken: pick another 'save_name'")
