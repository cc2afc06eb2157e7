"""The command line's run (``python -m progrpo_core train``): the trainer's loop with a progress
bar, plus what only a whole run writes — the evaluation before and after, the sample grids, the
reward curve, the final LoRA and ``summary.json``."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from .guards import check_collapse
from .records import jsonable
from .run_folder import RunFolder, disk_full


def run(trainer, progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``trainer`` for ``run.epochs`` (or until ``run.max_steps`` optimizer steps) and write
    its run folder ``run.out`` (default: a new one, see :func:`new_run_folder`); ``resume=True``
    continues from the newest checkpoint there, ``overwrite`` replaces a run already there."""
    c, main = trainer.cfg, trainer.world.is_main
    fresh = c.run.out is None
    out = c.run.out if not fresh else trainer.world.broadcast_object(new_run_folder(c.grpo.method) if main else None)
    folder = RunFolder(out)
    try:
        return _run(trainer, folder, progress, resume, overwrite, fresh)
    finally:
        folder.unlock()  # the run is over, finished or not


def _run(trainer, folder: RunFolder, progress: bool, resume: bool, overwrite: bool, fresh: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    c, main = trainer.cfg, trainer.world.is_main
    trainer.restart_clock()
    resumed = trainer.open(folder, resume, overwrite)
    if fresh and main:
        note = point_latest(folder.out)
        if note:
            trainer.log(note)
    if not resumed:
        before = trainer.evaluate()
        trainer.state.before = {k: v for k, v in before.items() if k != "latents"}
        if main:
            folder.save_grid(trainer.model.decode(before["latents"]), trainer.eval_seeds, "samples_before.png")
        trainer.log(f"eval reward before: {before['reward']:.4f}"
                    + (f" (gold {before['gold']:.4f})" if "gold" in before else ""))
    bar = tqdm(total=c.run.epochs, initial=trainer.epoch, desc=f"{c.grpo.method}", disable=not progress or not main,
               unit="epoch")
    try:
        for record in trainer.epochs(folder):
            bar.set_postfix(reward=f"{record.group_reward:.3f}", spread=f"{record.reward_std:.3f}",
                            steps=trainer.optimizer_steps)
            bar.update(1)
    finally:
        bar.close()
    try:
        after = trainer.evaluate()
    except BaseException:
        if not c.run.checkpoint_every:  # a run that checkpoints only when stopped: it stopped now
            trainer.save_on_interrupt(folder)
        raise
    note = check_collapse(trainer.state.rows, trainer.state.before, c.grpo.lr, str(folder.out), trainer.words,
                          after=(trainer.epoch, after["reward"]))
    if note:
        trainer.log(note)
    try:
        return _finish(trainer, folder, after, [note] if note else [])
    except OSError as e:
        disk_full(e, folder)
        raise


def new_run_folder(method: str, root: str | Path = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<method>`` (a numbered suffix if that exists already)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = Path(root) / f"{stamp}-{method}", 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{method}-{n}"
    return path


def point_latest(folder: Path) -> str | None:
    """Make ``<root>/latest`` a symlink to ``folder`` (replaced atomically); returns a note when it
    could not. Where links cannot be made (Windows without developer mode) there is no ``latest``;
    the run folder is printed anyway."""
    import os

    latest = folder.parent / "latest"
    if latest.exists() and not latest.is_symlink():  # a real file or folder of that name: leave it alone
        return (f"note: {latest} is a real {'folder' if latest.is_dir() else 'file'}, not a link, so it was left as "
                f"it is and does not point at this run ({folder}); rename it to have {latest} follow the newest run")
    tmp = folder.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(folder.name, tmp)
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)


def _finish(trainer, folder: RunFolder, after: dict[str, Any], warnings: list[str] = ()) -> dict[str, Any]:
    """The LoRA, the after-grid, the curves and ``summary.json``."""
    c, main = trainer.cfg, trainer.world.is_main
    before, rows = trainer.state.before, trainer.state.rows
    if main:
        trainer.save_lora(folder.lora_path)
        folder.save_grid(trainer.model.decode(after["latents"]), trainer.eval_seeds, "samples_after.png")
        eval_points = [(0, before["reward"])] + [(r["epoch"], r["eval_reward"]) for r in rows
                                                 if r.get("eval_reward") is not None]
        eval_points.append((trainer.epoch, after["reward"]))
        folder.plot_rewards(rows, eval_points, f"{c.grpo.method} on {c.model.name}: {c.reward.name}")
    wall = trainer.elapsed()
    comp = trainer.state.compute
    summary = {
        "method": c.grpo.method, "model": c.model.checkpoint or c.model.name, "reward": c.reward.name,
        "eval_reward_before": before["reward"], "eval_reward_after": after["reward"],
        "epochs": trainer.epoch, "optimizer_steps": trainer.optimizer_steps, "skipped_updates": trainer.skipped_updates,
        "nfe_total": comp.nfe_sample + comp.nfe_train_fwd,
        "compute": comp.as_dict(), "compute_units": comp.units(),
        "wall_s": round(wall, 2), "lora": str(folder.lora_path), "seed": c.run.seed,
        "schedule": dataclasses.asdict(trainer.schedule), "world_size": trainer.world.world_size,
    }
    if warnings:
        summary["warnings"] = list(warnings)
    if "gold" in after:
        summary["gold"] = c.reward.gold
        summary["eval_gold_before"], summary["eval_gold_after"] = before.get("gold"), after["gold"]
    summary = jsonable(summary)
    if main:
        folder.write_summary(summary)
    trainer.log(f"eval reward after: {after['reward']:.4f} ({trainer.optimizer_steps} optimizer steps, "
                f"{wall:.0f}s); run folder {folder.out}")
    return summary
