"""Where a run's model and prompts come from.

A model source is a callable returning a :class:`~progrpo_core.denoiser.Denoiser`. The built-in
digits models need nothing else. A real checkpoint (``--model.comfyui CHECKOUT --model.checkpoint
FILE``) is loaded by a *model loader*: ``model.loader`` names one as ``"package.module:function"``;
by default it is the loader registered under the name ``comfyui`` — by a plug-in, in the
entry-point group ``progrpo_core.model_loaders`` (the node pack registers its ComfyUI adapter there,
``pyproject.toml``), or in this process with :func:`register_loader`. The core itself imports
neither ComfyUI nor the node pack, and names no module of either.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from .config import TrainConfig
from .denoiser import Denoiser

LOADER_GROUP = "progrpo_core.model_loaders"
LOADER_SIGNATURE = "fn(comfyui, checkpoint, device=, resolution=, clip=, clip_type=, vae=)"
_LOADERS: dict[str, Callable[..., Denoiser]] = {}


def register_loader(name: str, loader: Callable[..., Denoiser]) -> None:
    """Make ``loader(comfyui, checkpoint, device=, resolution=, clip=, clip_type=, vae=)`` the model
    loader called ``name`` in this process (``comfyui`` is the default one)."""
    _LOADERS[name] = loader


def model_loader(name: str = "comfyui") -> Callable[..., Denoiser]:
    """The model loader registered as ``name``: in this process, else by a plug-in's entry point."""
    if name in _LOADERS:
        return _LOADERS[name]
    found = [ep for ep in entry_points(group=LOADER_GROUP) if ep.name == name]
    if not found:
        raise ValueError(f"no model loader called {name!r} is registered (entry-point group {LOADER_GROUP}). The node "
                         "pack registers 'comfyui' when it is installed: run `python -m pip install -e .` in its folder "
                         "with the python that has ComfyUI's requirements, or name a loader with --model.loader "
                         "package.module:function")
    try:
        return found[0].load()
    except (ImportError, AttributeError) as e:
        raise ValueError(f"the model loader {name!r} ({found[0].value}) cannot be imported: {e}") from e


def load_model(cfg: TrainConfig, device) -> Denoiser:
    """The denoiser ``cfg.model`` names, on ``device``."""
    m = cfg.model
    if m.comfyui:
        spec = m.loader or "comfyui"
        loader = resolve_loader(m.loader) if m.loader else model_loader("comfyui")
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
    """The callable a ``"package.module:function"`` spec names."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"model.loader={spec!r} must be 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model.loader={spec!r}: cannot import it ({e}); name an importable "
                         "'package.module:function'") from e
    if not callable(fn):
        raise ValueError(f"model.loader={spec!r} is not callable")
    return fn


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
