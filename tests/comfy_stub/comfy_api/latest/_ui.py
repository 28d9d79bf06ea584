"""Stub of comfy_api/latest/_ui.py (ComfyUI v0.3.64): what a V3 node puts in NodeOutput(ui=...).

Mirrors: SavedResult(filename, subfolder, type) (a dict), SavedImages(results, is_animated=False),
ImageSaveHelper.save_images / get_save_images_ui / save_animated_png / get_save_animated_png_ui /
save_animated_webp / get_save_animated_webp_ui (PNG metadata is not written by the stub),
PreviewImage(image, animated=False, cls=None, **kwargs) (saves to the temp dir),
PreviewMask(mask, animated=False, cls=None, **kwargs), PreviewVideo(values, **kwargs),
PreviewUI3D(model_file, camera_info, **kwargs), PreviewText(value, **kwargs) whose as_dict() is
{"text": (value,)} (the frontend shows ui["text"][0] under the node).
"""
from __future__ import annotations

import os
import random

import numpy as np

import folder_paths
from comfy_api.latest._io import FolderType, _UIOutput


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type: FolderType):
        super().__init__(filename=filename, subfolder=subfolder, type=type.value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    def __init__(self, results: list[SavedResult], is_animated: bool = False):
        super().__init__()
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict:
        data = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


def _dir_for(folder_type: FolderType) -> str:
    if folder_type == FolderType.input:
        return folder_paths.get_input_directory()
    if folder_type == FolderType.output:
        return folder_paths.get_output_directory()
    return folder_paths.get_temp_directory()


def _to_pil(image_tensor):
    from PIL import Image as PILImage
    return PILImage.fromarray(np.clip(255.0 * image_tensor.detach().cpu().float().numpy(), 0, 255).astype(np.uint8))


class ImageSaveHelper:
    @staticmethod
    def save_images(images, filename_prefix: str, folder_type: FolderType, cls, compress_level=4) -> list[SavedResult]:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, _dir_for(folder_type), images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            _to_pil(image).save(os.path.join(folder, name), compress_level=compress_level)
            results.append(SavedResult(name, subfolder, folder_type))
            counter += 1
        return results

    @staticmethod
    def get_save_images_ui(images, filename_prefix: str, cls, compress_level=4) -> SavedImages:
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix=filename_prefix,
                                                       folder_type=FolderType.output, cls=cls,
                                                       compress_level=compress_level))

    @staticmethod
    def save_animated_png(images, filename_prefix: str, folder_type: FolderType, cls, fps: float,
                          compress_level: int) -> SavedResult:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, _dir_for(folder_type), images[0].shape[1], images[0].shape[0])
        frames = [_to_pil(x) for x in images]
        name = f"{filename}_{counter:05}_.png"
        frames[0].save(os.path.join(folder, name), compress_level=compress_level, save_all=True,
                       duration=int(1000.0 / fps), append_images=frames[1:])
        return SavedResult(name, subfolder, folder_type)

    @staticmethod
    def get_save_animated_png_ui(images, filename_prefix: str, cls, fps: float, compress_level: int) -> SavedImages:
        r = ImageSaveHelper.save_animated_png(images, filename_prefix=filename_prefix, folder_type=FolderType.output,
                                              cls=cls, fps=fps, compress_level=compress_level)
        return SavedImages([r], is_animated=len(images) > 1)

    @staticmethod
    def save_animated_webp(images, filename_prefix: str, folder_type: FolderType, cls, fps: float, lossless: bool,
                           quality: int, method: int) -> SavedResult:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, _dir_for(folder_type), images[0].shape[1], images[0].shape[0])
        frames = [_to_pil(x) for x in images]
        name = f"{filename}_{counter:05}_.webp"
        frames[0].save(os.path.join(folder, name), save_all=True, duration=int(1000.0 / fps),
                       append_images=frames[1:], lossless=lossless, quality=quality, method=method)
        return SavedResult(name, subfolder, folder_type)

    @staticmethod
    def get_save_animated_webp_ui(images, filename_prefix: str, cls, fps: float, lossless: bool, quality: int,
                                  method: int) -> SavedImages:
        r = ImageSaveHelper.save_animated_webp(images, filename_prefix=filename_prefix,
                                               folder_type=FolderType.output, cls=cls, fps=fps, lossless=lossless,
                                               quality=quality, method=method)
        return SavedImages([r], is_animated=len(images) > 1)


class PreviewImage(_UIOutput):
    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.values = ImageSaveHelper.save_images(image, filename_prefix=prefix, folder_type=FolderType.temp,
                                                  cls=cls, compress_level=1)
        self.animated = animated

    def as_dict(self):
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    def __init__(self, mask, animated: bool = False, cls=None, **kwargs):
        preview = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(preview, animated, cls, **kwargs)


class PreviewVideo(_UIOutput):
    def __init__(self, values: list, **kwargs):
        self.values = values

    def as_dict(self):
        return {"images": self.values, "animated": (True,)}


class PreviewUI3D(_UIOutput):
    def __init__(self, model_file, camera_info, **kwargs):
        self.model_file = model_file
        self.camera_info = camera_info

    def as_dict(self):
        return {"result": [self.model_file, self.camera_info]}


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}


__all__ = ["SavedResult", "SavedImages", "ImageSaveHelper", "PreviewImage", "PreviewMask", "PreviewVideo",
           "PreviewUI3D", "PreviewText"]
