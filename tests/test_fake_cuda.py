"""The GPU paths, run on a GPU: the real one where this machine has one, else an emulated one
(``tests/fake_cuda.py``: CUDA's device rules on CPU tensors, so a tensor on the wrong device, a
generator on the wrong device or an unguarded ``torch.cuda`` call fails here as on a GPU).

Every test is marked ``cuda``: ``tests/gpu/device_check.sh`` runs ``pytest -m cuda`` on a real GPU.
Where the emulation computes exactly what the CPU computes, tests compare with a CPU run bit for
bit; on a real GPU they compare to a tolerance.
"""
from __future__ import annotations

import contextlib
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from fake_cuda import FakeCuda
from progrpo_core import config as C
from progrpo_core.compute import Compute
from progrpo_core.training import Trainer

pytestmark = pytest.mark.cuda
REAL_GPU = torch.cuda.is_available()


@pytest.fixture()
def gpu():
    """``"cuda"``, on the real GPU or the emulated one."""
    if REAL_GPU:
        yield "cuda"
        return
    with FakeCuda():
        yield "cuda"


def same(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    """Equal on the emulated GPU (the same CPU kernels), close on a real one."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if REAL_GPU:
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4, msg=what or None)
    else:
        assert torch.equal(a, b), what


def table(out: Path, device: str, **sections) -> C.TrainConfig:
    t = {"run": {"out": str(out), "epochs": 2, "seed": 5, "eval_seeds": 1, "eval_prompts": 3, "eval_every": 0,
                 "save_every": 0, "checkpoint_every": 0, "device": device, "precision": "fp32"},
         "grpo": {"method": "pro-grpo", "prompts_per_epoch": 2, "train_batch_size": 8, "lr": 1e-2},
         "schedule": {"group_size": 8, "keep": [6, 4], "checkpoints": [4, 7]}}
    for k, v in sections.items():
        t.setdefault(k, {}).update(v)
    return C.build_config(t)


def lora_of(t: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in t.adapter.named_parameters()}


@pytest.mark.parametrize("name", ["digits-flow", "digits-eps", "digits-pair-flow", "digits-pair-eps"])
def test_builtin_models_run_on_the_gpu(gpu, name):
    """Conditioning is made on the model's device; σ may come from the CPU schedule."""
    from progrpo_core.embedded import load_digits_model

    ref = load_digits_model(name)
    m = load_digits_model(name)
    m.net.to(gpu)
    prompts = list(m.default_prompts[:3])
    cond = m.encode_prompts(prompts)
    assert cond.device.type == "cuda"
    assert m.select_cond(cond, torch.tensor([2, 0])).device.type == "cuda"
    x = torch.randn((3, *m.latent_shape), generator=torch.Generator().manual_seed(0))
    sigma = m.sigmas(10)[3].expand(3)
    for cfg in (1.0, 3.0):
        out = m.denoise(x.to(gpu), sigma, cond, cfg)
        assert out.device.type == "cuda"
        same(out, ref.denoise(x, sigma, ref.encode_prompts(prompts), cfg), f"{name} cfg {cfg}")
    assert m.decode(out).device.type == "cuda"


def test_group_sampler_prunes_on_the_gpu(gpu, tmp_path):
    """Expand-and-prune sampling with proxy scoring on the GPU, deterministic for a seed. The
    emulated GPU draws its noise from CPU generators, so there the trajectories and pruning
    decisions are the CPU's exactly; a real GPU's random stream differs, so it is compared with itself."""
    t = Trainer.build(table(tmp_path / "gpu", gpu), log=lambda s: None)
    t.ensure_plan()
    b = t.sample_epoch(0)
    assert b.rollout.latents.device.type == "cuda"
    assert len(b.stats.proxy) == 2  # pruned at both checkpoints
    a = t.sample_epoch(0) if REAL_GPU else Trainer.build(table(tmp_path / "cpu", "cpu"), log=lambda s: None).sample_epoch(0)
    assert [p["kept"] for p in b.stats.proxy] == [p["kept"] for p in a.stats.proxy]
    same(b.rollout.latents, a.rollout.latents, "trajectories")
    same(b.advantages, a.advantages, "advantages")


@pytest.mark.parametrize("method", ["nft", "mixgrpo", "flow-grpo-fast-cps"])
def test_other_objectives_and_samplers_train_on_the_gpu(gpu, tmp_path, method):
    """DiffusionNFT's objective (its own training code), MixGRPO's shared noise and progressive
    window, and the CPS sampler with per-batch windows: an epoch of each on the GPU changes the LoRA."""
    t = Trainer.build(table(tmp_path / "run", gpu, run={"epochs": 1}, grpo={"method": method},
                            schedule={"group_size": 8, "keep": [], "checkpoints": []}), log=lambda s: None)
    before = lora_of(t)
    record = next(t.epochs())
    assert record.optimizer_step > 0
    assert any(not torch.equal(before[k], v) for k, v in lora_of(t).items())
    assert all(p.device.type == "cuda" for p in t.adapter.parameters())


def test_shared_noise_prefix_on_the_gpu(gpu, tmp_path):
    """pro-mixgrpo's shared initial noise: until the window (steps 2–3 at epoch 50) each prompt's
    model calls are made once and the x0 indexed back to its rows on the GPU; the same trajectories,
    proxy and pruning as the CPU's."""
    settings = {"grpo": {"method": "pro-mixgrpo", "prompts_per_epoch": 2, "train_batch_size": 8, "lr": 1e-2},
                "schedule": {"group_size": 8, "keep": [4], "checkpoints": None}}
    t = Trainer.build(table(tmp_path / "gpu", gpu, **settings), log=lambda s: None)
    t.ensure_plan()
    b = t.sample_epoch(50)
    assert b.rollout.latents.device.type == "cuda" and [p["step"] for p in b.stats.proxy] == [5]
    a = t.sample_epoch(50) if REAL_GPU else Trainer.build(table(tmp_path / "cpu", "cpu", **settings),
                                                          log=lambda s: None).sample_epoch(50)
    assert [p["kept"] for p in b.stats.proxy] == [p["kept"] for p in a.stats.proxy]
    same(b.rollout.latents, a.rollout.latents, "trajectories")
    same(b.advantages, a.advantages, "advantages")


def test_the_planner_probes_the_gpu(gpu, tmp_path):
    t = Trainer.build(table(tmp_path / "run", gpu), log=lambda s: None)
    plan = t.ensure_plan()
    assert plan.fits and plan.target.startswith("cuda")
    assert min(plan.sample_micro_batch, plan.train_micro_batch, plan.decode_micro_batch) >= 1
    assert plan.costs.weights > 0 and plan.epoch_s > 0
    assert all(p.device.type == "cuda" for p in t.adapter.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_training_update_in_half_precision(gpu, tmp_path, precision):
    """The model computes in bf16/fp16 on the GPU (fp16 with loss scaling); the LoRA, its
    gradients and Adam's moments stay float32 on the GPU, and an update changes the LoRA."""
    t = Trainer.build(table(tmp_path / "run", gpu, run={"precision": precision}), log=lambda s: None)
    assert (t.scaler is not None) == (precision == "fp16")
    before = lora_of(t)
    record = next(t.epochs())
    assert record.update.updates >= 1 and t.skipped_updates == 0
    assert next(t.model.net.parameters()).dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    for p in t.adapter.parameters():
        assert p.device.type == "cuda" and p.dtype == torch.float32
        for v in t.optimizer.state[p].values():
            if v.dim():
                assert v.device.type == "cuda" and v.dtype == torch.float32
    after = lora_of(t)
    assert any(not torch.equal(after[k], before[k]) for k in after)
    assert all(bool(torch.isfinite(v).all()) for v in after.values())


def test_fp16_skips_minibatches_whose_losses_are_all_non_finite(gpu, tmp_path, monkeypatch):
    """An fp16 update where no backward ran (every loss NaN) is skipped — first thing in the run,
    and again after good steps — instead of the loss scaler raising; the good updates still step."""
    from progrpo_core import grpo

    real = grpo.clipped_loss
    poisoned = {"on": True}

    def clipped_loss(*a, **k):
        loss, stats = real(*a, **k)
        return (loss * float("nan"), stats) if poisoned["on"] else (loss, stats)

    monkeypatch.setattr(grpo, "clipped_loss", clipped_loss)
    t = Trainer.build(table(tmp_path / "run", gpu, run={"precision": "fp16", "epochs": 3, "max_bad_updates": 0}),
                log=lambda s: None)
    with pytest.warns(RuntimeWarning, match="update skipped"):
        loop = t.epochs()
        next(loop)
        assert t.optimizer_steps == 0 and t.skipped_updates >= 1
        poisoned["on"] = False
        next(loop)
        good = t.optimizer_steps
        assert good >= 1
        poisoned["on"] = True
        next(loop)
    assert t.optimizer_steps == good and t.scaler.get_scale() > 0


def test_evaluation_on_the_gpu_matches_the_cpu(gpu, tmp_path):
    cpu = Trainer.build(table(tmp_path / "cpu", "cpu"), log=lambda s: None)
    t = Trainer.build(table(tmp_path / "gpu", gpu), log=lambda s: None)
    a, b = cpu.evaluate(), t.evaluate()
    assert b["latents"].device.type == "cuda"
    same(b["latents"], a["latents"], "eval latents")
    assert math.isclose(a["reward"], b["reward"], rel_tol=1e-3, abs_tol=1e-6)


def test_checkpoints_hold_cpu_tensors_and_resume_on_the_gpu(gpu, tmp_path):
    """A GPU run's checkpoint loads on a machine without a GPU, and resuming from it on the GPU
    finishes with the LoRA of an uninterrupted run."""
    from progrpo_core.checkpoint import list_checkpoints, load_checkpoint

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    whole = Trainer.build(table(tmp_path / "whole", gpu, run={"epochs": 3, "checkpoint_every": 1}), log=lambda s: None)
    whole.run(progress=False)
    first = Trainer.build(table(tmp_path / "parts", gpu, run={"epochs": 2, "checkpoint_every": 1}), log=lambda s: None)
    first.run(progress=False)
    first.close()
    (_, path), *_ = list_checkpoints(tmp_path / "parts")[-1:]
    snap = load_checkpoint(path)
    assert all(t.device.type == "cpu" for t in tensors(snap))
    rest = Trainer.build(table(tmp_path / "parts", gpu, run={"epochs": 3, "checkpoint_every": 1}), log=lambda s: None)
    rest.run(progress=False, resume=True)
    for k, v in lora_of(whole).items():
        same(lora_of(rest)[k], v, f"resumed LoRA {k}")


def test_the_command_line_trains_on_the_gpu(gpu, tmp_path):
    from progrpo_core.cli import main

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--run.device", gpu, "--run.epochs", "1", "--grpo.prompts_per_epoch",
                 "2", "--schedule.group_size", "8", "--schedule.keep", "4", "--run.eval_seeds", "1",
                 "--run.eval_prompts", "2", "--no-progress"]) == 0
    assert (out / "lora.safetensors").is_file() and (out / "summary.json").is_file()
    assert main(["plan", "--run.device", gpu, "--json"]) == 0


def test_the_reward_model_offloaded_between_scorings(gpu, tmp_path):
    """``reward.offload``: the classifier waits on the CPU and scores on the GPU."""
    t = Trainer.build(table(tmp_path / "run", gpu, reward={"offload": True}), log=lambda s: None)
    t.ensure_plan()
    assert type(t.reward).__name__ == "OffloadedReward"
    batch = t.sample_epoch(0)
    assert bool(torch.isfinite(batch.scores["digit"]).all())
    assert all(p.device.type == "cpu" for m in t.reward.modules() for p in m.parameters())


@pytest.mark.skipif(REAL_GPU, reason="the emulated GPU's clock")
@pytest.mark.parametrize("method", ["pro-grpo", "nft"])
def test_each_phase_is_timed_with_the_gpu_work_it_queued(tmp_path, monkeypatch, method):
    """A GPU runs work after the call that queued it returns: a phase clock that does not wait for
    it charges its kernels to whatever waits next. On an H200 that put the pro-grpo epoch's
    "sampling" at 0.75 s where GRPO's 16 rows took 0.82 and the planner said 1.88, and its
    "training" at 1.70 s for 0.92 planned. On the emulated GPU every operation queues 1000 s of
    work: each phase, and the epoch, must be charged exactly the work it queued."""
    kernel = 1000.0
    seen: list[tuple[str, int, float]] = []
    original = Compute.phase

    with FakeCuda(kernel_s=kernel) as fake:
        @contextlib.contextmanager
        def spy(self, name, device=None):
            ops, wall = fake.launched, self.wall.get(name, 0.0)
            with original(self, name, device):
                yield
            seen.append((name, fake.launched - ops, self.wall[name] - wall))

        def epoch(self, *a, **k):
            ops = fake.launched
            record = one_epoch(self, *a, **k)
            seen.append(("epoch", fake.launched - ops, record.epoch_wall_s))
            return record

        one_epoch = Trainer._one_epoch
        monkeypatch.setattr(Compute, "phase", spy)
        monkeypatch.setattr(Trainer, "_one_epoch", epoch)
        t = Trainer.build(table(tmp_path / "run", "cuda", run={"epochs": 1}, grpo={"method": method}),
                          log=lambda s: None)
        next(t.epochs())
    assert {n for n, _, _ in seen} >= {"sampling", "final_scoring", "training", "epoch"} | (
        {"proxy"} if method == "pro-grpo" else set())
    for name, n, wall in seen:  # the host's own seconds are nothing beside 1000 s an operation
        assert abs(wall / kernel - n) < 0.5, f"{name}: {n} operations queued, {wall / kernel:.2f} charged"


def test_auto_precision_is_fp16_where_bf16_is_only_emulated():
    """T4 / V100 / RTX 20xx: PyTorch emulates bf16 there (``is_bf16_supported()`` says True), slowly;
    ``run.precision auto`` and the reward's ``auto`` dtype take fp16."""
    if REAL_GPU:
        pytest.skip("needs the emulated pre-Ampere GPU")
    from progrpo_core.devices import auto_reward_dtype, resolve_precision

    with FakeCuda(bf16=False, capability=(7, 5)):
        assert torch.cuda.is_bf16_supported()  # what PyTorch answers by default
        assert resolve_precision("auto", torch.device("cuda")).name == "fp16"
        assert auto_reward_dtype("cuda") == "fp16"
        with pytest.raises(ValueError, match="no bfloat16 support"):
            resolve_precision("bf16", torch.device("cuda"))
    with FakeCuda(capability=(8, 6)):
        assert resolve_precision("auto", torch.device("cuda")).name == "bf16"
        assert auto_reward_dtype("cuda:0") == "bf16"


def test_checkpoints_ask_only_the_run_device_for_its_random_state(tmp_path, monkeypatch):
    if REAL_GPU:
        pytest.skip("checks the calls made, on the emulated GPU")
    from progrpo_core import checkpoint as ckpt

    with FakeCuda():
        def every_gpu():
            raise AssertionError("get_rng_state_all() makes a CUDA context on every GPU")

        monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
        t = Trainer.build(table(tmp_path / "run", "cuda", run={"epochs": 1, "checkpoint_every": 1}), log=lambda s: None)
        t.run(progress=False)
        snap = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "run")[-1][1])
        assert snap["rng"]["cuda_device"].dtype == torch.uint8
        ckpt.set_rng_state(snap["rng"], device=torch.device("cuda"))


def test_the_planner_counts_memory_the_allocator_caches_as_free():
    if REAL_GPU:
        pytest.skip("sets the emulated GPU's memory")
    from progrpo_core.devices import memory_info

    with FakeCuda() as gpu:
        free, total = memory_info(torch.device("cuda"))
        gpu.cached = 3 * 2**30  # held by PyTorch's allocator for reuse, not by a tensor
        assert torch.cuda.mem_get_info()[0] == free - gpu.cached  # the driver counts it as taken
        assert memory_info(torch.device("cuda")) == (free, total)


def test_a_named_gpu_plan_costs_at_least_its_kernel_launches(tmp_path):
    """On an H100 the built-in model's arithmetic takes microseconds; each operation still costs
    a launch from the CPU, which the plan for a named GPU counts."""
    from progrpo_core.planner import GPUS, LAUNCH_S, Target

    t = Trainer.build(table(tmp_path / "run", "cpu", run={"precision": "bf16"}), log=lambda s: None)
    memory, tflops = GPUS["h100"]
    plan = t.make_plan(Target("h100", int(memory * 2**30), tflops))
    assert plan.costs.ops["sample"] > 10
    # at least one model call per sampling step
    assert plan.seconds["sampling"] >= t.cfg.sampler.steps * plan.costs.ops["sample"] * LAUNCH_S > 1e-3


def test_headless_comfyui_loads_on_the_gpu_the_run_names(tmp_path, monkeypatch):
    """``--run.device cuda:1`` with ``--model.comfyui``: ComfyUI puts its models on its current CUDA
    device, so that is set before ComfyUI's model management is imported."""
    if REAL_GPU:
        pytest.skip("uses a stand-in ComfyUI on the emulated two-GPU machine")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nodes.host.headless import import_comfyui

    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "__init__.py").write_text("")
    (root / "comfy" / "cli_args.py").write_text("class _A:\n    cpu = False\nargs = _A()\n")
    (root / "comfy" / "model_management.py").write_text(
        "import torch\nDEVICE = torch.device('cuda', torch.cuda.current_device())\n")
    (root / "comfy" / "sd.py").write_text("")
    for k in [k for k in sys.modules if k == "comfy" or k.startswith("comfy.")]:
        monkeypatch.delitem(sys.modules, k)
    try:
        with FakeCuda(devices=2):
            import_comfyui(root, "cuda:1")
            assert sys.modules["comfy.model_management"].DEVICE == torch.device("cuda", 1)
    finally:
        for k in [k for k in sys.modules if k == "comfy" or k.startswith("comfy.")]:
            del sys.modules[k]
        sys.path.remove(str(root))
        sys.path.pop(0)


def test_a_model_loaded_on_another_device_than_the_run_names_is_refused(tmp_path, monkeypatch):
    if REAL_GPU:
        pytest.skip("uses the emulated two-GPU machine")
    from progrpo_core.embedded import load_digits_model

    def loader(comfyui, checkpoint, device="cpu", **_):
        m = load_digits_model("digits-flow")
        m.net.to("cuda:0")  # a loader that ignores the device it was asked for
        return m

    monkeypatch.setitem(sys.modules, "stray_loader", types.SimpleNamespace(load=loader))
    cfg = table(tmp_path / "run", "cuda:1", model={"comfyui": str(tmp_path), "checkpoint": "x.safetensors",
                                                   "loader": "stray_loader:load"})
    with FakeCuda(devices=2), pytest.raises(ValueError, match="cuda:0.*run.device=cuda:1"):
        Trainer.build(cfg, log=lambda s: None)
