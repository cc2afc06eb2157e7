"""Test-only ComfyUI nodes for the host tests (linked into the test server's custom_nodes beside the
pack; never shipped).

* ``ProGRPOTestTinyModel``: loads a tiny model whose family ComfyUI's detection cannot recognise at a
  scaled-down size (Chroma, Z-Image, Lumina 2, Qwen-Image, HiDream, SDXL, AuraFlow: detection fixes
  their widths). The file's header names ComfyUI's model config class and its ``unet_config``
  (tests/host/tiny_models.py writes it); from there the model is built and loaded exactly as
  ``comfy.sd.load_diffusion_model_state_dict`` does once detection has picked the config —
  dtypes, ``weight_dtype`` as UNETLoader's, the patcher — and it registers ``cached_patcher_init``
  so ``clone(force_deepcopy=True)`` reloads it as it does a UNETLoader model.
* ``ProGRPOTestConditioning``: CONDITIONING of given shapes, seeded from the text, for families whose
  text encoders are LLMs or T5 (far too large for the tests): the tensors a text encoder node would
  give, without the encoder.
"""
from __future__ import annotations

import json
import zlib

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
import folder_paths

CONFIG_KEY = "progrpo_test.config"
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def load_tiny(path: str, model_options: dict, disable_dynamic: bool = False):
    """``comfy.sd.load_diffusion_model_state_dict`` with the model config from the file's header."""
    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    spec = json.loads((metadata or {})[CONFIG_KEY])
    model_config = getattr(comfy.supported_models, spec["model"])(spec["unet_config"])
    dtype = model_options.get("dtype", None)
    parameters = comfy.utils.calculate_parameters(sd)
    weight_dtype = comfy.utils.weight_dtype(sd)
    load_device = model_options.get("load_device", mm.get_torch_device())
    offload_device = model_options.get("offload_device", mm.unet_offload_device())
    if dtype is None:
        unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes),
                                   weight_dtype=weight_dtype)
    else:
        unet_dtype = dtype
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype, device=load_device)
    if model_options.get("fp8_optimizations", False):
        model_config.optimizations["fp8"] = True
    model = model_config.get_model(sd, "")
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else comfy.model_patcher.CoreModelPatcher
    patcher = patcher_class(model, load_device=load_device, offload_device=offload_device)
    if not mm.is_device_cpu(offload_device):
        model.to(offload_device)
    model.load_model_weights(sd, "", assign=patcher.is_dynamic())
    patcher.cached_patcher_init = (load_tiny, (path, model_options))
    return patcher


class TinyModel:
    CATEGORY = "ProGRPO tests"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (folder_paths.get_filename_list("diffusion_models"),),
                             "weight_dtype": (WEIGHT_DTYPES,)}}

    def load(self, unet_name, weight_dtype):
        options = {}
        if weight_dtype == "fp8_e4m3fn":
            options["dtype"] = torch.float8_e4m3fn
        elif weight_dtype == "fp8_e4m3fn_fast":
            options["dtype"] = torch.float8_e4m3fn
            options["fp8_optimizations"] = True
        elif weight_dtype == "fp8_e5m2":
            options["dtype"] = torch.float8_e5m2
        return (load_tiny(folder_paths.get_full_path_or_raise("diffusion_models", unet_name), options),)


class TestConditioning:
    CATEGORY = "ProGRPO tests"
    FUNCTION = "make"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""}),
                             "shapes": ("STRING", {"default": '{"cond": [8, 256]}', "tooltip":
                                        'JSON: "cond": [tokens, width] (the cross-attention tensor), optional '
                                        '"pooled": width, and extra entries "key": [dims…] (e.g. '
                                        '"conditioning_llama3": [layers, tokens, width])'})}}

    def make(self, text, shapes):
        spec = json.loads(shapes)
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        tokens, width = spec["cond"]
        cond = torch.randn((1, tokens, width), generator=g)
        extra = {}
        if spec.get("pooled"):
            extra["pooled_output"] = torch.randn((1, spec["pooled"]), generator=g)
        for key, dims in spec.get("extra", {}).items():
            extra[key] = torch.randn((1, *dims), generator=g)
        return ([[cond, extra]],)


NODE_CLASS_MAPPINGS = {"ProGRPOTestTinyModel": TinyModel, "ProGRPOTestConditioning": TestConditioning}
