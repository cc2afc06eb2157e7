"""The one-shot GPU check: every step on the GPU, each under its own timeout, then one table.

Run through ``tests/gpu/device_check.sh`` from the repository root (see ``tests/gpu/README.md``).
Steps (each a subprocess; a step that fails or times out is reported and the next one runs):

* ``cuda tests``   ``pytest -m cuda``: the GPU-path tests (tests/test_fake_cuda.py), on the real GPU.
* ``built-in``     the default method on the built-in model: the plan (peak memory, seconds per
                   epoch by phase) against two measured epochs.
* ``lora effect``  a short default run on the built-in model: the evaluation reward before and after.
* ``sd15 512``     real-size SD1.5 with random weights at 512², two epochs (tests/gpu/real_size.py):
                   plan against measurement, the gradient's reach, the LoRA's change of the output.
* ``sd3.5m 512``   the same for SD3.5-Medium.
* ``wall sd15``    real-size SD1.5 (TAESD previews): the epoch and wall per GFLOP of pro-grpo (the
                   paper's ε funnel) and the default method against GRPO's, at one and eight prompts.
* ``wall sd35m``   the same on SD3.5-Medium.
* ``comfyui node`` the training and comparison workflows through a ComfyUI server started as a user
                   starts it (``main.py`` without ``--cpu``: ComfyUI picks the GPU and dynamic VRAM),
                   on the host tests' tiny models; the LoRA loads in the stock LoraLoader.

``--cpu`` runs the same steps on this machine's CPU (the built-in model on the emulated GPU, the
real-size models at 64², the server with ``--cpu``): a dry run of the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GiB = 2**30


def builtin_step(device: str, out: Path) -> dict:
    """Plan and two measured epochs of the default method on the built-in model (run in a child)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests" / "gpu"))
    import torch

    from progrpo_core.config import build_config
    from progrpo_core.training import Trainer
    from real_size import _measure

    if device == "fake":
        sys.path.insert(0, str(REPO / "tests"))
        from fake_cuda import FakeCuda

        ctx = FakeCuda()
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        cfg = build_config({"run": {"out": str(out / "builtin"), "epochs": 3, "device": "cuda", "eval_every": 0,
                                    "checkpoint_every": 0, "save_every": 0}})
        t = Trainer.build(cfg, log=lambda s: None)
        plan = t.ensure_plan()
        measured = _measure(t, t.model, t.adapter, torch.device("cuda"), t.prompts[0])["measured"]
    return {"plan": {"peak_bytes": plan.peak_bytes, "seconds": plan.seconds, "epoch_s": plan.epoch_s,
                     "micro": [plan.sample_micro_batch, plan.train_micro_batch, plan.decode_micro_batch]},
            "measured": measured, "precision": t.precision.name}


def _run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = REPO) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        return done.returncode, done.stdout + done.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, text + f"\n[timed out after {timeout:.0f} s]", time.monotonic() - t0


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _last_line(text: str, width: int = 160) -> str:
    """The last line a failed step printed (its error), or "no output"."""
    return text.strip().splitlines()[-1][:width] if text.strip() else "no output"


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _plan_vs(plan: dict, measured: dict) -> str:
    # the run times its final decodes and rewards as "final_scoring", the plan as "scoring"
    pairs = (("sampling", "sampling"), ("proxy", "proxy"), ("scoring", "final_scoring"), ("training", "training"))
    phases = ", ".join(f"{k} {plan['seconds'].get(k, 0):.1f}/{measured['seconds'].get(m, 0):.1f}" for k, m in pairs)
    return (f"peak {_gib(plan['peak_bytes'])} planned / {_gib(measured['peak_bytes'])} measured; "
            f"s/epoch {plan['epoch_s']:.1f}/{measured['epoch_s']:.1f} ({phases})")


class Check:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget
        self.rows: list[tuple[str, str, str, float]] = []
        self.py = sys.executable

    def budget(self, cap: float) -> float:
        return max(5.0, min(cap, self.deadline - time.monotonic() - 10))

    def record(self, name: str, ok: bool | None, text: str, seconds: float, log: str = "") -> None:
        status = "ok" if ok else ("skipped" if ok is None else "FAILED")
        self.rows.append((name, status, text, seconds))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        (self.out / f"{safe}.log").write_text(log)

    def cuda_tests(self) -> None:
        code, text, s = _run([self.py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs",
                              "tests/test_fake_cuda.py"], self.budget(240))
        summary = next((ln for ln in reversed(text.splitlines()) if " passed" in ln or " failed" in ln), text[-200:])
        self.record("cuda tests", code == 0, summary.strip("= "), s, text)

    def builtin(self) -> None:
        code, text, s = _run([self.py, __file__, "--builtin-step", "fake" if self.args.cpu else "cuda",
                              "--out", str(self.out)], self.budget(150))
        r = _last_json(text)
        if code or r is None:
            self.record("built-in", False, _last_line(text), s, text)
            return
        m = r["measured"]
        self.record("built-in", True, f"{r['precision']}, micro {r['micro'] if 'micro' in r else r['plan']['micro']}; "
                    + _plan_vs(r["plan"], m), s, text)

    def lora_effect(self) -> None:
        out = self.out / "default_run"
        device = "cpu" if self.args.cpu else "cuda"
        code, text, s = _run([self.py, "-m", "progrpo_core", "train", "--out", str(out), "--run.device", device,
                              "--run.epochs", str(self.args.epochs), "--no-progress", "--overwrite"], self.budget(180))
        try:
            summary = json.loads((out / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            summary = None
        if code or summary is None:
            self.record("lora effect", False, _last_line(text), s, text)
            return
        before, after = summary["eval_reward_before"], summary["eval_reward_after"]
        self.record("lora effect", after > before,
                    f"built-in eval reward {before:.3f} -> {after:.3f} in {summary['epochs']} epochs "
                    f"({summary['optimizer_steps']} steps, {summary['wall_s']:.0f} s)", s, text)

    def real_size_cmd(self, model: str) -> list[str]:
        """``tests/gpu/real_size.py`` for ``model`` at the check's resolution, two epochs."""
        return [self.py, "tests/gpu/real_size.py", "--comfyui", self.args.comfyui, "--model", model,
                "--resolution", str(self.args.resolution), "--epochs", "2"]

    def real_size(self, model: str, cap: float) -> None:
        name = f"{model} {self.args.resolution}"
        if not self.args.comfyui:
            self.record(name, None, "no ComfyUI checkout (--comfyui)", 0.0)
            return
        cmd = self.real_size_cmd(model)
        if self.args.cpu:  # a dry run: a small funnel
            cmd += ["--device", "cpu", "--steps", "4", "--group", "8", "--checkpoints", "2,3", "--keep", "6,4"]
        code, text, s = _run(cmd, self.budget(cap))
        r = _last_json(text)
        if code or r is None:
            self.record(name, False, _last_line(text), s, text)
            return
        m = r["measured"]
        ok = m["grad_finite"] and m["grad_reached_fraction"] > 0.5 and m["lora_changed_output"] > 0 and r["plan"]["fits"]
        self.record(name, ok, f"{r['precision']}, micro {r['plan']['sample_micro_batch']}/"
                    f"{r['plan']['train_micro_batch']}/{r['plan']['decode_micro_batch']}; " + _plan_vs(r["plan"], m)
                    + f"; grad reach {m['grad_reached_fraction']:.2f}, LoRA changes the output by "
                    f"{m['lora_changed_output']:.2g}", s, text)

    def wall(self, model: str, runs: list[tuple[str, list[str]]], cap: float) -> None:
        """Epoch wall-clock and wall per GFLOP of several methods on one real-size model (TAESD
        previews, two epochs each, the second timed), each against the GRPO run before it."""
        name = f"wall {model} {self.args.resolution}"
        if not self.args.comfyui:
            self.record(name, None, "no ComfyUI checkout (--comfyui)", 0.0)
            return
        start, logs, parts, ok = time.monotonic(), [], [], True
        base = None
        for method, extra in runs:
            cmd = self.real_size_cmd(model) + ["--proxy-vae", "taesd", "--method", method, *extra]
            if self.args.cpu:  # a dry run: few steps
                cmd += ["--device", "cpu", "--steps", "4"]
            code, text, s = _run(cmd, self.budget(cap - (time.monotonic() - start)))
            logs.append(" ".join(cmd) + "\n" + text)
            r = _last_json(text)
            label = " ".join([method, *extra])
            if code or r is None:
                ok = False
                parts.append(f"{label}: failed ({_last_line(text, 80)})")
                continue
            with open(self.out / f"wall_{model}.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")
            m = r["measured"]
            ms_per_gf = 1000 * m["epoch_s"] / max(m["gflops"]["total"], 1e-9)
            if method == "grpo" or base is None:  # each method against the GRPO run before it
                base = (m["epoch_s"], ms_per_gf)
            parts.append(f"{label}: {m['epoch_s']:.2f} s/epoch ({m['epoch_s'] / base[0]:.2f} x), "
                         f"{m['gflops']['total'] / 1000:.1f} TFLOP, wall/compute {ms_per_gf / base[1]:.2f} x")
        self.record(name, ok, "; ".join(parts), time.monotonic() - start, "\n\n".join(logs))

    def comfyui_node(self) -> None:
        if not self.args.comfyui:
            self.record("comfyui node", None, "no ComfyUI checkout (--comfyui)", 0.0)
            return
        env = {"PROGRPO_COMFYUI": self.args.comfyui, "PROGRPO_COMFYUI_PYTHON": self.py,
               "PROGRPO_TINY_MODELS": str(self.out / "tiny_models"), "PROGRPO_COMFYUI_GPU": "0" if self.args.cpu else "1"}
        probe = subprocess.run([self.py, "-c", "import comfyui_frontend_package"], capture_output=True)
        if probe.returncode:  # a headless server needs no frontend: serve an empty folder
            env["PROGRPO_COMFYUI_FRONTEND_ROOT"] = tempfile.mkdtemp(prefix="progrpo-frontend-")
        tests = ["tests/host/test_nodes_host.py::test_training_workflow",
                 "tests/host/test_nodes_host.py::test_on_a_gpu_server_the_trainer_trains_a_plain_copy_under_dynamic_vram",
                 "tests/host/test_nodes_host.py::test_comparison_workflow_loads_the_lora_in_the_stock_loader"]
        code, text, s = _run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests], self.budget(300),
                             env=env)
        summary = next((ln for ln in reversed(text.splitlines()) if " passed" in ln or " failed" in ln
                        or " error" in ln), text[-200:])
        self.record("comfyui node", code == 0, summary.strip("= "), s, text)

    def table(self) -> str:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (--cpu dry run)"
        head = f"ProGRPO device check — {gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
        w = max(len(r[0]) for r in self.rows)
        lines = [head, f"{'step':<{w}}  status   seconds  result", "-" * 100]
        lines += [f"{n:<{w}}  {st:<7}  {sec:7.1f}  {txt}" for n, st, txt, sec in self.rows]
        return "\n".join(lines)

    def run(self) -> int:
        from progrpo_core.methods import DEFAULT_METHOD as DEFAULT

        slow = 4 if self.args.cpu else 1  # a dry run on a CPU gets longer caps
        steps = {"cuda": self.cuda_tests, "builtin": self.builtin, "lora": self.lora_effect,
                 "sd15": lambda: self.real_size("sd15", 150 * slow), "sd35m": lambda: self.real_size("sd35m", 180 * slow),
                 "comfyui": self.comfyui_node,
                 # epoch wall-clock and wall/compute against GRPO (TAESD previews): the paper's ε funnel
                 # (pro-grpo; also with 256² previews) and the default, at one prompt per epoch and at
                 # the default's eight (rows packed across prompts); on SD3.5-M the paper's flow funnel, the
                 # default and the preview preset (trained on the cut's previews, the frozen model's)
                 "wall15": lambda: self.wall("sd15", [("grpo", []), ("pro-grpo", []),
                                                      ("pro-grpo", ["--proxy-scale", "0.5"]), (DEFAULT, []),
                                                      ("grpo", ["--prompts", "8"]), (DEFAULT, ["--prompts", "8"])],
                                             300 * slow),
                 "wall35": lambda: self.wall("sd35m", [("grpo", []), ("pro-grpo", []), (DEFAULT, []),
                                                      ("pro-mixgrpo-8-preview", [])], 250 * slow)}
        names = self.args.only.split(",") if self.args.only else list(steps)
        unknown = [n for n in names if n not in steps]
        if unknown:
            raise SystemExit(f"--only {self.args.only!r}: no step {', '.join(unknown)}; the steps are "
                             f"{', '.join(steps)}")
        for name in names:
            steps[name]()
        text = self.table()
        print(text, flush=True)
        (self.out / "table.txt").write_text(text + "\n")
        (self.out / "table.json").write_text(json.dumps(self.rows, indent=1))
        return 0 if all(r[1] != "FAILED" for r in self.rows) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", help="a ComfyUI checkout (for the real-size and server steps)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/progrpo-device-check")
    ap.add_argument("--budget", type=float, default=530, help="seconds for all steps together")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the lora-effect run")
    ap.add_argument("--cpu", action="store_true", help="a dry run on this machine's CPU")
    ap.add_argument("--only", help="run only these steps, in this order (comma-separated: cuda, builtin, lora, sd15, "
                                   "sd35m, comfyui, wall15, wall35)")
    ap.add_argument("--builtin-step", choices=("cuda", "fake"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.builtin_step:
        print(json.dumps(builtin_step(args.builtin_step, Path(args.out))))
        return 0
    if args.cpu and args.resolution == 512:
        args.resolution = 64
    return Check(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
