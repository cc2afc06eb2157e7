"""The command line's run (``python -m progrpo_core train``): the trainer's loop with a progress
bar, plus what only a whole run writes — the evaluation before and after, the sample grids, the
reward curve, the final LoRA and ``summary.json``."""
from __future__ import annotations

import dataclasses
from typing import Any

from .records import jsonable
from .run_folder import RunFolder


def run(trainer, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train ``trainer`` for ``run.epochs`` (or until ``run.max_steps`` optimizer steps) and write
    its run folder ``run.out``; ``resume=True`` continues from the newest checkpoint there."""
    from tqdm.auto import tqdm

    c, main = trainer.cfg, trainer.world.is_main
    folder = RunFolder(c.run.out)
    trainer.restart_clock()
    if not trainer.open(folder, resume):
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
            bar.set_postfix(reward=f"{record.reward_mean:.3f}", steps=trainer.optimizer_steps)
            bar.update(1)
    finally:
        bar.close()
    try:
        after = trainer.evaluate()
    except BaseException:
        if not c.run.checkpoint_every:  # a run that checkpoints only when stopped: it stopped now
            trainer.save_on_interrupt(folder)
        raise
    return _finish(trainer, folder, after)


def _finish(trainer, folder: RunFolder, after: dict[str, Any]) -> dict[str, Any]:
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
    if "gold" in after:
        summary["gold"] = c.reward.gold
        summary["eval_gold_before"], summary["eval_gold_after"] = before.get("gold"), after["gold"]
    summary = jsonable(summary)
    if main:
        folder.write_summary(summary)
    trainer.log(f"eval reward after: {after['reward']:.4f} ({trainer.optimizer_steps} optimizer steps, "
                f"{wall:.0f}s); run folder {folder.out}")
    return summary
