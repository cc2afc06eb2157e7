"""Pro-GRPO ("Expand and Prune") for diffusion and flow models: a headless core.

Glossary of shapes, used in comments throughout:
    B        prompts per batch
    G        trajectories per prompt (a group); G_max when expanded
    K        survivors per prompt after pruning (the trained group)
    N        rows = B·K (or B·G) latents in one batch
    T        sampling steps per rollout; sigmas have T+1 entries, the last 0
    C, H, W  one latent's channels, height, width

Log-probabilities are always the Gaussian log-density averaged (mean) over latent elements.
Nothing here imports ComfyUI or touches a device at import time.
"""

__version__ = "0.1.0"
