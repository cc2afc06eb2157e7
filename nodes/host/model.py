"""A ComfyUI MODEL as the core's :class:`~progrpo_core.denoiser.Denoiser`.

Family from ``model_sampling``, sigmas from its schedule, latents in its latent format, the
CFG-combined x0 estimate through ``comfy.samplers.CFGGuider``, decoding through the VAE.

Spaces: the core samples each family in its native space. Flow models' native space is
ComfyUI's model space (``latent_format.process_in`` of a LATENT). For ε/v-prediction models
ComfyUI's latent is ``x_comfy = x0 + σ·ε``, the core's VP latent is
``x_vp = x_comfy / sqrt(1 + σ²)``; the x0 estimate is the same in both.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterator, Sequence

import torch

from .convert import image_to_core
from . import packing
from .families import TARGET_PRESETS, Family, family_of, target_modules  # noqa: F401  (re-exported)
from .quantized import make_gguf_probeable, storage

LORA_PREFIX = "diffusion_model."
SCHEDULER = "simple"  # ComfyUI's default for flow models; trailing DDIM spacing for ε models


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
                         "supported: flow matching (SD3.x, Flux, …) and eps/v-prediction diffusion (SD1.x, SDXL)")
    if isinstance(ms, cms.CONST):
        return "flow"
    if isinstance(ms, cms.EPS):  # V_PREDICTION, EDM and X0 subclass EPS: all x = x0 + σε
        return "eps"
    raise ValueError(f"the model {kind} is neither flow matching nor eps/v-prediction diffusion; "
                     "ProGRPO's samplers support flow-matching models (SD3.x, Flux, …) and eps/v-prediction "
                     "diffusion (SD1.x, SDXL)")


def family_info(patcher) -> Family:
    """The MODEL's entry in the family table (:mod:`.families`), or an unlisted one by structure."""
    import comfy.model_sampling as cms

    config = type(getattr(patcher.model, "model_config", None)).__name__
    v_pred = isinstance(patcher.get_model_object("model_sampling"), getattr(cms, "V_PREDICTION", ()))
    return family_of(config, v_pred)


@contextlib.contextmanager
def kept_loaded(patcher) -> Iterator[None]:
    """Keep ``patcher``'s model loaded on its device while the body runs. To make room for another
    load (the VAE decoding a proxy, a managed reward model) ComfyUI frees the loaded models it is not
    asked to keep, and a training session would find its model's weights moved off the device
    mid-epoch; here ComfyUI's unload of this one model is refused until the body ends."""
    import comfy.model_management as mm

    entries = [m for m in mm.current_loaded_models if m.model is patcher]
    for entry in entries:
        entry.model_unload = _refuse_unload  # an instance attribute: only this entry, only for now
    try:
        yield
    finally:
        for entry in entries:
            entry.__dict__.pop("model_unload", None)


def _refuse_unload(memory_to_free=None, unpatch_weights=True) -> bool:
    return False


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
    builtin = False

    def __init__(self, patcher, latent_shape: Sequence[int], vae=None, clip=None, targets: str = "attention",
                 name: str | None = None, max_batch: int = 0, full_load: bool = False, proxy_vae=None):
        self.patcher = patcher
        self.full_load = full_load  # load the whole model on the device for a session (training)
        self.family = model_family(patcher)
        self.info = family_info(patcher)  # the family table's entry: defaults, fused layers, video
        self.architecture = type(getattr(patcher.model, "model_config", None)).__name__  # "SD15", "SDXL", "SD3", …
        self.latent_format = patcher.model.latent_format
        channels = int(getattr(self.latent_format, "latent_channels", latent_shape[0]))
        if int(latent_shape[0]) != channels:
            raise ValueError(f"the LATENT has {latent_shape[0]} channels but the model "
                             f"({type(patcher.model).__name__}) works on {channels}-channel latents; make the latent "
                             f"with the node that belongs to this model (e.g. EmptySD3LatentImage for SD3/Flux, "
                             f"EmptyLatentImage for SD1.x/SDXL)")
        latent_shape = tuple(int(s) for s in latent_shape)
        if int(getattr(self.latent_format, "latent_dimensions", 2)) == 3 and len(latent_shape) == 3:
            latent_shape = (latent_shape[0], 1, *latent_shape[1:])  # one frame, as ComfyUI's samplers make it (Qwen-Image)
        check_latent_dims(self.info, latent_shape)
        for v, what in ((vae, "the VAE"), (proxy_vae, "the proxy_vae")):
            if v is not None:
                check_vae(v, channels, what)
        self.proxy_vae = proxy_vae  # the pruning previews' decoder (TAESD); None: the VAE
        self.latent_shape = latent_shape  # (C, H, W), or (C, T, H, W) for video and 3-D latent formats
        self.net = patcher.model.diffusion_model
        make_gguf_probeable(self.net)
        self.storage = storage(self.net)  # "float32", "float8_e4m3fn", "GGUF Q8_0 ×…"
        self.lora_targets = target_modules(self.net, targets, self.info)
        self.vae, self.clip = vae, clip
        self.name = name or type(patcher.model).__name__
        self.max_batch = int(max_batch)
        self.frames: tuple[int, int] | None = None  # video: (count, stride) of the frames decode returns
        self._prompt_index: dict[str, int] = {}
        self._conds: list[tuple[list, list]] = []
        self._session: tuple[Any, dict, dict] | None = None
        self._fingerprint: str | None = None
        self.model_calls = 0
        self.pack_prompts = True  # rows of several prompts share model calls where their conditionings allow

    @property
    def default_cfg(self) -> float:
        """The guidance scale the family is used with (:mod:`.families`): 1 for guidance-distilled
        and cfg-free models (Flux, Flux.2, Z-Image-Turbo), the family's own otherwise (4.5 for SD1.x,
        SDXL, SD3 and families not in the table)."""
        return self.info.cfg

    def describe(self, targets: str) -> str:
        """One line for the log: the family, its defaults and the LoRA's layers."""
        from .families import summary

        return (f"family {self.info.name} ({self.family}, ComfyUI {self.architecture}), weights {self.storage}, cfg "
                f"{self.default_cfg:g} by default, LoRA targets {targets!r}: {summary(self.net, list(self.lora_targets))}")

    def unlisted_note(self, targets: str) -> str:
        """What a family outside the table gets: the structural path, said plainly."""
        from .families import listed_families, summary

        return (f"{self.architecture} is not in ProGRPO's family table ({listed_families()}): its LoRA targets "
                f"{targets!r} were found by structure ({summary(self.net, list(self.lora_targets))}) and cfg "
                f"{self.default_cfg:g} is a generic default; set cfg to what the model is used with")

    # -- device and precision -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    @property
    def compute_dtype(self) -> torch.dtype:
        model = self.patcher.model
        return model.get_dtype_inference() if hasattr(model, "get_dtype_inference") else model.get_dtype()

    def set_precision(self, dtype: torch.dtype) -> None:
        """Compute in ``dtype`` (ComfyUI casts the stored weights per layer; they are not converted)."""
        if dtype != self.compute_dtype:
            self.patcher.set_model_compute_dtype(dtype)

    # -- prompts --------------------------------------------------------------------------------
    def add_prompt(self, text: str, positive: list, negative: list | None = None) -> int:
        """Register CONDITIONING for ``text`` (negative: an empty-prompt encoding or zeros). A
        guidance-distilled family's conditioning without a guidance value gets the family's."""
        if self._session is not None:
            raise RuntimeError("prompts must be registered before the sampling session starts")
        if negative is None:
            negative = self._default_negative(positive)
        if self.info.guidance is not None:
            positive, negative = (with_guidance(c, self.info.guidance) for c in (positive, negative))
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
        if self.full_load:
            guider.model_options = _fixed_attention(guider.model_options)
        if sigmas is None:
            sigmas = self.sigmas(1)
        noise = torch.zeros((max(1, int(max_rows)), *self.latent_shape))  # shapes memory estimates and cond encoding

        def session(model_wrap, extra_args):
            all_conds = model_wrap.conds
            self._session = (model_wrap, extra_args, all_conds)
            try:
                with kept_loaded(self.patcher) if self.full_load else contextlib.nullcontext():
                    return body()
            finally:
                model_wrap.conds = all_conds
                self._session = None

        sampler = _SessionSampler(session)
        if self.full_load:  # as ComfyUI's own trainer: the whole model on the device, nothing offloaded
            import comfy.model_management

            comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
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
            for chunk, conds in self._calls(index, all_conds):
                model_wrap.conds = conds
                rows = chunk.to(device)
                out[rows] = model_wrap(x_c[rows], sig[rows], **extra_args).float()
                self.model_calls += 1
        finally:
            model_wrap.conds = all_conds
            model_wrap.cfg = old_cfg
        return out.to(x.device)  # x0 is the same in both spaces; on the caller's device

    def _calls(self, index: torch.Tensor, all_conds: dict) -> Iterator[tuple[torch.Tensor, dict]]:
        """The model calls for rows whose prompts are ``index``: (rows, their conds). When the prompts'
        conditionings can share a call (:mod:`.packing`), the rows, grouped by prompt, fill calls of up
        to ``max_batch`` across prompts; otherwise each prompt's rows are called on their own."""
        kinds = ("positive", "negative")
        groups = index.unique().tolist()
        per_prompt = [(index == g).nonzero().flatten() for g in groups]
        cut = (lambda rows: rows.split(self.max_batch)) if self.max_batch > 0 else (lambda rows: (rows,))
        packable = self.pack_prompts and len(groups) > 1 and all(
            packing.pack([all_conds[_key(kind, g)] for g in groups], [1] * len(groups)) is not None for kind in kinds)
        if not packable:
            for g, rows in zip(groups, per_prompt):
                for chunk in cut(rows):
                    yield chunk, {kind: all_conds[_key(kind, g)] for kind in kinds}
            return
        for chunk in cut(torch.cat(per_prompt)):  # a subset of packable prompts packs too
            present, counts = index[chunk].unique_consecutive(return_counts=True)
            yield chunk, {kind: packing.pack([all_conds[_key(kind, g)] for g in present.tolist()], counts.tolist())
                          for kind in kinds}

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents to images (N, 3, H, W); a video family's latents (N, C, T, H, W) to the frames
        its reward scores, (N, F, 3, H, W): ``frames = (count, stride)`` picks frames 0, stride, …
        and only the latent frames they need are decoded (the video VAEs are causal in time, so a
        prefix of the latent decodes to the same first frames as the whole)."""
        if self.vae is None:
            raise ValueError("decoding needs a VAE: connect the VAE that belongs to this model")
        return self._decode_with(self.vae, x0)

    def decode_proxy(self, x0: torch.Tensor) -> torch.Tensor:
        """The pruning previews: through ``proxy_vae`` (e.g. TAESD) when one is connected."""
        return self.decode(x0) if self.proxy_vae is None else self._decode_with(self.proxy_vae, x0)

    def _decode_with(self, vae, x0: torch.Tensor) -> torch.Tensor:
        video = self.info.video and x0.ndim == 5
        with torch.no_grad():
            samples = self.latent_format.process_out(x0.detach().float())
            if video and self.frames is not None:
                samples = samples[:, :, :latent_frames_for(self.frames, samples.shape[2])]
            images = vae.decode(samples)
        if not video:
            if images.ndim == 5:  # video VAEs: (B, T, H, W, C); images have T = 1
                images = images.reshape(-1, *images.shape[-3:])
            return image_to_core(images, "decoded images")
        images = images.reshape(x0.shape[0], -1, *images.shape[-3:])  # (N, F_all, H, W, C)
        if self.frames is not None:
            count, stride = self.frames
            images = images[:, ::stride][:, :count]
        n, f = images.shape[:2]
        return image_to_core(images.reshape(n * f, *images.shape[2:]), "decoded frames").reshape(n, f, 3,
                                                                                               *images.shape[2:4])

    def fingerprint(self) -> str:
        """A short hash of the base network's names, shapes and a sample of its values."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            params = dict(self.net.named_parameters())
            with torch.no_grad():
                for name, t in sorted(self.net.state_dict().items()):
                    if ".lora_" in name:  # adapters injected in place (peft) are not the base model
                        continue
                    if t.is_meta:  # ComfyUI-GGUF's state_dict() is a size estimate on "meta": read the weight
                        t = params.get(name, t)
                        if t.is_meta:
                            continue
                    name = name.replace(".base_layer.", ".")
                    h.update(f"{name}{tuple(t.shape)}".encode())
                    if t.numel() and t.is_floating_point():
                        h.update(t.flatten()[:16].float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _fixed_attention(model_options: dict) -> dict:
    """Model options whose attention does not depend on free memory.

    Without xformers/SDPA (the CPU, some AMD setups, --use-split-cross-attention) ComfyUI
    slices attention by the memory free at call time. Gradient checkpointing recomputes a
    block in backward, when free memory differs, and torch refuses a recomputation that
    saves different tensors; the planner's probes would also measure one slicing and train
    with another. Training sessions therefore run those attention kernels as PyTorch SDPA.
    """
    import comfy.ldm.modules.attention as attn

    def unwrapped(f):
        return getattr(f, "__wrapped__", f)

    sliced = {unwrapped(getattr(attn, n)) for n in ("attention_sub_quad", "attention_split") if hasattr(attn, n)}
    pytorch = attn.attention_pytorch  # called inside the wrapper (kwargs say so): no second override

    def override(func, *args, **kwargs):
        return (pytorch if unwrapped(func) in sliced else func)(*args, **kwargs)

    opts = dict(model_options)
    opts["transformer_options"] = {**opts.get("transformer_options", {}), "optimized_attention_override": override}
    return opts


def _key(kind: str, i: int) -> str:
    return kind if i == 0 else f"{kind}_{i}"


def latent_frames_for(frames: tuple[int, int], available: int) -> int:
    """Latent frames to decode for video frames 0, stride, …, (count−1)·stride: a causal video VAE
    turns latent frame 0 into one frame and each later one into four (Wan, HunyuanVideo)."""
    count, stride = frames
    last = (count - 1) * stride
    return max(1, min(available, 1 + -(-last // 4)))


def check_latent_dims(info: Family, latent_shape: Sequence[int]) -> None:
    """A video family needs a video latent (C, T, H, W); an image family an image latent (C, H, W)."""
    if info.video and len(latent_shape) != 4:
        raise ValueError(f"{info.name} is a video model: it needs a video LATENT (batch, channels, frames, height, "
                         f"width), but this one is {len(latent_shape) + 1}-D; make it with EmptyHunyuanLatentVideo "
                         "(Wan 2.1) or Wan22ImageToVideoLatent (Wan 2.2 5B)")
    if not info.video and not (len(latent_shape) == 3 or (len(latent_shape) == 4 and latent_shape[1] == 1)):
        raise ValueError(f"{info.name} is an image model but the LATENT has shape (batch, {', '.join(map(str, latent_shape))})"
                         "; make an image latent (batch, channels, height, width)")


def with_guidance(cond: list, guidance: float) -> list:
    """CONDITIONING whose entries without a ``guidance`` value get ``guidance`` (FluxGuidance's key)."""
    return [[t, d if "guidance" in d else {**d, "guidance": guidance}] for t, d in cond]


def check_vae(vae, channels: int, what: str = "the VAE") -> None:
    got = getattr(vae, "latent_channels", None)
    if got is not None and int(got) != int(channels):
        raise ValueError(f"{what} works on {got}-channel latents but the model's latents have {channels} channels; "
                         "connect the VAE that belongs to this model (SD1.x/SDXL: 4 channels; SD3, Flux.1, Chroma, "
                         "Z-Image, Lumina 2, Qwen-Image, HiDream, Wan 2.1: 16; Flux.2: 128, e.g. taef2; Wan 2.2 5B: 48; "
                         "its TAESD: taesd3/taef1 for SD3/Flux.1, taesd/taesdxl for SD1.x/SDXL, taef2 for Flux.2)")


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
