"""``python -m progrpo_core {train,sample,eval,pretrain,score}``.

``train`` with no arguments runs Pro-GRPO on the built-in digits model. Every config field is
also a flag, ``--section.field VALUE`` (see ``train --help``); ``--config FILE`` reads a TOML
file first, flags override it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from . import config as C
from .methods import METHODS


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (sections: " + ", ".join(C.SECTIONS) + ")")
    p.add_argument("--out", help="run folder (= --run.out)")
    p.add_argument("--method", help=f"{', '.join(METHODS)} (= --grpo.method)")
    p.add_argument("--steps", type=int, help="cap on optimizer steps (= --run.max_steps)")
    p.add_argument("--seed", type=int, help="seed (= --run.seed)")
    p.add_argument("--model", dest="model_name", help="built-in model (= --model.name)")
    p.add_argument("--reward", dest="reward_name", help="reward to train on (= --reward.name)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section, name, help_, default in C.field_specs():
        g = groups.setdefault(section, p.add_argument_group(f"[{section}] settings"))
        flag = f"--{section}.{name}"
        g.add_argument(flag, dest=f"cfg__{section}__{name}", metavar="V",
                       help=f"{help_} (default: {default})")


SHORTHANDS = {"out": ("run", "out"), "method": ("grpo", "method"), "steps": ("run", "max_steps"),
              "seed": ("run", "seed"), "model_name": ("model", "name"), "reward_name": ("reward", "name")}


def config_from_args(args: argparse.Namespace) -> C.TrainConfig:
    table = C.load_toml(args.config) if getattr(args, "config", None) else {}
    over: dict[str, dict] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            over.setdefault(section, {})[name] = value
    for attr, (section, name) in SHORTHANDS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        given = over.get(section, {}).get(name)
        if given is not None and str(given) != str(value):
            flag = "--" + attr.replace("_name", "")
            raise ValueError(f"{flag} {value} and --{section}.{name} {given} say different things; give one of them")
        over.setdefault(section, {})[name] = value
    return C.build_config(C.merge(table, over))


def _single_thread_for_builtin(builtin: bool) -> None:
    """The built-in digits nets multiply matrices of a few hundred rows: one thread is as fast as
    several, and immune to the stalls a busy machine causes in multi-threaded BLAS."""
    if builtin:
        import torch

        torch.set_num_threads(1)


def cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .training import Trainer, TrainingStopped

    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in its folder and --overwrite deletes it; give one of them")
    if args.resume:
        from .training import RunFolder
        from .training.run_folder import RUN_FILE

        run_dir = Path(os.path.realpath(os.path.expanduser(args.resume)))  # runs/latest links the run's folder
        folder = RunFolder(run_dir)
        folder.refuse_links()  # (its config.toml is read before the folder is locked)
        if not (run_dir / "config.toml").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no config.toml there; give the folder of a run "
                                    "started by `train` (its --run.out)")
        if folder.foreign_entries() and not folder.legacy_run():
            raise ValueError(f"--resume {run_dir}: no checkpoint to resume from, and no {RUN_FILE}: it is not a run "
                             f"folder of ProGRPO (it holds {', '.join(folder.foreign_entries()[:4])}); give the folder "
                             "of a run started by `train` (its --run.out)")
        if args.config:
            raise ValueError("--resume reads the run's own config.toml; give changes as flags "
                             "(e.g. --run.epochs 200), not --config")
        other = args.out or getattr(args, "cfg__run__out", None)
        if other and Path(other).resolve() != run_dir.resolve():
            raise ValueError(f"--resume {run_dir} continues that run in its own folder; drop --out/--run.out {other}")
        args.config, args.out = str(run_dir / "config.toml"), str(run_dir)
    cfg = config_from_args(args)
    _single_thread_for_builtin(cfg.model.comfyui is None)

    def terminate(signum, frame):  # a scheduler's or torchrun's SIGTERM saves a checkpoint like Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, terminate)
    trainer = Trainer.build(cfg)
    try:
        trainer.run(progress=not args.no_progress, resume=bool(args.resume), overwrite=args.overwrite)
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan of the run ``train`` would start with the same settings."""
    from .planner import GPUS, GiB, Target
    from .training import Trainer

    cfg = config_from_args(args)
    _single_thread_for_builtin(cfg.model.comfyui is None)
    target = None
    if args.gpu or args.gpu_memory or args.gpu_tflops:
        memory, tflops = GPUS.get(args.gpu, (None, None)) if args.gpu else (None, None)
        if args.gpu and args.gpu not in GPUS:
            raise ValueError(f"--gpu {args.gpu!r} unknown; expected one of {', '.join(GPUS)}, or give --gpu-memory "
                             "and --gpu-tflops")
        memory, tflops = args.gpu_memory or memory, args.gpu_tflops or tflops
        if not memory or not tflops:
            raise ValueError("planning for a GPU needs its memory and speed: --gpu NAME, or --gpu-memory GIB and "
                             "--gpu-tflops T (dense bf16/fp16 TFLOPS)")
        # measured here in the GPU's precision (bf16 unless given), timed by FLOPs
        cfg = cfg.replace(run={"device": "cpu", "precision": "bf16" if cfg.run.precision == "auto" else cfg.run.precision})
        target = Target(args.gpu or f"a {memory:g} GiB GPU", int(0.9 * memory * GiB), float(tflops))
    trainer = Trainer.build(cfg, log=lambda s: None, plan=False)
    try:
        plan = trainer.make_plan(target)
    finally:
        trainer.close()
    if args.json:
        d = plan.as_dict()
        print(json.dumps(d))
    else:
        print(plan.text())
    return 0 if plan.fits else 1


def _model_and_lora(name: str, lora: str | None):
    from .embedded import load_digits_model
    from .lora import lora_from_file

    _single_thread_for_builtin(True)
    model = load_digits_model(name)
    if lora:
        lora_from_file(model, lora)
    return model


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from . import plots
    from .io import check_writable_target
    from .training import sample_deterministic

    check_writable_target(args.out)  # before the work, not after it
    model = _model_and_lora(args.model, args.lora)
    prompts = args.prompt or list(model.default_prompts)
    plots.check_grid_size(len(prompts) * args.seeds, args.seeds, model.latent_shape[-2:], args.scale, "--scale")
    rows = [p for p in prompts for _ in range(args.seeds)]
    seeds = [args.seed + i for i in range(args.seeds)] * len(prompts)
    latents = sample_deterministic(model, rows, seeds, args.sample_steps, args.cfg)
    images = model.decode(latents)
    if not (bool(torch.isfinite(latents).all()) and bool(torch.isfinite(images).all())):
        raise ValueError(f"the model rendered NaN or infinite images (cfg {args.cfg:g}"
                         f"{f', LoRA {args.lora}' if args.lora else ''}); nothing was written")
    path = plots.save_grid(images, args.seeds, args.out, scale=args.scale)
    print(f"wrote {path} ({len(prompts)} prompts x {args.seeds} seeds)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .rewards import build_reward
    from .training import EVAL_SEED_BASE, sample_deterministic

    model = _model_and_lora(args.model, args.lora)
    prompts = [p for p in model.default_prompts for _ in range(args.seeds)]
    seeds = [EVAL_SEED_BASE + i for i in range(len(prompts))]
    latents = sample_deterministic(model, prompts, seeds, args.sample_steps, args.cfg)
    images = model.decode(latents)
    result = {"model": args.model, "lora": args.lora, "images": len(prompts)}
    for name in args.reward:
        r = build_reward(name)
        result[f"reward_{name}"] = round(float(r(images, prompts).mean()), 6)
    print(json.dumps(result))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .embedded import WEIGHTS_DIR
    from .embedded.pretrain import pretrain

    out = Path(args.out) if args.out else WEIGHTS_DIR
    for name, path in pretrain(out, seed=args.seed, iters=args.iters, only=args.only).items():
        print(f"{name}: {path}")
    return 0


def _bounded(kind: type, low: float, high: float, low_open: bool = False):
    """An argparse type: a finite ``kind`` in [low, high] (``(low, high]`` with ``low_open``)."""
    import math

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(v) or v < low or (low_open and v == low) or v > high:
            shown = (str(int(low)), str(int(high))) if kind is int else (f"{low:g}", f"{high:g}")
            raise argparse.ArgumentTypeError(f"{text} must be a number {'above' if low_open else 'from'} {shown[0]} "
                                             f"{'and at most' if low_open else 'to'} {shown[1]}")
        return v

    return parse


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be 1 or more")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m progrpo_core", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="GRPO / Pro-GRPO LoRA training (default: Pro-GRPO on the built-in model)")
    _add_config_flags(t)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run folder that holds another run (deletes that run's files)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint, with its config.toml "
                        "(flags may change run length and output settings, e.g. --run.epochs)")
    t.set_defaults(func=cmd_train)

    pl = sub.add_parser("plan", help="before training: peak memory per phase, micro-batches, seconds per epoch and "
                                     "for the run (the same settings as train)")
    _add_config_flags(pl)
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    pl.add_argument("--gpu", help="plan for this GPU instead of this machine's device (e.g. rtx4090, a100-80, h100)")
    pl.add_argument("--gpu-memory", type=_bounded(float, 0.0, 1e5, low_open=True), metavar="GIB",
                    help="plan for a GPU with this much memory")
    pl.add_argument("--gpu-tflops", type=_bounded(float, 0.0, 1e6, low_open=True), metavar="T",
                    help="... and this dense bf16/fp16 throughput")
    pl.set_defaults(func=cmd_plan)

    def sampling_flags(q):
        q.add_argument("--model", default="digits-flow",
                       help="built-in model: digits-flow, digits-eps, digits-pair-flow or digits-pair-eps")
        q.add_argument("--lora", help="LoRA file to apply (as saved by train)")
        q.add_argument("--sample-steps", type=_positive, default=10, help="deterministic sampling steps")
        q.add_argument("--cfg", type=_bounded(float, 0.0, C.MAX_CFG), default=1.0,
                       help=f"guidance scale (1 = off; at most {C.MAX_CFG:g})")

    s = sub.add_parser("sample", help="render a grid of deterministic samples, with or without a LoRA")
    sampling_flags(s)
    s.add_argument("--prompt", action="append", help="prompt (repeatable; default: the model's prompt set)")
    s.add_argument("--seeds", type=_positive, default=8, help="samples per prompt")
    s.add_argument("--seed", type=_bounded(int, 0, C.MAX_SEED), default=0, help="first seed")
    s.add_argument("--scale", type=_bounded(int, 1, 256), default=4, help="pixel upscale of the grid (1 to 256)")
    s.add_argument("--out", default="samples.png", help="output PNG")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="mean reward on fixed prompts and seeds, deterministic sampling")
    sampling_flags(e)
    e.add_argument("--reward", action="append", default=None, help="reward name (repeatable; default digit)")
    e.add_argument("--seeds", type=_positive, default=8, help="seeds per prompt")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("pretrain", help="rebuild the built-in models and reward classifier")
    r.add_argument("--out", help="output folder (default: the package's weights folder)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--iters", type=int, default=None, help="generator iterations (default: the recipe's)")
    r.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="rebuild only this one (repeatable): digit-classifier or a built-in model name")
    r.set_defaults(func=cmd_pretrain)

    try:
        from .rewards.cli import add_score_parser, run_score
    except ImportError:
        pass
    else:
        add_score_parser(sub)
        sub.choices["score"].set_defaults(func=run_score)
    sub.add_parser("bench", add_help=False,  # parsed by the bench itself: `bench --help`
                   help="benchmark the methods at equal compute on the built-in models (see bench --help)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the only command that imports the bench
        return _guarded(lambda: _bench(argv[1:]))

    def parse_and_run() -> int:
        args = build_parser().parse_args(argv)  # (imports torch: Ctrl-C may land here)
        if getattr(args, "command", None) == "eval" and not args.reward:
            args.reward = ["digit"]
        return args.func(args)

    return _guarded(parse_and_run)


def _bench(argv: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(argv)


def _guarded(run) -> int:
    try:
        return run()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory: this machine (or this process's limit, ulimit -v / the container's) has too "
              "little memory for these settings; lower the group size, grpo.prompts_per_epoch or lora.rank, or "
              "set smaller micro-batches", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "can't allocate memory" in str(e) or "out of memory" in str(e).lower():
            print(f"error: out of memory ({str(e).splitlines()[0][:200]}): lower the group size, "
                  "grpo.prompts_per_epoch or lora.rank, or set smaller micro-batches", file=sys.stderr)
            return 2
        raise
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: cannot use{where}: {e.strerror or e}", file=sys.stderr)
        return 2
