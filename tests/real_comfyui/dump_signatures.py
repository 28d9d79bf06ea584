"""Print the call signatures of the ComfyUI interfaces the stub mirrors, as JSON.

    python dump_signatures.py real COMFYUI_DIR     (run with the ComfyUI interpreter)
    python dump_signatures.py stub STUB_DIR        (any interpreter with torch)
test_stub_matches_real.py compares the two dumps.
"""
import importlib
import inspect
import json
import sys

CALLABLES = {
    "comfy.model_patcher": ["ModelPatcher.__init__", "ModelPatcher.clone", "ModelPatcher.is_clone",
                            "ModelPatcher.add_object_patch", "ModelPatcher.get_model_object",
                            "ModelPatcher.add_patches", "ModelPatcher.model_size", "ModelPatcher.model_dtype",
                            "ModelPatcher.set_model_patch", "ModelPatcher.set_model_patch_replace",
                            "ModelPatcher.set_model_attn1_replace", "ModelPatcher.set_model_unet_function_wrapper",
                            "ModelPatcher.add_callback", "ModelPatcher.add_callback_with_key",
                            "ModelPatcher.add_wrapper", "ModelPatcher.add_wrapper_with_key",
                            "ModelPatcher.get_all_wrappers", "ModelPatcher.remove_wrappers_with_key",
                            "ModelPatcher.set_attachments", "ModelPatcher.get_attachment",
                            "ModelPatcher.patch_model", "ModelPatcher.unpatch_model", "ModelPatcher.detach",
                            "ModelPatcher.partially_load", "ModelPatcher.model_patches_to",
                            "ModelPatcher.set_model_compute_dtype", "ModelPatcher.cleanup",
                            "create_model_options_clone", "set_model_options_patch_replace"],
    "comfy.model_management": ["get_torch_device", "intermediate_device", "unet_offload_device", "vae_device",
                               "load_models_gpu", "load_model_gpu", "loaded_models", "unload_all_models",
                               "soft_empty_cache", "module_size", "throw_exception_if_processing_interrupted",
                               "interrupt_current_processing", "processing_interrupted", "cast_to_device",
                               "free_memory", "get_free_memory"],
    "comfy.utils": ["ProgressBar.__init__", "ProgressBar.update", "ProgressBar.update_absolute",
                    "set_progress_bar_global_hook", "set_progress_bar_enabled", "get_attr", "set_attr",
                    "load_torch_file", "save_torch_file", "repeat_to_batch_size", "common_upscale"],
    "comfy.latent_formats": ["Wan21.process_in", "Wan21.process_out", "LatentFormat.process_in"],
    "comfy.model_base": ["BaseModel.__init__", "BaseModel.apply_model", "BaseModel.get_dtype",
                         "BaseModel.process_latent_in", "BaseModel.process_latent_out", "WAN21.__init__"],
    "comfy.supported_models": ["WAN21_T2V.__init__", "WAN21_T2V.get_model", "WAN21_T2V.set_inference_dtype"],
    "comfy.model_sampling": ["time_snr_shift", "ModelSamplingDiscreteFlow.__init__",
                             "ModelSamplingDiscreteFlow.set_parameters", "ModelSamplingDiscreteFlow.timestep",
                             "ModelSamplingDiscreteFlow.sigma", "ModelSamplingDiscreteFlow.percent_to_sigma",
                             "CONST.calculate_denoised", "CONST.noise_scaling"],
    "comfy.patcher_extension": ["add_wrapper_with_key", "get_all_wrappers", "add_callback_with_key",
                                "get_all_callbacks", "WrapperExecutor.__init__", "WrapperExecutor.new_executor",
                                "WrapperExecutor.new_class_executor", "copy_nested_dicts", "merge_nested_dicts"],
    "folder_paths": ["get_output_directory", "get_input_directory", "get_temp_directory", "set_output_directory",
                     "get_annotated_filepath", "exists_annotated_filepath", "get_full_path",
                     "get_full_path_or_raise", "get_filename_list", "get_folder_paths", "add_model_folder_path",
                     "get_save_image_path", "map_legacy", "get_directory_by_type"],
    "comfy_api.latest": ["ComfyExtension.get_node_list", "ComfyExtension.on_load"],
    "comfy_api.latest._io": ["Input.__init__", "WidgetInput.__init__", "Output.__init__", "Boolean.Input.__init__",
                             "Int.Input.__init__", "Float.Input.__init__", "String.Input.__init__",
                             "Combo.Input.__init__", "Combo.Output.__init__", "MultiCombo.Input.__init__",
                             "Model.Input.__init__", "Model.Output.__init__", "Custom", "Schema.__init__",
                             "NodeOutput.__init__", "HiddenHolder.__init__", "ComfyNode.execute",
                             "ComfyNode.define_schema", "ComfyNode.INPUT_TYPES", "RemoteOptions.__init__"],
    "comfy_api.latest._ui": ["PreviewText.__init__", "PreviewImage.__init__", "PreviewMask.__init__",
                             "PreviewVideo.__init__", "SavedResult.__init__", "SavedImages.__init__",
                             "ImageSaveHelper.save_images", "ImageSaveHelper.get_save_images_ui",
                             "ImageSaveHelper.save_animated_png", "ImageSaveHelper.get_save_animated_png_ui",
                             "ImageSaveHelper.save_animated_webp", "ImageSaveHelper.get_save_animated_webp_ui"],
}
IO_TYPES = ["Boolean", "Int", "Float", "String", "Combo", "MultiCombo", "Image", "Mask", "Latent", "Conditioning",
            "Sampler", "Sigmas", "Noise", "Guider", "Clip", "ControlNet", "Vae", "Model", "ClipVision",
            "UpscaleModel", "Audio", "Video", "LoraModel", "Hooks", "AnyType"]
CONSTANTS = {"comfy.patcher_extension": ["CallbacksMP", "WrappersMP"], "comfy.latent_formats": ["Wan21"]}


def _sig(obj):
    sig = inspect.signature(obj)
    return [[p.name, p.kind.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
            for p in sig.parameters.values()]


def main(mode, path):
    if mode == "real":
        sys.argv = [sys.argv[0], "--cpu"]
        sys.path.insert(0, path)
        import comfy.options
        comfy.options.enable_args_parsing()
    else:
        sys.path.insert(0, path)
    out = {"signatures": {}, "io_types": {}, "constants": {}}
    for mod_name, names in CALLABLES.items():
        mod = importlib.import_module(mod_name)
        for name in names:
            obj = mod
            try:
                for part in name.split("."):
                    obj = getattr(obj, part)
                out["signatures"][f"{mod_name}.{name}"] = _sig(obj)
            except (AttributeError, ValueError, TypeError) as e:
                out["signatures"][f"{mod_name}.{name}"] = f"missing: {e}"
    io = importlib.import_module("comfy_api.latest").io
    for t in IO_TYPES:
        cls = getattr(io, t, None)
        out["io_types"][t] = None if cls is None else str(cls.io_type)
    for mod_name, names in CONSTANTS.items():
        mod = importlib.import_module(mod_name)
        for n in names:
            c = getattr(mod, n)
            out["constants"][f"{mod_name}.{n}"] = {k: v for k, v in vars(c).items()
                                                   if k.isupper() or k in ("latent_channels", "latent_dimensions")}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
