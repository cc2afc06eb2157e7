"""What each operation of an epoch costs on real models, in FLOPs: the bench's cost profiles.

The bench trains on the built-in digits models, where a decode is free and the reward is tiny. A
profile prices the same counts — sampling rows, training rows forward and backward, decodes, reward
calls — as a real model would, so the bench can say how much compute a method needs to reach a
reward *if* its curve were the same on that model (only the price of each operation changes).

Counted by ``tests/gpu/cost_profiles.py`` (``torch.utils.flop_counter`` on the ``meta`` device:
ComfyUI's own SD1.5 / SDXL UNet, SD3.5-Medium MMDiT and Flux.1-dev networks, its AutoencoderKL,
transformers' CLIP ViT-H/14 image tower — PickScore's and HPSv2's; matmuls and convolutions)::

    python tests/gpu/cost_profiles.py --comfyui PATH      # ComfyUI 0.33, measured 2026-12-03

* ``model_fwd``: one latent row through the denoiser at the profile's resolution;
* ``backward_rows``: the backward of one trained row in forward rows, with the base weights frozen
  (LoRA: activation gradients only) and the blocks recomputed (gradient checkpointing at depth 1);
* ``decode``: one VAE decode at the resolution; ``decode_224``: of the latent pooled to the reward
  model's 224² input (a proxy decoded at the resolution it is scored at); ``decode_taesd``: one
  decode by ComfyUI's TAESD at the resolution (the trainer's ``proxy_vae``);
* ``reward``: one CLIP-H image-tower call at 224²;
* ``cfg_rows``: network rows per latent row as the references run the model (Flow-GRPO samples and
  trains SD3.5-M with CFG 4.5; Flux is guidance-distilled, CFG 1).

SD3.5-Medium's decode (2.51e12) and reward (0.335e12) match the paper's atomic costs (2.49e12,
0.34e12, docs/METHOD.md §7).
"""
from __future__ import annotations

import dataclasses

from ..compute import Compute


@dataclasses.dataclass(frozen=True)
class CostProfile:
    name: str
    model_fwd: float
    backward_rows: float
    decode: float
    decode_224: float
    decode_taesd: float
    reward: float
    cfg_rows: int = 1
    parameters: int = 0

    def flops(self, counts: dict, proxy_decoder: str = "vae") -> float:
        """The FLOPs of a run's compute ``counts`` (``Compute`` fields) on this model: the built-in
        models' rows are this model's rows (guided as the references guide), their decodes its
        decodes — the pruning previews' by ``proxy_decoder``: the VAE, the VAE on the latent pooled
        to 224² (``"224"``) or TAESD (``"taesd"``) — and their reward calls CLIP-H's."""
        rows = counts["nfe_sample"] + counts["nfe_train_fwd"] + self.backward_rows * counts["nfe_train_bwd"]
        proxy = {"vae": self.decode, "224": self.decode_224, "taesd": self.decode_taesd}[proxy_decoder]
        return (self.cfg_rows * rows * self.model_fwd + counts["proxy_decodes"] * proxy
                + counts["final_decodes"] * self.decode
                + (counts["proxy_rewards"] + counts["final_rewards"]) * self.reward)


PROFILES: dict[str, CostProfile] = {
    "sd15": CostProfile("SD1.5 at 512²", model_fwd=8.03273e+11, backward_rows=1.9715,
                      decode=2.51452e+12, decode_224=4.75977e+11, decode_taesd=1.41350e+11, reward=3.3459e+11,
                      cfg_rows=2, parameters=859520964),
    "sdxl": CostProfile("SDXL at 1024²", model_fwd=6.76124e+12, backward_rows=2.0231,
                      decode=1.04704e+13, decode_224=4.75977e+11, decode_taesd=5.65401e+11, reward=3.3459e+11,
                      cfg_rows=2, parameters=2567463684),
    "sd35m": CostProfile("SD3.5-Medium at 512²", model_fwd=2.13783e+12, backward_rows=2.1311,
                      decode=2.51497e+12, decode_224=4.76064e+11, decode_taesd=1.41407e+11, reward=3.3459e+11,
                      cfg_rows=2, parameters=2243171520),
    "flux": CostProfile("Flux.1-dev at 1024²", model_fwd=7.43847e+13, backward_rows=2.1991,
                      decode=1.04722e+13, decode_224=4.76064e+11, decode_taesd=5.65627e+11, reward=3.3459e+11,
                      cfg_rows=1, parameters=11901408320),
}


def counts_of(compute: Compute) -> dict[str, int]:
    """The counts a profile prices."""
    return {k: v for k, v in compute.as_dict().items() if k != "wall"}
