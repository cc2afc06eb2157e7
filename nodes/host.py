"""The one module of the pack that knows ComfyUI.

Everything that touches a ModelPatcher (MODEL), CONDITIONING, LATENT dicts, IMAGE tensors
``(B, H, W, C)``, VAE/CLIP objects, ``folder_paths``, progress bars or the interrupt flag lives
here, and converts to the core's types at the boundary, once:

* :class:`ComfyDenoiser` wraps a MODEL as the core's :class:`~progrpo_core.denoiser.Denoiser`
  (family from ``model_sampling``, sigmas from its schedule, latents in its latent format, the
  CFG-combined x0 estimate through ``comfy.samplers.CFGGuider``, decoding through the VAE);
* :class:`ComfyLoraAdapter` is a trainable LoRA added through ComfyUI's own weight-wrapper
  mechanism (``ModelPatcher.add_weight_wrapper``), with the interface the core's Trainer expects;
* :func:`training_model` is the context in which training happens inside the host: out of
  inference mode, on a clone of the MODEL, with ``in_training`` set and optional gradient
  checkpointing, all undone on exit even on error;
* small helpers for files, progress/preview and the UI.

ComfyUI modules are imported inside functions only, so this module (and with it the node
definitions) imports where ComfyUI is absent; the functions that need ComfyUI say so.

Spaces: the core samples each family in its native space. Flow models' native space is
ComfyUI's model space (``latent_format.process_in`` of a LATENT). For ε/v-prediction models
ComfyUI's latent is ``x_comfy = x0 + σ·ε``, the core's VP latent is
``x_vp = x_comfy / sqrt(1 + σ²)``; the x0 estimate is the same in both.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from progrpo_core.lora import LoraWeights
from progrpo_core.lora_format import check_rank_alpha, decode_header, read_lora_file

log = logging.getLogger("progrpo")

LORA_PREFIX = "diffusion_model."
TARGET_PRESETS = ("attention", "all linear")
REWARD_FOLDER = "reward_models"
SCHEDULER = "simple"  # ComfyUI's default for flow models; trailing DDIM spacing for ε models


# ---- IMAGE / LATENT at the boundary (no ComfyUI needed) ----------------------------------------

def image_to_core(image: torch.Tensor, what: str = "IMAGE") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] → the core's (B, 3, H, W) float32."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what}: expected an IMAGE batch (B, H, W, C), got {shape}")
    c = image.shape[-1]
    if c == 1:
        image = image.expand(-1, -1, -1, 3)
    elif c == 4:
        image = image[..., :3]
    elif c != 3:
        raise ValueError(f"{what}: expected 1, 3 or 4 channels last (B, H, W, C), got shape {tuple(image.shape)}")
    return image.movedim(-1, 1).float().clamp(0, 1).contiguous()


def core_to_image(images: torch.Tensor) -> torch.Tensor:
    """The core's (B, 3, H, W) in [0, 1] → ComfyUI IMAGE (B, H, W, 3) float32 on the CPU."""
    return images.detach().float().clamp(0, 1).movedim(1, -1).cpu().contiguous()


def latent_samples(latent: dict, what: str = "LATENT") -> torch.Tensor:
    """The ``samples`` tensor (B, C, H, W) of a LATENT dict."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"{what}: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    s = latent["samples"]
    if s.ndim != 4:
        raise ValueError(f"{what}: only image latents (B, C, H, W) are supported, got shape {tuple(s.shape)}")
    return s


def pil_of(image_chw: torch.Tensor):
    """(3, H, W) in [0, 1] → PIL image."""
    from PIL import Image

    arr = (image_chw.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


# ---- model family ----------------------------------------------------------------------------

def model_family(patcher) -> str:
    """``"flow"`` for flow-matching models (CONST sampling: SD3.x, Flux, …), ``"eps"`` for VP
    diffusion (``x = x0 + σε``: ε-, v- and x0-prediction, SD1.x/SDXL); a ``ValueError`` otherwise."""
    import comfy.model_sampling as cms

    ms = patcher.get_model_object("model_sampling")
    kind = f"{type(patcher.model).__name__} (model_sampling {type(ms).__name__})"
    unsupported = tuple(getattr(cms, n) for n in ("IMG_TO_IMG", "IMG_TO_IMG_FLOW", "COSMOS_RFLOW",
                                                  "V_PREDICTION_DDPM") if hasattr(cms, n))
    if unsupported and isinstance(ms, unsupported):
        raise ValueError(f"the model {kind} uses a parameterisation ProGRPO's samplers do not handle; "
                         "supported: flow matching (SD3.x, Flux) and eps/v-prediction diffusion (SD1.x, SDXL)")
    if isinstance(ms, cms.CONST):
        return "flow"
    if isinstance(ms, cms.EPS):  # V_PREDICTION, EDM and X0 subclass EPS: all x = x0 + σε
        return "eps"
    raise ValueError(f"the model {kind} is neither flow matching nor eps/v-prediction diffusion; "
                     "ProGRPO's samplers support SD3.x, Flux, SD1.x and SDXL-type models")


def target_modules(net: nn.Module, preset: str) -> list[str]:
    """Module paths (relative to ``net``) of the Linear layers a LoRA preset adapts.

    ``attention``: Linear layers inside attention blocks (paths containing ``attn``: SD1.x/SDXL
    ``attn1/attn2.to_q…``, SD3 ``attn.qkv/proj``, Flux ``img_attn/txt_attn``) plus Flux single
    blocks' fused ``linear1``/``linear2``; ``all linear``: every Linear layer."""
    if preset not in TARGET_PRESETS:
        raise ValueError(f"LoRA targets {preset!r} unknown; expected one of {', '.join(TARGET_PRESETS)}")
    out = []
    for name, m in net.named_modules():
        if not isinstance(m, nn.Linear) or getattr(m, "weight", None) is None or m.weight.ndim != 2:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if preset == "all linear" or "attn" in name or ("single_blocks" in name and leaf in ("linear1", "linear2")):
            out.append(name)
    if not out:
        raise ValueError(f"the model has no Linear layer matching LoRA targets {preset!r}; try 'all linear'")
    return out


# ---- the denoiser ----------------------------------------------------------------------------

class RowConds:
    """The host's batched conditioning: for each row, the index of its prompt's conditioning."""

    __slots__ = ("index",)

    def __init__(self, index: torch.Tensor):
        self.index = index.long().cpu()

    def __len__(self) -> int:
        return int(self.index.shape[0])


class _SessionSampler:
    """A ``comfy.samplers.Sampler`` whose ``sample`` runs ``body(guider, extra_args)`` once: the
    guider has prepared the model (loaded, patched, conds processed), the body calls it freely."""

    def __init__(self, body: Callable[[Any, dict], Any]):
        self.body = body
        self.result = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.result = self.body(model_wrap, extra_args)
        return torch.zeros_like(noise)

    def max_denoise(self, model_wrap, sigmas):  # part of ComfyUI's Sampler interface
        return True


class ComfyDenoiser:
    """A ComfyUI MODEL as the core's Denoiser.

    ``latent_shape`` is one latent's (C, H, W) in model channels. Prompts are registered with
    :meth:`add_prompt` (CONDITIONING pairs) or encoded on demand with ``clip``. Model calls go
    through a ``CFGGuider``: inside :meth:`run` one guider session serves every call; outside,
    each :meth:`denoise` call opens its own (slower, but correct; used headless)."""

    lora_prefix = LORA_PREFIX

    def __init__(self, patcher, latent_shape: Sequence[int], vae=None, clip=None, targets: str = "attention",
                 name: str | None = None, max_batch: int = 0):
        self.patcher = patcher
        self.family = model_family(patcher)
        self.latent_format = patcher.model.latent_format
        channels = int(getattr(self.latent_format, "latent_channels", latent_shape[0]))
        if int(latent_shape[0]) != channels:
            raise ValueError(f"the LATENT has {latent_shape[0]} channels but the model "
                             f"({type(patcher.model).__name__}) works on {channels}-channel latents; make the latent "
                             f"with the node that belongs to this model (e.g. EmptySD3LatentImage for SD3/Flux, "
                             f"EmptyLatentImage for SD1.x/SDXL)")
        if vae is not None:
            check_vae(vae, channels)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.net = patcher.model.diffusion_model
        self.lora_targets = target_modules(self.net, targets)
        self.vae, self.clip = vae, clip
        self.name = name or type(patcher.model).__name__
        self.max_batch = int(max_batch)
        self._prompt_index: dict[str, int] = {}
        self._conds: list[tuple[list, list]] = []
        self._session: tuple[Any, dict, dict] | None = None
        self._fingerprint: str | None = None
        self.model_calls = 0

    # -- prompts --------------------------------------------------------------------------------
    def add_prompt(self, text: str, positive: list, negative: list | None = None) -> int:
        """Register CONDITIONING for ``text`` (negative: an empty-prompt encoding or zeros)."""
        if self._session is not None:
            raise RuntimeError("prompts must be registered before the sampling session starts")
        if negative is None:
            negative = self._default_negative(positive)
        self._prompt_index[text] = len(self._conds)
        self._conds.append((positive, negative))
        return self._prompt_index[text]

    def _default_negative(self, positive: list) -> list:
        if self.clip is not None:
            return encode_text(self.clip, "")
        return [[torch.zeros_like(t), {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else v)
                                       for k, v in d.items()}] for t, d in positive]

    def encode_prompts(self, prompts: Sequence[str]) -> RowConds:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_index]
        for p in missing:
            if self.clip is None:
                raise ValueError(f"no conditioning for prompt {p!r}: connect a CLIP, or give the prompt's CONDITIONING")
            self.add_prompt(p, encode_text(self.clip, p))
        return RowConds(torch.tensor([self._prompt_index[p] for p in prompts], dtype=torch.long))

    def select_cond(self, cond: RowConds, index: torch.Tensor) -> RowConds:
        return RowConds(cond.index[index.cpu()])

    # -- schedule and spaces --------------------------------------------------------------------
    def model_sampling(self):
        return self.patcher.get_model_object("model_sampling")

    def sigmas(self, steps: int) -> torch.Tensor:
        import comfy.samplers

        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        s = comfy.samplers.calculate_sigmas(self.model_sampling(), SCHEDULER, steps).float().cpu()
        if s.shape[0] != steps + 1 or float(s[-1]) != 0.0:
            raise RuntimeError(f"ComfyUI's {SCHEDULER!r} schedule gave {s.shape[0]} sigmas for {steps} steps")
        return s

    def to_comfy(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Native latent → ComfyUI model-space latent (identity for flow)."""
        if self.family == "flow":
            return x
        s = sigma.to(x).reshape(-1, *([1] * (x.ndim - 1)))
        return x * torch.sqrt(1 + s**2)

    def from_comfy(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.family == "flow":
            return x
        s = sigma.to(x).reshape(-1, *([1] * (x.ndim - 1)))
        return x / torch.sqrt(1 + s**2)

    def to_latent(self, x0: torch.Tensor) -> dict:
        """Model-space clean latents → a LATENT dict (VAE space) on the CPU."""
        return {"samples": self.latent_format.process_out(x0.detach().float()).cpu()}

    # -- model calls ----------------------------------------------------------------------------
    def run(self, body: Callable[[], Any], sigmas: torch.Tensor | None = None, max_rows: int = 1) -> Any:
        """Run ``body()`` inside one guider session: the model is loaded and patched once and
        every :meth:`denoise` call reuses it. Exceptions (and interrupts) propagate."""
        if self._session is not None:
            return body()
        import comfy.samplers

        if not self._conds:
            raise ValueError("no prompt conditioning registered; encode at least one prompt first")
        guider = comfy.samplers.CFGGuider(self.patcher)
        conds = {}
        for i, (pos, neg) in enumerate(self._conds):
            conds[_key("positive", i)] = pos
            conds[_key("negative", i)] = neg
        guider.inner_set_conds(conds)
        if sigmas is None:
            sigmas = self.sigmas(1)
        c, h, w = self.latent_shape
        noise = torch.zeros((max(1, int(max_rows)), c, h, w))  # shapes memory estimates and cond encoding

        def session(model_wrap, extra_args):
            all_conds = model_wrap.conds
            self._session = (model_wrap, extra_args, all_conds)
            try:
                return body()
            finally:
                model_wrap.conds = all_conds
                self._session = None

        sampler = _SessionSampler(session)
        guider.sample(noise, torch.zeros_like(noise), sampler, sigmas.float(), seed=0, disable_pbar=True)
        return sampler.result

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: RowConds, cfg: float = 1.0) -> torch.Tensor:
        if self._session is None:  # headless: one session per call
            rows = int(x.shape[0])
            return self.run(lambda: self.denoise(x, sigma, cond, cfg), max_rows=rows)
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        model_wrap, extra_args, all_conds = self._session
        n = x.shape[0]
        sigma = sigma.reshape(-1).expand(n).float()
        device = self.patcher.load_device
        x_c = self.to_comfy(x.float(), sigma).to(device)
        sig = sigma.to(device)
        out = torch.empty_like(x_c)
        index = cond.index
        if index.shape[0] != n:
            raise ValueError(f"{n} latents but conditioning for {index.shape[0]} rows")
        old_cfg = model_wrap.cfg
        try:
            model_wrap.cfg = float(cfg)
            for g in index.unique().tolist():
                rows = (index == g).nonzero().flatten().to(device)
                model_wrap.conds = {"positive": all_conds[_key("positive", g)],
                                    "negative": all_conds[_key("negative", g)]}
                for chunk in (rows.split(self.max_batch) if self.max_batch > 0 else (rows,)):
                    out[chunk] = model_wrap(x_c[chunk], sig[chunk], **extra_args).float()
                    self.model_calls += 1
        finally:
            model_wrap.conds = all_conds
            model_wrap.cfg = old_cfg
        return out.to(x.device)  # x0 is the same in both spaces; on the caller's device

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise ValueError("decoding needs a VAE: connect the VAE that belongs to this model")
        with torch.no_grad():
            samples = self.latent_format.process_out(x0.detach().float())
            images = self.vae.decode(samples)
        if images.ndim == 5:  # video VAEs: (B, T, H, W, C); images have T = 1
            images = images.reshape(-1, *images.shape[-3:])
        return image_to_core(images, "decoded images")

    def fingerprint(self) -> str:
        """A short hash of the base network's names, shapes and a sample of its values."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            with torch.no_grad():
                for name, t in sorted(self.net.state_dict().items()):
                    if ".lora_" in name:  # adapters injected in place (peft) are not the base model
                        continue
                    name = name.replace(".base_layer.", ".")
                    h.update(f"{name}{tuple(t.shape)}".encode())
                    if t.numel() and t.is_floating_point():
                        h.update(t.flatten()[:16].float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _key(kind: str, i: int) -> str:
    return kind if i == 0 else f"{kind}_{i}"


def check_vae(vae, channels: int) -> None:
    got = getattr(vae, "latent_channels", None)
    if got is not None and int(got) != int(channels):
        raise ValueError(f"the VAE works on {got}-channel latents but the model's latents have {channels} channels; "
                         "connect the VAE that belongs to this model (SD3/Flux: a 16-channel VAE, SD1.x/SDXL: 4)")


def encode_text(clip, text: str) -> list:
    """CONDITIONING for ``text`` (what CLIPTextEncode does)."""
    if clip is None:
        raise ValueError("encoding a prompt needs a CLIP: connect the checkpoint's CLIP")
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def clone_conditioning(cond: list) -> list:
    """A copy of CONDITIONING whose tensors are normal (not inference-mode) tensors; call it
    outside inference mode before the tensors enter autograd."""
    out = []
    for item in cond:
        t, d = item[0], item[1]
        out.append([t.clone() if isinstance(t, torch.Tensor) else t,
                    {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}])
    return out


# ---- the LoRA adapter through ComfyUI weight wrappers ----------------------------------------

class LoraDelta(nn.Module):
    """``W ↦ W + (α/r)·up @ down`` as a ComfyUI weight function (applied to the cast weight in
    every forward, so gradients reach ``down`` (r, in) and ``up`` (out, r))."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        down = torch.empty(rank, in_features)
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=√5), peft's lora_A init
        down.uniform_(-bound, bound, generator=generator)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.rank, self.alpha = rank, alpha
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        delta = (self.up @ self.down) * (self.alpha / self.rank)  # (out, in)
        return weight + delta.to(device=weight.device, dtype=weight.dtype)

    def move_to(self, device=None) -> int:  # called by ModelPatcher when it moves weights
        self.to(device=device)
        return sum(p.numel() * p.element_size() for p in self.parameters())


class _CopyWeight:
    """No-op weight function: makes ComfyUI cast a fresh copy of an inference-mode weight, so it
    can be saved for backward (only used when the MODEL cannot be deep-copied)."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight


class ComfyLoraAdapter(LoraWeights):
    """Trainable LoRA on ``denoiser.net`` through ``ModelPatcher.add_weight_wrapper`` (the core's
    :class:`~progrpo_core.lora.LoraWeights`: same parameters, reference switch and file format).
    Must be created before the patcher is loaded (wrappers are attached at load time)."""

    def __init__(self, denoiser: ComfyDenoiser, rank: int, alpha: float, targets: Sequence[str] | None = None,
                 seed: int = 0, copy_other_weights: bool = False):
        self.denoiser = denoiser
        self.rank, self.alpha = check_rank_alpha(rank, alpha)
        self.targets = list(targets or denoiser.lora_targets)
        modules = dict(denoiser.net.named_modules())
        gen = torch.Generator().manual_seed(int(seed))
        self.modules: dict[str, LoraDelta] = {}
        for path in self.targets:
            m = modules.get(path)
            if m is None or getattr(m, "weight", None) is None or m.weight.ndim != 2:
                raise ValueError(f"LoRA target {path!r} is not a Linear layer of this model")
            delta = LoraDelta(m.weight.shape[0], m.weight.shape[1], self.rank, self.alpha, gen)
            denoiser.patcher.add_weight_wrapper(f"{LORA_PREFIX}{path}.weight", delta)
            self.modules[path] = delta
        if copy_other_weights:
            for name, m in denoiser.net.named_modules():
                if hasattr(m, "weight_function"):
                    for p in ("weight", "bias"):
                        if getattr(m, p, None) is not None and not (p == "weight" and name in self.modules):
                            denoiser.patcher.add_weight_wrapper(f"{LORA_PREFIX}{name}.{p}", _CopyWeight())

    def pairs(self) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        return {path: (d.down, d.up) for path, d in self.modules.items()}

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"{path}.{n}", p) for path, d in self.modules.items() for n, p in d.named_parameters()]

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        for d in self.modules.values():
            d.enabled = False
        try:
            yield
        finally:
            for d in self.modules.values():
                d.enabled = True


def apply_lora(model, lora: dict[str, torch.Tensor], strength: float = 1.0):
    """A clone of MODEL with a ComfyUI-format LoRA applied, exactly as the stock loaders do."""
    import comfy.sd

    new_model, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return new_model


# ---- training inside the host --------------------------------------------------------------------

@contextlib.contextmanager
def training_model(model, gradient_checkpointing: bool) -> Iterator[tuple[Any, bool]]:
    """Yield ``(patcher, shares_weights)``: a clone of MODEL ready for training, out of inference
    mode, with ``comfy.model_management.in_training`` set. On exit — also on error or interrupt —
    checkpointing is undone, the flag restored and the clone left for garbage collection; the
    MODEL given is never modified. ``shares_weights`` is True when the host could not deep-copy
    the model (older ComfyUI): the clone then shares the base weights (inference tensors), and
    the caller must have every weight copied on use (``copy_other_weights``)."""
    import comfy.model_management as mm

    had_flag = hasattr(mm, "in_training")
    old_flag = getattr(mm, "in_training", False)
    patched: list[nn.Module] = []
    with torch.inference_mode(False):
        mp, shares = _clone_for_training(model)
        net = mp.model.diffusion_model
        try:
            mp.model.requires_grad_(False)
            if gradient_checkpointing:
                patched = _checkpoint_blocks(net)
            mm.in_training = True  # fused kernels without autograd (e.g. RoPE) are skipped in training
            yield mp, shares
        finally:
            for m in patched:
                _unpatch(m)
            if had_flag:
                mm.in_training = old_flag
            elif hasattr(mm, "in_training"):
                del mm.in_training
            mp.model.eval()


def _clone_for_training(model) -> tuple[Any, bool]:
    try:  # ComfyUI >= 0.4: reload the weights outside inference mode
        return model.clone(force_deepcopy=True), False
    except TypeError:  # no force_deepcopy in this ComfyUI
        pass
    except RuntimeError as e:  # a MODEL not made by a standard loader cannot be reloaded
        log.info("ProGRPO: cannot deep-copy the MODEL (%s); training on a weight-sharing clone", e)
    return model.clone(), True


def _checkpoint_blocks(net: nn.Module) -> list[nn.Module]:
    """Gradient checkpointing on the model's repeated blocks (every element of a ModuleList
    directly under the network: SD3 joint_blocks, Flux double/single_blocks, UNet
    input/output_blocks). Needed for Flux, whose blocks update activations in place."""
    patched = []
    for child in net.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                _patch(block)
                patched.append(block)
    return patched


def _patch(m: nn.Module) -> None:
    from torch.utils.checkpoint import checkpoint

    org = m.forward

    def fwd(args, kwargs):
        # Blocks that update their inputs in place (Flux: ``img += …``) would change what the
        # recomputation in backward sees: give them copies.
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        kwargs = {k: (v.clone() if isinstance(v, torch.Tensor) and k in ("x", "img", "txt") else v)
                  for k, v in kwargs.items()}
        return org(*args, **kwargs)

    def checkpointed(*args, **kwargs):
        if not torch.is_grad_enabled():
            return org(*args, **kwargs)
        return checkpoint(fwd, args, kwargs, use_reentrant=False)

    m._progrpo_forward = org
    m.forward = checkpointed


def _unpatch(m: nn.Module) -> None:
    if hasattr(m, "_progrpo_forward"):
        m.forward = m._progrpo_forward
        del m._progrpo_forward


# ---- progress, previews, UI text ------------------------------------------------------------------

class Progress:
    """ComfyUI's progress bar for one node (also the interrupt check); no-op without a server."""

    def __init__(self, total: int, node_id: str | None = None):
        import comfy.utils

        self.node_id = node_id
        self.bar = comfy.utils.ProgressBar(max(1, int(total)), node_id=node_id)

    def update(self, value: int, total: int | None = None, preview=None, max_px: int = 512) -> None:
        self.bar.update_absolute(value, total, preview=("JPEG", preview, max_px) if preview is not None else None)

    def text(self, message: str) -> None:
        show_text(self.node_id, message)


def show_text(node_id: str | None, message: str) -> None:
    """Text shown on a running node in the UI (``send_progress_text``; the frontend displays it
    under the node). A no-op without a server or node id, and never an error."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = getattr(PromptServer, "instance", None)
        if server is not None and hasattr(server, "send_progress_text"):
            server.send_progress_text(message, node_id)
    except Exception as e:  # a status line must never break a node
        log.debug("ProGRPO: no progress text (%s)", e)


def is_interrupt(exc: BaseException) -> bool:
    try:
        import comfy.model_management

        return isinstance(exc, comfy.model_management.InterruptProcessingException)
    except ImportError:
        return False


# ---- files ---------------------------------------------------------------------------------------

def register_folders() -> None:
    """Register ``models/reward_models`` with folder_paths (idempotent)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, REWARD_FOLDER)
    if path not in folder_paths.folder_names_and_paths.get(REWARD_FOLDER, ([], set()))[0]:
        folder_paths.add_model_folder_path(REWARD_FOLDER, path)


def reward_dirs() -> list[str]:
    try:
        import folder_paths
    except ImportError:
        return []
    register_folders()
    return list(folder_paths.get_folder_paths(REWARD_FOLDER))


def loras_dir() -> Path:
    """The first ``loras`` folder (models/loras)."""
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def input_dir() -> Path | None:
    try:
        import folder_paths
    except ImportError:
        return None
    return Path(folder_paths.get_input_directory())


def reward_device(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import comfy.model_management

        return str(comfy.model_management.get_torch_device())
    except ImportError:
        return "cpu"


def lora_metadata_of(path: Path) -> dict[str, Any]:
    """The ``progrpo.*`` header of a LoRA file, values JSON-decoded where possible."""
    return decode_header(read_lora_file(path)[1])


# ---- what the nodes call ----------------------------------------------------------------------

def resolve_sampler(family: str, sampler: str, noise_level: float) -> tuple[str, float]:
    """("auto" or a name, noise level < 0 = default) → the core's (sampler, noise level) for the family."""
    from progrpo_core.config import SamplerConfig

    sc = SamplerConfig(sampler=None if sampler == "auto" else sampler,
                       noise_level=None if noise_level < 0 else float(noise_level)).resolved(family)
    return sc.sampler, float(sc.noise_level)


def sample_expanded_group(model, positive, negative, latent, *, prompt: str, seed: int, steps: int, schedule,
                          sampler: str, noise_level: float, cfg: float, reward=None, vae=None,
                          node_id: str | None = None):
    """The Expanded Group Sampler: ``(LATENT of the survivors, GroupTrace)``."""
    from .trace import record_group

    samples = latent_samples(latent)
    den = ComfyDenoiser(model, samples.shape[1:], vae=vae)
    sampler, noise_level = resolve_sampler(den.family, sampler, noise_level)
    score_fn = None
    if schedule.checkpoints:
        if reward is None:
            raise ValueError(f"the prune schedule (checkpoints {list(schedule.checkpoints)}) scores proxies with a "
                             "reward model, but none is connected: connect a ProGRPO Reward Model Loader to 'reward'")
        if vae is None:
            raise ValueError("the prune schedule decodes proxies to score them: connect the model's VAE to 'vae'")

        def score_fn(images, prompts):
            return reward.total(images, prompts)[reward.reward.total_key]
    den.add_prompt(prompt, positive, negative)
    progress = Progress(steps, node_id)
    trace = den.run(lambda: record_group(den, prompt, seed, steps, schedule, sampler, noise_level, cfg, score_fn,
                                         to_output=den.latent_format.process_out,
                                         on_step=lambda i, n: progress.update(i, n)),
                    sigmas=den.sigmas(steps), max_rows=schedule.group_size)
    return den.to_latent(trace.latents[:, -1]), trace


def project_latent(model, positive, negative, latent, sigma: float, cfg: float) -> dict:
    """One-step x0 projection of a (noisy) LATENT at ``sigma``, as a LATENT."""
    samples = latent_samples(latent)
    den = ComfyDenoiser(model, samples.shape[1:])
    sigma_max = float(den.model_sampling().sigma_max)
    if not 0 < sigma <= sigma_max * (1 + 1e-6):
        raise ValueError(f"sigma {sigma} is outside this model's range (0, {sigma_max:.4g}]")
    den.add_prompt("", positive, negative)
    n = samples.shape[0]
    s = torch.full((n,), float(sigma))
    x = den.from_comfy(den.latent_format.process_in(samples.float()), s)
    x0 = den.run(lambda: den.denoise(x, s, den.encode_prompts([""] * n), cfg),
                 sigmas=torch.tensor([float(sigma), 0.0]), max_rows=n)
    return den.to_latent(x0)


def autosave_path(run_name: str) -> Path:
    from .trace import safe_relative_name

    return loras_dir() / "progrpo" / "autosave" / (safe_relative_name(run_name, "run_name") + ".safetensors")


def run_folder(run_name: str) -> Path:
    """``output/progrpo/<run_name>``: the trainer's resumable checkpoints."""
    import folder_paths

    from .trace import safe_relative_name

    return Path(folder_paths.get_output_directory()) / "progrpo" / safe_relative_name(run_name, "run_name")


def train_lora(model, vae, clip, positive, negative, latent, prompts: list[str], cfg, reward, *, targets: str,
               gradient_checkpointing: bool, run_name: str, resume: bool, save_every: int,
               node_id: str | None = None):
    """The GRPO LoRA Trainer: ``(MODEL with the LoRA, LORA_MODEL, curves IMAGE, summary text)``.

    Trains on a clone of MODEL (see :func:`training_model`) by driving the core's training loop.
    Every ``save_every`` epochs and at the end, the LoRA goes to
    ``models/loras/progrpo/autosave/<run_name>.safetensors`` and a resumable checkpoint (LoRA,
    optimizer, EMA, RNG) to ``output/progrpo/<run_name>/``; when training stops early (interrupt or
    error) the last completed epoch is checkpointed and the LoRA trained so far saved. ``resume``
    continues from the newest checkpoint; ``cfg.run.epochs`` counts the whole run."""
    from progrpo_core.checkpoint import CheckpointError
    from progrpo_core.training import EpochRecord, RunFolder, Trainer

    from . import training

    samples = latent_samples(latent)
    family = model_family(model)  # checks before any work, so bad inputs leave everything as it was
    cfg.sampler.resolved(family)
    channels = int(getattr(model.model.latent_format, "latent_channels", samples.shape[1]))
    if samples.shape[1] != channels:
        raise ValueError(f"the LATENT has {samples.shape[1]} channels but the model works on {channels}-channel "
                         "latents; make the latent with the node that belongs to this model")
    check_vae(vae, channels)
    if clip is None and positive is None:
        raise ValueError("the trainer needs prompts' conditioning: connect a CLIP (to encode the prompt list) "
                         "or a positive CONDITIONING")
    if clip is None and len(prompts) != 1:
        raise ValueError(f"without a CLIP the positive CONDITIONING stands for one prompt, but the list has "
                         f"{len(prompts)}; connect a CLIP to train on several prompts")
    folder = RunFolder(run_folder(run_name), lora_path=autosave_path(run_name))
    cfg.run.out = str(folder.out)
    cfg.run.save_every = cfg.run.checkpoint_every = int(save_every)
    cfg.run.keep_checkpoints = 2
    T = cfg.sampler.steps

    with training_model(model, gradient_checkpointing) as (mp, shares):
        den = ComfyDenoiser(mp, samples.shape[1:], vae=vae, clip=clip, targets=targets,
                            name=type(model.model).__name__)
        neg = clone_conditioning(negative) if negative is not None else None
        with torch.no_grad():
            if clip is not None:
                neg = neg if neg is not None else encode_text(clip, "")
                for p in prompts:
                    den.add_prompt(p, encode_text(clip, p), neg)
            else:
                den.add_prompt(prompts[0], clone_conditioning(positive), neg)
        adapter = ComfyLoraAdapter(den, cfg.lora.rank, cfg.lora.alpha, seed=cfg.run.seed, copy_other_weights=shares)
        recorder = training.RecordingReward(reward.reward)
        trainer = Trainer(cfg, model=den, reward=recorder, prompts=prompts, adapter=adapter, log=log.info)
        try:  # a full disk or unwritable output folder fails now, not after an hour
            resumed = trainer.open(folder, resume=resume)
        except CheckpointError as e:
            raise ValueError(f"cannot resume run {run_name!r}: {e}") from None
        start = trainer.epoch
        progress = Progress(max(1, cfg.run.epochs - start) * (T + 1), node_id)
        if resumed:
            progress.text(f"resuming {run_name} after epoch {start}")
        G = trainer.schedule.group_size

        def on_epoch(record):
            grid = training.preview_grid(recorder, record.batch, G, cfg.grpo.prompts_per_epoch)
            progress.update((record.epoch - start) * (T + 1), None, preview=pil_of(grid) if grid is not None else None)
            progress.text(record.text(cfg.run.epochs))

        try:
            if start < cfg.run.epochs:
                den.run(lambda: training.drive_training(trainer, folder, on_step=progress.update, on_epoch=on_epoch),
                        sigmas=den.sigmas(T), max_rows=G * cfg.grpo.prompts_per_epoch)
        except BaseException as e:
            if trainer.optimizer_steps > 0:
                try:
                    trainer.save_lora(folder.lora_path)
                    log.warning("ProGRPO: training stopped in epoch %d (%s); the LoRA trained so far is in %s; "
                                "resume continues from the last checkpoint in %s", trainer.epoch,
                                type(e).__name__, folder.lora_path, folder.out)
                except Exception as save_error:  # never hide the error that stopped training
                    log.error("ProGRPO: training stopped (%s) and the LoRA trained so far could not be saved: %s",
                              type(e).__name__, save_error)
            if isinstance(e, RuntimeError) and "modified by an inplace operation" in str(e) and not gradient_checkpointing:
                raise RuntimeError(f"{type(model.model).__name__} updates activations in place inside its blocks "
                                   "(Flux does), which plain backpropagation cannot handle: turn "
                                   "gradient_checkpointing on") from None
            raise
        trainer.save_lora(folder.lora_path)
        if trainer.state.last_checkpoint != trainer.epoch:
            trainer.save_checkpoint(folder)
        lora = training.trained_lora(trainer)
        history = [EpochRecord.from_row(r) for r in trainer.metrics_rows if r["epoch"] > start]
        summary = (f"{cfg.grpo.method}: epochs {start + 1}..{trainer.epoch} of {cfg.run.epochs}, "
                   f"{trainer.optimizer_steps} optimizer steps, reward "
                   + (f"{history[0].reward_mean:.4f} → {history[-1].reward_mean:.4f}" if history else "n/a")
                   + f"; LoRA {folder.lora_path}, checkpoints {folder.out}")
    out_model = apply_lora(model, lora)
    curves = training.curves_image(history, f"{cfg.grpo.method}: {reward.spec}")
    return out_model, lora, curves, summary
