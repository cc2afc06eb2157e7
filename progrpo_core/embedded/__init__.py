"""The built-in ("embedded") models: 8×8 digit generators trained by ``python -m progrpo_core
pretrain`` on scikit-learn's digits, shipped as safetensors inside the package.

* ``digits-flow``: rectified flow, ``x_σ = (1−σ)x0 + σε``, the network predicts the velocity
  ``ε − x0`` (ComfyUI's flow convention).
* ``digits-eps``: VP diffusion with SD's scaled-linear 1000-step ``alphas_cumprod``, the network
  predicts ε.

Latents are pixels in [-1, 1], shape (1, 8, 8); decoding maps them to [0, 1] grayscale RGB.
Prompts name a digit ("a handwritten 7"); the null label serves classifier-free guidance.

* ``digits-pair-flow`` / ``digits-pair-eps``: the harder task, two digits side by side in the
  prompted order ("a 3 left of a 7"), latents (1, 8, 16). Trained on captions that often name a
  wrong digit or the wrong order, as scraped captions do, so the base model gets both digits right
  in their places for fewer than one sample in ten.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..denoiser import alpha_bar, flow_sigmas, vp_sigmas
from ..io import input_file
from .data import digit_of, pair_of, pair_prompt
from .nets import NULL_LABEL, DigitsNet

WEIGHTS_DIR = Path(__file__).parent / "weights"
MODELS = {"digits-flow": "digits_flow.safetensors", "digits-eps": "digits_eps.safetensors",
          "digits-pair-flow": "digits_pair_flow.safetensors", "digits-pair-eps": "digits_pair_eps.safetensors"}
PAIR_PROMPTS = tuple(pair_prompt(a, b) for a in range(10) for b in range(10) if a != b)
CLASSIFIER_FILE = "digit_classifier.safetensors"


def scaled_linear_alphas_cumprod(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """SD's ``scaled_linear`` schedule: betas linear in sqrt space."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def read_header(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def load_net(file: Path, what: str, build) -> tuple[torch.nn.Module, dict[str, str], dict[str, torch.Tensor]]:
    """``(network, header, state)`` from a safetensors file written by ``pretrain``; a file of
    another kind or another network gets an error naming it and what it should be."""
    from safetensors import SafetensorError

    try:
        header = read_header(file)
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{what} {file} is not a safetensors file ({str(e).splitlines()[0][:120]}); give a file "
                         "written by `python -m progrpo_core pretrain`, or leave it out for the shipped one") from None
    check_weights(state, f"{what} {file}")
    try:
        net = build(**json.loads(header.get("arch", "{}")))
        net.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{what} {file} holds other weights than this network's ({str(e).splitlines()[0][:160]}); "
                         "it belongs to another model") from None
    return net, header, state


def check_weights(state: dict[str, torch.Tensor], what: str) -> None:
    """A network's weights are finite floating-point numbers: integer tensors mean another kind of
    file (they would be cast silently), NaN or infinity a damaged file or a diverged run's."""
    ints = [k for k, v in state.items() if not v.is_floating_point()]
    if ints:
        raise ValueError(f"{what} holds {state[ints[0]].dtype} tensors ({len(ints)} of {len(state)}, e.g. {ints[0]}), "
                         "not floating-point weights; it is not a weights file of this network (converted or of "
                         "another kind): give a file written by `python -m progrpo_core pretrain`, or leave it out "
                         "for the shipped one")
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{what} holds NaN or infinite weights ({len(bad)} of {len(state)} tensors, e.g. {bad[0]}): "
                         "it is damaged or was saved from a diverged training run; give a sound file, or leave it "
                         "out for the shipped one")


class DigitsDenoiser:
    """A :class:`~progrpo_core.denoiser.Denoiser` over the built-in :class:`DigitsNet`."""

    builtin = True
    lora_prefix = "diffusion_model."
    lora_targets = ("proj_in", "fc1", "fc2", "proj_out")

    def __init__(self, net: DigitsNet, family: str, name: str = "digits", fingerprint: str = ""):
        if family not in ("flow", "eps"):
            raise ValueError(f"family {family!r} unknown; expected 'flow' or 'eps'")
        self.net = net.eval().requires_grad_(False)
        self.slots = getattr(net, "slots", 1)
        self.latent_shape = (1, 8, 8 * self.slots)
        self.default_prompts = (tuple(f"a handwritten {d}" for d in range(10)) if self.slots == 1
                                else PAIR_PROMPTS)
        self.compute_dtype = torch.float32
        self.family = family
        self.name = name
        self._fingerprint = fingerprint
        if family == "eps":
            self.alphas_cumprod = scaled_linear_alphas_cumprod()
            s = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
            self._log_smin, self._log_smax = float(s[0].log()), float(s[-1].log())

    # -- Denoiser protocol --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def set_precision(self, dtype: torch.dtype) -> None:
        """Compute in ``dtype``: the base weights are stored in it (adapters added later stay float32)."""
        for name, p in self.net.named_parameters():
            if ".lora_" not in name:
                p.data = p.data.to(dtype)
        self.compute_dtype = dtype

    def sigmas(self, steps: int) -> torch.Tensor:
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        return flow_sigmas(steps) if self.family == "flow" else vp_sigmas(self.alphas_cumprod, steps)

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError for a prompt this model cannot condition on (see :meth:`encode_prompts`)."""
        (digit_of if self.slots == 1 else pair_of)(prompt)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        parse = digit_of if self.slots == 1 else pair_of
        return torch.tensor([parse(p) for p in prompts], dtype=torch.long, device=self.device)

    def select_cond(self, cond: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return cond[index.to(cond.device)]

    def net_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time input in [0, 1]: σ for flow, normalised log σ for VP."""
        if self.family == "flow":
            return sigma.float()
        return ((sigma.double().log() - self._log_smin) / (self._log_smax - self._log_smin)).float()

    def x0_from_output(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).to(x)
        if self.family == "flow":
            return x - s * out
        ab = alpha_bar(s).to(x)
        return (x - (1 - ab).sqrt() * out) / ab.sqrt()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, cfg: float = 1.0) -> torch.Tensor:
        x = x.float()
        sigma = sigma.to(x.device).reshape(-1).expand(x.shape[0])  # σ may come from the CPU schedule
        xc, dt = x.to(self.compute_dtype), self.compute_dtype
        if cfg == 1.0:
            out = self.net(xc, self.net_time(sigma).to(dt), cond).float()
        else:
            null = torch.full_like(cond, NULL_LABEL)
            both = self.net(torch.cat([xc, xc]), self.net_time(torch.cat([sigma, sigma])).to(dt),
                            torch.cat([cond, null])).float()
            c, u = both.chunk(2)
            out = u + cfg * (c - u)
        return self.x0_from_output(x, sigma, out)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0.float() + 1) / 2).clamp(0, 1).expand(-1, 3, -1, -1)

    def fingerprint(self) -> str:
        return self._fingerprint


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_digits_model(name: str = "digits-flow", path: str | Path | None = None) -> DigitsDenoiser:
    """Load a built-in generator (one of :data:`MODELS`), from the package or ``path``."""
    if name not in MODELS:
        raise ValueError(f"unknown built-in model {name!r}; expected one of {', '.join(MODELS)}")
    if path:
        file = input_file(path, "model.path")
    else:
        file = WEIGHTS_DIR / MODELS[name]
        if not file.exists():
            raise FileNotFoundError(
                f"built-in model weights not found at {file}; run `python -m progrpo_core pretrain` to rebuild them")
    net, header, state = load_net(file, "model.path", DigitsNet)
    return DigitsDenoiser(net, header.get("family", "flow" if name.endswith("flow") else "eps"), name,
                          state_fingerprint(state))
