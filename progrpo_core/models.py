"""Where a run's model and prompts come from.

A model source is a callable returning a :class:`~progrpo_core.denoiser.Denoiser`. The built-in
digits models need nothing else. A real checkpoint (``--model.comfyui CHECKOUT --model.checkpoint
FILE``) is loaded by a *host loader* named ``"module:function"`` in ``model.loader``; by default
that is the pack's own ComfyUI adapter, ``nodes/host/headless.py:load_comfy_denoiser``, which is
imported from the pack folder as a plug-in (under a private package name, so it never collides
with ComfyUI's own ``nodes`` module). The core itself imports neither ComfyUI nor ``nodes``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from .config import TrainConfig
from .denoiser import Denoiser

PACK_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_LOADER = "nodes.host.headless:load_comfy_denoiser"  # relative to the pack folder
_PLUGIN_PACKAGE = "progrpo_pack_nodes"
LOADER_SIGNATURE = "fn(comfyui, checkpoint, device=, resolution=, clip=, clip_type=, vae=)"


def load_model(cfg: TrainConfig, device) -> Denoiser:
    """The denoiser ``cfg.model`` names, on ``device``."""
    m = cfg.model
    if m.comfyui:
        spec = m.loader or COMFYUI_LOADER
        loader = resolve_loader(spec)
        try:
            model = loader(m.comfyui, m.checkpoint, device=str(device), resolution=m.resolution, clip=m.clip,
                           clip_type=m.clip_type, vae=m.vae)
        except (ValueError, FileNotFoundError):
            raise  # the loader's own message
        except Exception as e:  # noqa: BLE001 - any other failure is the plug-in's, and is named as such
            raise ValueError(f"model.loader {spec!r} raised {type(e).__name__}: {str(e)[:300]}. A loader is called as "
                             f"{LOADER_SIGNATURE} and returns a progrpo_core Denoiser") from e
        missing = [a for a in ("family", "sigmas", "denoise", "decode", "encode_prompts", "latent_shape")
                   if not hasattr(model, a)]
        if missing:
            raise ValueError(f"model.loader {spec!r} returned {type(model).__name__}, expected a progrpo_core Denoiser "
                             f"(it lacks {', '.join(missing)}); a loader is called as {LOADER_SIGNATURE}")
        return model
    from .embedded import load_digits_model

    model = load_digits_model(m.name, m.path)
    model.net.to(device)
    return model


def resolve_loader(spec: str) -> Callable[..., Any]:
    """The callable a ``"module:function"`` spec names. ``nodes.…`` specs are the pack's own host
    adapter, imported from the pack folder."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"model.loader={spec!r} must be 'package.module:function'")
    try:
        mod = _import_pack_nodes(module) if module.split(".")[0] == "nodes" else importlib.import_module(module)
        fn = getattr(mod, attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model.loader={spec!r}: cannot import it ({e}). Run from the pack's folder with a python "
                         "that has ComfyUI's requirements, or name your own loader as 'package.module:function'") from e
    if not callable(fn):
        raise ValueError(f"model.loader={spec!r} is not callable")
    return fn


def _import_pack_nodes(module: str):
    """``nodes.<sub>`` of this pack, imported as ``progrpo_pack_nodes.<sub>``."""
    if _PLUGIN_PACKAGE not in sys.modules:
        init = PACK_ROOT / "nodes" / "__init__.py"
        if not init.is_file():
            raise ImportError(f"the pack's host adapter is not beside the core (no {init})")
        spec = importlib.util.spec_from_file_location(_PLUGIN_PACKAGE, init,
                                                      submodule_search_locations=[str(init.parent)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PLUGIN_PACKAGE] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[_PLUGIN_PACKAGE]
            raise
    return importlib.import_module(_PLUGIN_PACKAGE + module[len("nodes"):])


def load_prompts(path: str | None, model: Denoiser) -> list[str]:
    """The prompt file's prompts (one per line, ``#`` comments), or the model's built-in set."""
    if path is None:
        prompts = list(getattr(model, "default_prompts", ()) or ())
        if not prompts:
            raise ValueError("this model has no built-in prompt set; give a prompt file with --run.prompts")
        return prompts
    from .io import input_file

    p = input_file(path, "prompt file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompt file {p} is not UTF-8 text; write one prompt per line in a text file") from None
    if "\x00" in text:
        raise ValueError(f"prompt file {p} holds NUL characters, so it is not a text file; write one prompt per line "
                         "in a text file")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.startswith("#")]
    if not lines:
        raise ValueError(f"prompt file {p} has no prompts; write one prompt per line")
    check = getattr(model, "check_prompt", None)
    if check is not None:  # the whole file now, not the line an epoch happens to draw hours later
        for n, line in lines:
            try:
                check(line)
            except ValueError as e:
                raise ValueError(f"prompt file {p}, line {n}: {e}") from None
    return [line for _, line in lines]
