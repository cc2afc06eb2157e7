"""Precision, devices, micro-batches and the planner, on the built-in model (the CPU paths of
what a GPU run uses; the same checks on real ComfyUI architectures are in tests/host)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from progrpo_core import config as C
from progrpo_core.devices import resolve_device, resolve_precision
from progrpo_core.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def make(tmp_path, **sections):
    table = {"run": {"out": str(tmp_path / "run"), "epochs": 2, "eval_seeds": 2, "eval_every": 0, "save_every": 0,
                     "checkpoint_every": 0},
             "grpo": {"method": "pro-grpo", "prompts_per_epoch": 2, "train_batch_size": 8, "lr": 1e-2},
             "schedule": {"group_size": 8, "keep": "6,4"}}
    for k, v in sections.items():
        table.setdefault(k, {}).update(v)
    return Trainer.build(C.build_config(table), log=lambda s: None)


def lora(t: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.adapter.named_parameters()}


def _record_gradients(t: Trainer) -> list[list[torch.Tensor]]:
    """Every optimizer step's gradients, recorded as the step is taken."""
    grads, step = [], t.optimizer.step

    def recording(*a, **k):
        grads.append([p.grad.detach().clone() for p in t.adapter.parameters()])
        return step(*a, **k)

    t.optimizer.step = recording
    return grads


def test_micro_batch_sizes_do_not_change_the_training(tmp_path):
    """Sampling, decoding and training in micro-batches of 1, 3 or the planner's choice: the same
    pruning decisions, the same gradient at every step and the same LoRA, to float rounding."""
    runs = {}
    for name, micro in (("one", 1), ("three", 3), ("auto", None)):
        t = make(tmp_path / name, run={"sample_micro_batch": micro, "train_micro_batch": micro,
                                       "decode_micro_batch": micro})
        grads = _record_gradients(t)
        records = list(t.epochs())
        runs[name] = (lora(t), [[p["kept"] for p in r.sample.proxy] for r in records], grads, t.micro)
    assert runs["auto"][3]["sample"] > 3 and runs["one"][3]["train"] == 1  # whole batches, or one row at a time
    base, kept, grads, _ = runs["auto"]
    for name in ("one", "three"):
        other, other_kept, other_grads, _ = runs[name]
        assert other_kept == kept and len(other_grads) == len(grads) == 2
        for step, (ga, gb) in enumerate(zip(other_grads, grads)):
            for a, b in zip(ga, gb):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7, msg=lambda m: f"step {step}: {m}")
        for k in base:  # Adam's first steps are ±lr wherever a gradient is non-zero: a rounding-sized gradient
            # can flip an entry, so the LoRA is compared as a whole
            assert float((other[k] - base[k]).norm() / base[k].norm()) < 1e-2, k


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_the_builtin_model(tmp_path, precision):
    """The model computes in bf16/fp16 (fp16 with loss scaling); the LoRA, its optimizer state and
    the EMA stay float32; the gradient reaches every entry fp32 reaches; a short run learns."""
    larger = {"grpo": {"method": "pro-grpo", "prompts_per_epoch": 8, "train_batch_size": 48},
              "schedule": {"group_size": 24, "keep": "16,8"}}
    ref = make(tmp_path / "fp32", run={"precision": "fp32", "epochs": 1}, **larger)
    next(ref.epochs())
    t = make(tmp_path / precision, run={"precision": precision, "epochs": 15}, **larger)
    assert t.model.compute_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert (t.scaler is not None) == (precision == "fp16")
    before = t.evaluate()["reward"]
    loop = t.epochs()
    next(loop)
    ups = [n for n, _ in t.adapter.named_parameters() if "lora_B" in n]
    moved = {n: p for n, p in t.adapter.named_parameters() if n in ups}
    fraction = sum(int((p != 0).sum()) for p in moved.values()) / sum(p.numel() for p in moved.values())
    ref_up = {n: p for n, p in ref.adapter.named_parameters() if n in ups}
    ref_fraction = sum(int((p != 0).sum()) for p in ref_up.values()) / sum(p.numel() for p in ref_up.values())
    assert fraction >= 0.99 * ref_fraction > 0.9
    assert all(p.dtype == torch.float32 for p in t.adapter.parameters())
    assert all(v.dtype == torch.float32 for st in t.optimizer.state.values() for v in st.values() if v.dim())
    assert all(s.dtype == torch.float32 for s in t.ema.shadow)
    for _ in loop:
        pass
    assert all(bool(torch.isfinite(p).all()) for p in t.adapter.parameters())
    assert t.evaluate()["reward"] > before + 0.15  # 0.30 → 0.53 (bf16), 0.55 (fp16); fp32 0.56


def test_optimizer_state_and_ema_follow_the_lora_to_another_device(tmp_path):
    """A host may move the model (and the LoRA in it) between epochs; the optimizer's moments and
    the EMA move with it before the next update."""
    t = make(tmp_path)
    next(t.epochs())
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)  # keep the Parameter objects, as .to on a GPU does
    try:
        t.model.net.to("meta")  # the host moved the model
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    t.rehome()
    params = t.adapter.parameters()
    assert all(v.device.type == "meta" for p in params for v in t.optimizer.state[p].values() if v.dim())
    assert all(s.device.type == "meta" for s in t.ema.shadow)
    for p in params:
        p.grad = torch.zeros_like(p)
    t.optimizer.step()  # no device mismatch
    t.ema.update()


def test_devices_and_precisions_resolve_or_say_what_exists():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_precision("auto", torch.device("cpu")).name == "fp32"
    with pytest.raises(ValueError, match="this machine has: cpu"):
        resolve_device("cuda:7") if torch.cuda.is_available() else resolve_device("cuda")
    with pytest.raises(ValueError, match="run.device='banana' is not a device"):
        C.build_config({"run": {"device": "banana"}})
    with pytest.raises(ValueError, match="run.precision='fp8' unknown"):
        C.build_config({"run": {"precision": "fp8"}})


def test_the_planner_picks_smaller_micro_batches_for_less_memory_and_refuses_what_cannot_fit(tmp_path):
    roomy = make(tmp_path / "a").make_plan()
    # whole batches: sampling 2 prompts x 8 rows; training a minibatch's 8 rows x their 8 trained steps in one call
    assert (roomy.sample_micro_batch, roomy.train_micro_batch) == (16, 64)
    assert max(roomy.peaks, key=roomy.peaks.get) == "training"
    tight_gib = (roomy.peak_bytes - 4 * roomy.costs.train.per) / 2**30  # four training rows less
    tight = make(tmp_path / "b", run={"memory_gib": tight_gib}, reward={"offload": False}).make_plan()
    assert 1 <= tight.train_micro_batch < 64 and tight.fits and tight.peak_bytes <= tight.budget_bytes
    with pytest.raises(ValueError, match="does not fit in memory: .*budget"):  # refused when the trainer is built
        make(tmp_path / "c", run={"memory_gib": 1e-6})


def test_plan_command_prints_json_for_this_machine_and_for_a_gpu():
    cmd = [sys.executable, "-m", "progrpo_core", "plan", "--json", "--run.epochs", "5"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    for key in ("peak_bytes", "sample_micro_batch", "train_micro_batch", "epoch_s"):
        assert key in plan
    assert plan["fits"] and plan["run_s"] >= 5 * plan["epoch_s"]
    done = subprocess.run(cmd + ["--gpu", "rtx4090"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    gpu = json.loads(done.stdout)
    assert gpu["target"] == "rtx4090" and gpu["precision"] == "bf16" and gpu["budget_bytes"] > 20 * 2**30
    done = subprocess.run(cmd + ["--gpu", "tpu9"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--gpu 'tpu9' unknown" in done.stderr


def test_the_evaluation_set_is_small_and_fixed():
    from progrpo_core.training.evaluation import eval_set

    prompts = [f"p{i}" for i in range(40)]
    rows, seeds = eval_set(prompts, 2, 16)
    assert len(rows) == 32 and len(set(rows)) == 16 and rows[:2] == ["p0", "p0"]
    assert (rows, seeds) == eval_set(prompts, 2, 16)


def test_checkpointing_at_depth_one_saves_bytes_and_keeps_the_gradient(tmp_path):
    from progrpo_core import grad_checkpoint

    t = make(tmp_path)
    net = t.model.net
    x = torch.randn(16, 1, 8, 8)
    cond = t.model.encode_prompts(["a handwritten 3"] * 16)

    def loss():
        return t.model.denoise(x, torch.full((16,), 0.5), cond).pow(2).mean()

    plain = grad_checkpoint.saved_bytes(loss)
    grads = torch.autograd.grad(loss(), t.adapter.parameters())
    patched = grad_checkpoint.enable(net, 1)
    try:
        assert patched and grad_checkpoint.saved_bytes(loss) < 0.5 * plain
        again = torch.autograd.grad(loss(), t.adapter.parameters())
    finally:
        grad_checkpoint.disable(patched)
    for a, b in zip(grads, again):
        torch.testing.assert_close(a, b)


def test_the_planner_times_only_the_steps_a_windowed_method_trains(tmp_path):
    import dataclasses

    from progrpo_core import planner
    from progrpo_core.methods import METHODS

    t = make(tmp_path / "w")
    costs, sampler = t.make_plan().costs, t.cfg.sampler
    target = planner.Target("gpu", 10 * 2**30, tflops=100.0)  # timed from FLOPs: exact ratios
    full = planner._epoch_seconds(costs, t.cfg, METHODS["grpo"].schedule(10), sampler, 2, 48, 8, 48, target)
    windowed = dataclasses.replace(METHODS["grpo"].schedule(10), sde_window=2, window_mode="progressive")
    window = planner._epoch_seconds(costs, t.cfg, windowed, sampler, 2, 48, 8, 48, target)
    assert window["sampling"] == pytest.approx(full["sampling"])
    assert window["training"] == pytest.approx(full["training"] * 2 / 8)  # 2 window steps against 0.9 x 9


def test_the_planner_prices_pruning_previews_at_their_own_decoder(tmp_path):
    """Previews decoded by a cheaper decoder (in ComfyUI a TAESD) or from a pooled latent cost what
    that decoder costs, not a full decode: the planner probes them as a phase of their own. (On an
    H200 the plan of pro-grpo with TAESD previews priced them at the VAE's cost, 1.34 s an epoch.)"""
    from progrpo_core import planner
    from progrpo_core.compute import count_flops

    t = make(tmp_path / "p")
    vae = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 3, 3, padding=1), torch.nn.Sigmoid())

    class WithVae:
        """The built-in model with a decoder that costs something, and ``cheap`` previews: the
        built-in decoder (as TAESD beside a VAE), else the same decoder."""

        def __init__(self, inner, cheap: bool):
            self.inner, self.cheap = inner, cheap

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def decode(self, x0):
            return vae(self.inner.decode(x0))

        def decode_proxy(self, x0):
            return self.inner.decode(x0) if self.cheap else self.decode(x0)

    def costs(model, scale):
        return planner.measure_costs(model, t.adapter, t.reward, t.sampler, t.device, "fp32", "a handwritten 3",
                                     timed=False, proxy_scale=scale)

    x = torch.zeros(1, *t.model.latent_shape)
    vae_flops = count_flops(lambda: vae(t.model.decode(x)))
    assert vae_flops > 0
    plain, own, pooled = costs(t.model, 1.0), costs(WithVae(t.model, True), 1.0), costs(WithVae(t.model, False), 0.5)
    assert plain.proxy is None and plain.preview()[2] == "decode"  # previews decoded as the final images
    assert costs(WithVae(t.model, True), None).proxy is None       # a run that does not prune: no previews
    assert own.flops["decode"] - own.flops["proxy"] == pytest.approx(vae_flops)
    assert own.proxy.per < own.decode.per
    assert pooled.flops["proxy"] == pytest.approx(pooled.flops["decode"] - vae_flops * 3 / 4, rel=0.05)
    # the plan's epoch prices each preview at its decoder's FLOPs (a slow GPU: arithmetic, not launches)
    target = planner.Target("gpu", 10 * 2**30, tflops=1e-6)
    sched, B = t.schedule, 2
    previews = B * (sched.group_size + sum(sched.keep[:-1]))
    rate = target.tflops * 1e12 * planner.MFU
    for c in (plain, own):
        s = planner._epoch_seconds(c, t.cfg, sched, t.sampler, B, 48, 8, 48, target)
        assert s["proxy"] == pytest.approx(previews * c.flops[c.preview()[2]] / rate)
        assert s["scoring"] == pytest.approx(B * sched.keep[-1] * c.flops["decode"] / rate)


def test_the_planner_averages_the_epochs_of_a_window_with_shared_noise(tmp_path):
    """pro-mixgrpo (the default): with one initial noise per prompt the model calls up to the
    window's first step run once per prompt, and the checkpoint follows the window as it moves, so
    epochs differ in cost. The plan's sampling is the run's average epoch: FLOP-exact against the
    rows a run of those epochs sampled. (On the H200 an epoch sampled 133 rows where the plan
    counted 180.)"""
    from progrpo_core import planner

    t = make(tmp_path / "m", run={"epochs": 4}, grpo={"method": "pro-mixgrpo"},
             schedule={"group_size": 8, "keep": "4", "slide_every": 1})
    assert t.schedule.shared_noise and t.schedule.prune_after_window
    nfe = [r.compute["nfe"] for r in t.epochs()]  # cumulative
    per_epoch = [b - a for a, b in zip([0] + nfe, nfe)]
    assert len(set(per_epoch)) > 1  # the window moved: the epochs differ
    target = planner.Target("gpu", 10 * 2**30, tflops=1e-6)  # timed from FLOPs: exact
    plan = t.make_plan(target)
    rate = target.tflops * 1e12 * planner.MFU
    assert plan.seconds["sampling"] * rate / plan.costs.flops["sample"] == pytest.approx(sum(per_epoch) / 4)


def test_retime_refits_each_phase_through_one_row_and_its_micro_batch(tmp_path, monkeypatch):
    """The 2-row line extrapolates badly; the refit passes through the 1-row time and a call timed
    at the plan's micro-batch (here a fake clock: 0.5 s + 0.25 s per row)."""
    import dataclasses

    from progrpo_core import planner

    t = make(tmp_path / "r")
    plan = t.make_plan()
    sizes: list[int] = []

    def fake_calls(*a, **k):
        return {name: (lambda n: (sizes.append(n), (lambda: n))[1]) for name in ("sample", "train", "decode")}

    monkeypatch.setattr(planner, "_phase_calls", fake_calls)
    monkeypatch.setattr(planner, "_seconds", lambda fn, device, *a, **k: 0.5 + 0.25 * fn())
    micro = {"sample": plan.sample_micro_batch, "train": plan.train_micro_batch, "decode": plan.decode_micro_batch}
    assert min(micro.values()) > 2
    for one_row, exact_at_one in ((planner.Linear(0.5, 0.1), True), (planner.Linear(0.0, 0.001), False)):
        costs = dataclasses.replace(plan.costs, sample_s=one_row, train_s=one_row, decode_s=one_row)
        sizes.clear()
        new = planner.retime(costs, plan, t.model, t.adapter, t.reward, t.sampler, t.device, "a handwritten 3")
        assert sizes == list(micro.values())
        for name, n in micro.items():
            line = getattr(new, f"{name}_s")
            assert line.at(n) == pytest.approx(0.5 + 0.25 * n)          # the micro-batch's time, exactly
            if exact_at_one:                                             # and the measured 1-row time
                assert line.at(1) == pytest.approx(0.6)
            else:                                                        # no negative fixed cost
                assert line.fixed == 0.0
