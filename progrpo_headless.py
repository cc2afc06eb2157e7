"""The pack's headless ComfyUI loader, as a plug-in of the core: ``pyproject.toml`` registers
:func:`load_comfy_denoiser` in the entry-point group ``progrpo_core.model_loaders`` under the name
``comfyui``, which is what ``python -m progrpo_core train --model.comfyui CHECKOUT --model.checkpoint
FILE`` loads with. The core names no module of the pack; it finds this one through the registry.

The node pack's ``nodes`` package is imported here under a private name, ``progrpo_pack_nodes``, so
it never collides with ComfyUI's own top-level ``nodes`` module once ComfyUI is on ``sys.path``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PACK_ROOT = Path(__file__).resolve().parent
PACKAGE = "progrpo_pack_nodes"


def pack_nodes(module: str = "") -> ModuleType:
    """The pack's ``nodes`` package (or its submodule ``module``, e.g. ``"host.headless"``), imported
    as ``progrpo_pack_nodes``."""
    if PACKAGE not in sys.modules:
        init = PACK_ROOT / "nodes" / "__init__.py"
        if not init.is_file():
            raise ImportError(f"the pack's nodes are not beside this module (no {init})")
        spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    return importlib.import_module(f"{PACKAGE}.{module}" if module else PACKAGE)


def load_comfy_denoiser(*args: Any, **kwargs: Any):
    """:func:`nodes.host.headless.load_comfy_denoiser`: a ComfyUI checkpoint as the core's Denoiser."""
    return pack_nodes("host.headless").load_comfy_denoiser(*args, **kwargs)
