"""``python -m progrpo_core score``: score image files with one or more rewards.

    python -m progrpo_core score --reward pickscore=/models/PickScore_v1 \\
        --reward hpsv2.1=/models/HPS_v2.1_compressed.pt --prompt "a cat" a.png b.png
    {"image": "a.png", "prompt": "a cat", "pickscore": 21.3, "hpsv2.1": 0.281}
    {"image": "b.png", "prompt": "a cat", "pickscore": 20.7, "hpsv2.1": 0.274}

Each ``--reward`` is a reward spec (see :mod:`.weighted`): ``NAME[=PATH]``, or a weighted
combination ``'pickscore=P*0.7,hpsv2.1=Q*0.3'`` whose components and ``total`` are all printed.
Images of the same size are scored as one batch.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from typing import Sequence

import torch

from ..devices import DTYPE_ALIASES, DTYPES

from .weighted import build_reward_from_spec, parse_reward_spec
from .weights import ENV_VAR


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``score`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "score", help="score images with reward models, one JSON object per image",
        description="Score image files with reward models; prints one JSON object per image with every "
                    "reward's score.",
        epilog=f"Weights are found at the given PATH, else in --reward-dir folders, else in {ENV_VAR}. "
               "Spec syntax: NAME[=PATH][*WEIGHT], parts joined by commas; see docs/REWARDS.md.")
    p.add_argument("--reward", action="append", required=True, metavar="SPEC",
                   help="a reward: NAME or NAME=PATH (e.g. pickscore=/models/PickScore_v1, digit), or a weighted "
                        "combination 'pickscore=P*0.7,hpsv2.1=Q*0.3'; repeat for several")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="the prompt: once for all images, or once per image in order")
    p.add_argument("--device", default="cpu", help="torch device for the reward models (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=[*DTYPES, *DTYPE_ALIASES],
                   help="reward model precision (default fp32)")
    p.add_argument("--reward-dir", action="append", default=[], metavar="DIR",
                   help=f"folder to search for reward weights (repeatable; searched before {ENV_VAR})")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.set_defaults(func=run_score)
    return p


def load_image(path: str) -> torch.Tensor:
    """An image file as (3, H, W) float in [0, 1] (RGB; alpha dropped, as PIL's convert does)."""
    import warnings

    import numpy as np
    from PIL import Image

    from ..io import input_file

    file = input_file(path, "image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(f"image {file} claims {str(e).split(' pixels')[0].split('(')[-1]} pixels, more than "
                             f"{Image.MAX_IMAGE_PIXELS:,} (PIL's limit against decompression bombs); it was not "
                             "decoded. Give a smaller image") from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def _label(spec: str) -> str:
    parts = parse_reward_spec(spec)
    return parts[0].name if len(parts) == 1 and not parts[0].weighted else "weighted"


def run_score(args: argparse.Namespace) -> int:
    """Run ``score``; 0 on success, 2 on bad input (message on stderr)."""
    paths: Sequence[str] = args.images
    prompts = list(args.prompt)
    if len(prompts) == 1:
        prompts = prompts * len(paths)
    if len(prompts) != len(paths):
        print(f"error: got {len(args.prompt)} prompts for {len(paths)} images; give one prompt for all images "
              "or one per image", file=sys.stderr)
        return 2
    try:
        from ..devices import resolve_device

        device = str(resolve_device(args.device, "device"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        imgs = [load_image(p) for p in paths]
    except (OSError, ValueError) as e:
        print(f"error: cannot read image: {e}", file=sys.stderr)
        return 2
    try:
        rewards = [(_label(spec), build_reward_from_spec(spec, device=device, dtype=args.dtype,
                                                          search_dirs=tuple(args.reward_dir)))
                   for spec in args.reward]
    except (ValueError, TypeError, OSError) as e:  # not found, unsafe, mismatched, bad spec
        print(f"error: {e}", file=sys.stderr)
        return 2

    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, img in enumerate(imgs):
        by_size[tuple(img.shape[-2:])].append(i)
    records: list[dict] = [{"image": p, "prompt": q} for p, q in zip(paths, prompts)]
    for label, reward in rewards:
        for idx in by_size.values():
            batch = torch.stack([imgs[i] for i in idx])                           # (n, 3, H, W)
            scores = reward.evaluate(batch, [prompts[i] for i in idx])
            for comp, values in scores.items():
                for j, i in enumerate(idx):
                    key = comp if comp not in records[i] else f"{label}/{comp}"
                    records[i][key] = float(values[j])
    for rec in records:
        print(json.dumps(rec))
    return 0
