"""The GRPO LoRA Trainer inside the host: a thin driver of the core's training loop with ComfyUI's
model, adapters, guider session, progress, previews and interrupts."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from progrpo_core.checkpoint import CheckpointError, RunFolderError
from progrpo_core.training import EpochRecord, EpochsDoneError, ResumeSettingsError, RunFolder, Trainer
from progrpo_core.training.run_folder import disk_full

from .. import train_driver as training
from .convert import latent_samples, pil_of
from .files import autosave_path, loras_dir, run_folder
from .lora import ComfyLoraAdapter, apply_lora
from .model import ComfyDenoiser, check_latent_dims, check_vae, clone_conditioning, encode_text, family_info, model_family
from .reward import for_model
from .train_context import training_model
from .ui import Progress

log = logging.getLogger("progrpo")


def train_lora(model, vae, clip, positive, negative, latent, prompts: list[str], cfg, reward, *, targets: str,
               run_name: str, resume: bool, node_id: str | None = None, overwrite: bool = False, proxy_vae=None):
    """The GRPO LoRA Trainer: ``(MODEL with the LoRA, LORA_MODEL, curves IMAGE, (short, full) summary)``.

    Trains on a clone of MODEL (see :func:`training_model`), loaded whole on ComfyUI's device, by
    driving the core's training loop; precision, micro-batches and gradient checkpointing come from
    ``cfg.run``; the run folder is ``output/progrpo/<run_name>``.
    Before training, the planner's numbers are shown on the node and a run that cannot fit is
    refused. Every ``run.save_every`` epochs and at the end, the LoRA goes to
    ``models/loras/progrpo/autosave/<run_name>.safetensors`` and a resumable checkpoint (LoRA,
    optimizer, EMA, RNG) to the run folder; when training stops early (interrupt or error) the last
    completed epoch is checkpointed and the LoRA trained so far saved. ``resume`` continues from the
    newest checkpoint; ``cfg.run.epochs`` counts the whole run. ``proxy_vae`` (e.g. TAESD) decodes the
    pruning previews instead of ``vae``."""
    samples = latent_samples(latent)
    _check_inputs(model, vae, clip, positive, samples, prompts, cfg, proxy_vae)
    folder = RunFolder(run_folder(run_name), lora_path=autosave_path(run_name))
    cfg = cfg.replace(run={"out": str(folder.out)})
    with training_model(model) as (mp, shares):
        den = ComfyDenoiser(mp, samples.shape[1:], vae=vae, clip=clip, targets=targets,
                            name=type(model.model).__name__, full_load=True, proxy_vae=proxy_vae)
        _register_prompts(den, clip, positive, negative, prompts)
        adapter = ComfyLoraAdapter(den, cfg.lora.rank, cfg.lora.alpha, seed=cfg.run.seed, copy_other_weights=shares)
        recorder = training.RecordingReward(for_model(reward.reward, den, log.info))
        session = _Session(cfg, den, adapter, recorder, prompts, folder, run_name, node_id)
        log.info("ProGRPO %s: %s", run_name, den.describe(targets))
        if not den.info.listed:
            log.warning("ProGRPO: %s", den.unlisted_note(targets))
            session.progress.text(den.unlisted_note(targets))
        try:
            history, start = session.train(resume, overwrite)
            trainer = session.trainer
            lora = training.trained_lora(trainer)
            summary = _summary(cfg, history, start, trainer, folder)
        finally:
            if session.trainer is not None:
                session.trainer.close()
            adapter.remove()
    out_model = apply_lora(model, lora)
    curves = training.curves_image(history, f"{cfg.grpo.method}: {reward.spec}")
    return out_model, lora, curves, summary


class _Session:
    """One press of the trainer node: inside ComfyUI's guider session (the model loaded and kept
    loaded), build the trainer, open its run folder, train; on the way out keep what was trained."""

    def __init__(self, cfg, den: ComfyDenoiser, adapter, recorder, prompts, folder: RunFolder, run_name: str,
                 node_id: str | None):
        self.cfg, self.den, self.adapter, self.recorder, self.prompts = cfg, den, adapter, recorder, prompts
        self.folder, self.run_name, self.node_id = folder, run_name, node_id
        self.trainer: Trainer | None = None
        self.progress = Progress(max(1, cfg.run.epochs) * (cfg.sampler.steps + 1), node_id)
        self.start = 0

    def train(self, resume: bool, overwrite: bool) -> tuple[list[EpochRecord], int]:
        """Train; save the LoRA and a checkpoint at the end. Returns this call's epoch records and
        the epoch it started from."""
        try:
            self.den.run(lambda: self._body(resume, overwrite), sigmas=self.den.sigmas(self.cfg.sampler.steps))
        except BaseException as e:
            self._keep_what_was_trained(e)
            raise
        trainer = self.trainer
        try:
            trainer.save_lora(self.folder.lora_path)
            if trainer.state.last_checkpoint != trainer.epoch:
                trainer.save_checkpoint(self.folder)
        except OSError as e:
            disk_full(e, self.folder, training.NODE_WORDS)  # a full disk in the node's words, promising what is there
            raise
        return [EpochRecord.from_row(r) for r in trainer.metrics_rows if r["epoch"] > self.start], self.start

    def _body(self, resume: bool, overwrite: bool) -> None:
        cfg, T = self.cfg, self.cfg.sampler.steps
        trainer = self.trainer = Trainer.build(cfg, model=self.den, reward=self.recorder, prompts=self.prompts,
                                               adapter=self.adapter, log=log.info, words=training.NODE_WORDS,
                                               refuse=False)
        plan = trainer.plan
        if plan is not None:
            self.progress.text(plan.brief())
            log.info("ProGRPO %s\n%s", self.run_name, plan.text())
            if not plan.fits:
                raise ValueError(_does_not_fit(plan))
        resumed = self._open(trainer, resume, overwrite)
        self.start = start = trainer.epoch
        self.progress = Progress(max(1, cfg.run.epochs - start) * (T + 1), self.node_id)
        if resumed:
            self.progress.text(f"resuming {self.run_name} after epoch {start}")
        if start >= cfg.run.epochs:
            return
        G = trainer.schedule.group_size

        def on_epoch(record):
            grid = training.preview_grid(self.recorder, record.batch, G, cfg.grpo.prompts_per_epoch)
            self.progress.update((record.epoch - start) * (T + 1), None, preview=pil_of(grid) if grid is not None else None)
            self.progress.text(record.text(cfg.run.epochs))

        training.drive_training(trainer, self.folder, on_step=self.progress.update, on_epoch=on_epoch)

    def _open(self, trainer: Trainer, resume: bool, overwrite: bool) -> bool:
        """Open the run folder: a full disk, an unwritable or busy folder, another run's folder —
        now, not after an hour. Errors in the node's words."""
        run_name, folder = self.run_name, self.folder
        try:
            return trainer.open(folder, resume=resume, overwrite=overwrite)
        except ResumeSettingsError as e:
            raise ValueError(training.resume_refusal(e, run_name)) from None
        except EpochsDoneError as e:
            raise ValueError(f"epochs={e.asked}, but run {run_name!r} has done {e.done} epochs already (epochs counts "
                             f"the whole run, not the epochs to add): set epochs to {e.done + 1} or more to train on"
                             ) from None
        except CheckpointError as e:
            raise ValueError(f"cannot resume run {run_name!r}: {e}. Turn 'resume' off and 'overwrite' on to start the "
                             "run over, or choose another run_name") from None
        except RunFolderError as e:
            if "already holds a run" not in str(e):
                raise ValueError(str(e)) from None
            raise ValueError(f"run_name {run_name!r} already holds a run ({folder.holds_run()}, in {folder.out}): "
                             "turn 'resume' on to continue it, 'overwrite' on to start it over (deletes it), or choose "
                             "another run_name") from None

    def _keep_what_was_trained(self, e: BaseException) -> None:
        """Training stopped early: save the LoRA of the last completed epoch and say where it is."""
        trainer, cfg = self.trainer, self.cfg
        kept = None
        if trainer is not None:
            try:
                kept = trainer.save_boundary_lora(self.folder.lora_path)
            except Exception as save_error:  # never hide the error that stopped training
                log.error("ProGRPO: training stopped (%s) and the LoRA could not be saved: %s", type(e).__name__,
                          save_error)
        self.progress.text(f"interrupted after epoch {kept['epoch']}; LoRA saved to {_shown(kept['path'])}, resume "
                           f"continues from there" if kept else "stopped before the first epoch finished; nothing saved")
        if kept:
            log.warning("ProGRPO: training stopped in epoch %d (%s); the LoRA of epoch %d is in %s; resume continues "
                        "from the checkpoint in %s", trainer.epoch, type(e).__name__, kept["epoch"], kept["path"],
                        self.folder.out)
        if (isinstance(e, RuntimeError) and "modified by an inplace operation" in str(e)
                and not cfg.run.gradient_checkpointing):
            raise RuntimeError(f"{self.den.name} updates activations in place inside its blocks (Flux does), which "
                               "plain backpropagation cannot handle: turn gradient_checkpointing on") from None


def _shown(path) -> str:
    """A LoRA as the node shows it: its name in LoraLoader's list (relative to models/loras), else
    relative to ComfyUI's models or output folder, else its file name."""
    import folder_paths

    for base, parent in ((loras_dir(), False), (folder_paths.models_dir, True),
                         (folder_paths.get_output_directory(), True)):
        try:
            root = Path(base).resolve()
            return Path(path).resolve().relative_to(root.parent if parent else root).as_posix()
        except ValueError:
            continue
    return Path(path).name


def _does_not_fit(plan) -> str:
    return (f"this training run does not fit in the device's memory: {'; '.join(plan.problems)}.\n{plan.text()}\n"
            "Lower prompts_per_epoch or group_size, train at a smaller latent size, set the micro-batch widgets to "
            "smaller numbers, or turn gradient_checkpointing on (checkpoint_depth 1).")


def _check_inputs(model, vae, clip, positive, samples: torch.Tensor, prompts: list[str], cfg, proxy_vae=None) -> None:
    """Bad inputs fail before any work, so they leave everything as it was."""
    family = model_family(model)
    cfg.sampler.resolved(family)
    channels = int(getattr(model.model.latent_format, "latent_channels", samples.shape[1]))
    if samples.shape[1] != channels:
        raise ValueError(f"the LATENT has {samples.shape[1]} channels but the model works on {channels}-channel "
                         "latents; make the latent with the node that belongs to this model")
    check_latent_dims(family_info(model), samples.shape[1:])
    check_vae(vae, channels)
    if proxy_vae is not None:
        check_vae(proxy_vae, channels, "the proxy_vae")
    if clip is None and positive is None:
        raise ValueError("the trainer needs prompts' conditioning: connect a CLIP (to encode the prompt list) "
                         "or a positive CONDITIONING")
    if clip is None and len(prompts) != 1:
        raise ValueError(f"without a CLIP the positive CONDITIONING stands for one prompt, but the list has "
                         f"{len(prompts)}; connect a CLIP to train on several prompts")


def _register_prompts(den: ComfyDenoiser, clip, positive, negative, prompts: list[str]) -> None:
    """Each prompt's (positive, negative) conditioning, as normal (not inference-mode) tensors."""
    neg = clone_conditioning(negative) if negative is not None else None
    with torch.no_grad():
        if clip is not None:
            neg = neg if neg is not None else encode_text(clip, "")
            for p in prompts:
                den.add_prompt(p, encode_text(clip, p), neg)
        else:
            den.add_prompt(prompts[0], clone_conditioning(positive), neg)


def _summary(cfg, history: list[EpochRecord], start: int, trainer: Trainer, folder: RunFolder) -> tuple[str, str]:
    """Two short lines for the node (relative names) and the whole story for the prompt history."""
    rewards = f"{history[0].group_reward:.3f} → {history[-1].group_reward:.3f}" if history else "n/a"
    short = (f"{cfg.grpo.method}: epochs {start + 1}–{trainer.epoch}/{cfg.run.epochs}, reward {rewards}\n"
             f"LoRA {_shown(folder.lora_path)}")
    full = (f"{cfg.grpo.method}: epochs {start + 1}..{trainer.epoch} of {cfg.run.epochs}, "
            f"{trainer.optimizer_steps} optimizer steps, whole-group reward {rewards}\n"
            f"LoRA {folder.lora_path}\ncheckpoints and metrics {folder.out}")
    return short, full