"""``python -m progrpo_core pretrain``: rebuild the built-in generators and reward classifier.

Everything is seeded and the recipe is written into each file's safetensors header, so the
shipped weights can be reproduced (bit for bit on the same torch build and CPU).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from ..io import save_safetensors
from . import CLASSIFIER_FILE, MODELS, WEIGHTS_DIR, DigitsDenoiser, scaled_linear_alphas_cumprod, state_fingerprint
from .data import load_split
from .nets import NULL_LABEL, DigitClassifier, DigitsNet


@dataclasses.dataclass(frozen=True)
class GeneratorRecipe:
    family: str
    seed: int = 0
    iters: int = 4000
    batch: int = 256
    lr: float = 2e-3
    hidden: int = 192
    depth: int = 3
    label_dropout: float = 0.1
    # Captions are wrong this often (replaced by a random digit), as scraped captions are: the
    # base model then follows prompts loosely when sampled without guidance, which leaves the
    # reward room to improve (a fully obedient digits model scores ~0.98 of a possible 1.0).
    caption_noise: float = 0.5
    # Two digits side by side (the harder task): each digit's label is wrong with ``caption_noise``
    # on its own, and the caption names the two in the wrong order this often.
    slots: int = 1
    order_noise: float = 0.0


@dataclasses.dataclass(frozen=True)
class ClassifierRecipe:
    seed: int = 0
    iters: int = 3000
    batch: int = 128
    lr: float = 2e-3
    hidden: int = 128
    noise: float = 0.05
    val_fraction: float = 0.25


def train_generator(r: GeneratorRecipe) -> tuple[DigitsNet, dict]:
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    x_all, y_all = load_split()["generator"]
    x_all = x_all * 2 - 1  # pixels in [-1, 1]
    net = DigitsNet(pixels=64 * r.slots, hidden=r.hidden, depth=r.depth, slots=r.slots)
    den = DigitsDenoiser(net, r.family)
    net.train().requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.iters, pct_start=0.05)
    ac = scaled_linear_alphas_cumprod() if r.family == "eps" else None
    losses = []
    for it in range(r.iters):
        if r.slots == 1:
            idx = torch.randint(0, len(x_all), (r.batch,), generator=g)
            x0, y = x_all[idx], y_all[idx].clone()
        else:  # independent digits side by side, labels (B, 2) left to right
            idx = torch.randint(0, len(x_all), (r.batch, 2), generator=g)
            x0, y = torch.cat([x_all[idx[:, 0]], x_all[idx[:, 1]]], dim=-1), y_all[idx].clone()
        wrong = torch.rand(y.shape, generator=g) < r.caption_noise
        y[wrong] = torch.randint(0, 10, (int(wrong.sum()),), generator=g)
        if r.slots == 2:
            swap = torch.rand(r.batch, generator=g) < r.order_noise
            y[swap] = y[swap].flip(1)
        y[torch.rand(r.batch, generator=g) < r.label_dropout] = NULL_LABEL
        eps = torch.randn(x0.shape, generator=g)
        if r.family == "flow":
            sigma = torch.rand(r.batch, generator=g)
            s = sigma.view(-1, 1, 1, 1)
            xt, target = (1 - s) * x0 + s * eps, eps - x0
        else:
            t = torch.randint(0, len(ac), (r.batch,), generator=g)
            ab = ac[t].float().view(-1, 1, 1, 1)
            sigma = ((1 - ac[t]) / ac[t]).sqrt().float()
            xt, target = ab.sqrt() * x0 + (1 - ab).sqrt() * eps, eps
        loss = F.mse_loss(net(xt, den.net_time(sigma), y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    net.eval().requires_grad_(False)
    return net, {"final_loss": sum(losses[-100:]) / 100}


def train_classifier(r: ClassifierRecipe) -> tuple[DigitClassifier, dict]:
    torch.manual_seed(r.seed)
    g = torch.Generator().manual_seed(r.seed)
    x, y = load_split()["classifier"]
    x = x.flatten(1)
    perm = torch.randperm(len(x), generator=g)
    n_val = int(len(x) * r.val_fraction)
    val, tr = perm[:n_val], perm[n_val:]
    net = DigitClassifier(hidden=r.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=1e-3)
    for _ in range(r.iters):
        idx = tr[torch.randint(0, len(tr), (r.batch,), generator=g)]
        xb = (x[idx] + r.noise * torch.randn(x[idx].shape, generator=g)).clamp(0, 1)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        acc = float((net(x[val]).argmax(-1) == y[val]).float().mean())
    return net, {"val_accuracy": round(acc, 4), "val_images": n_val}


# The two-digit models: a wrong digit as often as the one-digit models' captions, and the order
# wrong in 40 % of captions, so the base model places both digits right for ~0.2 of prompts.
PAIR_RECIPE = {"slots": 2, "order_noise": 0.4, "iters": 6000}


def recipe_for(name: str, seed: int = 0, iters: int | None = None) -> GeneratorRecipe:
    family = "flow" if name.endswith("flow") else "eps"
    extra = dict(PAIR_RECIPE) if "-pair-" in name else {}
    if iters:
        extra["iters"] = iters
    return GeneratorRecipe(family=family, seed=seed, **extra)


def pretrain(out: Path = WEIGHTS_DIR, seed: int = 0, iters: int | None = None, log=print,
             only: list[str] | None = None) -> dict[str, Path]:
    """Train and save the generators and the classifier into ``out`` (``only``: just these of
    ``digit-classifier`` and :data:`MODELS`); returns the paths."""
    names = ["digit-classifier", *MODELS]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"pretrain: unknown model(s) {', '.join(unknown)}; expected some of {', '.join(names)}")
    want = set(only or names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # now, not after minutes of training (the writers make no folders)
    written = {}
    t0 = time.perf_counter()
    if "digit-classifier" in want:
        crec = ClassifierRecipe(seed=seed)
        clf, cstats = train_classifier(crec)
        meta = {"recipe": json.dumps(dataclasses.asdict(crec)), "arch": json.dumps({"hidden": crec.hidden}),
                "stats": json.dumps(cstats), "torch": torch.__version__,
                "data": "sklearn.datasets.load_digits, classifier split (40%, seed 0)"}
        written["digit-classifier"] = save_safetensors(clf.state_dict(), out / CLASSIFIER_FILE, meta)
        log(f"classifier: {cstats} ({time.perf_counter() - t0:.0f}s)")
    for name, file in MODELS.items():
        if name not in want:
            continue
        rec = recipe_for(name, seed, iters)
        family = rec.family
        net, stats = train_generator(rec)
        state = net.state_dict()
        arch = {"hidden": rec.hidden, "depth": rec.depth}
        if rec.slots != 1:
            arch.update(pixels=64 * rec.slots, slots=rec.slots)
        meta = {"family": family, "recipe": json.dumps(dataclasses.asdict(rec)),
                "arch": json.dumps(arch), "stats": json.dumps(stats),
                "torch": torch.__version__, "fingerprint": state_fingerprint(state),
                "data": "sklearn.datasets.load_digits, generator split (60%, seed 0)"}
        written[name] = save_safetensors(state, out / file, meta)
        log(f"{name}: {stats} ({time.perf_counter() - t0:.0f}s)")
    return written
