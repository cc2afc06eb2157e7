"""The second hostile sweep (issue 21), one row per case: what was done, the exit code and a phrase
of the message that must come out, and what must not happen (a file outside the run folder
changed, a file of the user's overwritten, a traceback). Each row is named in the table of
docs/RELIABILITY.md ("The second hostile sweep").

``TINY`` is the sweep's budget; commands run in-process (``main``) in a fresh folder holding
``outside/`` — files that no case may change — except where a process limit or a signal needs a
process of its own."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from progrpo_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--no-progress", "--run.epochs", "1", "--grpo.prompts_per_epoch", "1", "--schedule.group_size", "4",
        "--schedule.keep", "2", "--run.eval_seeds", "1", "--run.eval_prompts", "1"]


# -- helpers -------------------------------------------------------------------------------------
def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a link's target, a file's hash, or "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*args: str) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusals
        return int(e.code)


def subprocess_cli(args: list[str], tmp: Path, limit_kb: int | None = None, pre: str = "",
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m progrpo_core ARGS`` in a process of its own (``ulimit -v limit_kb`` when given)."""
    code = ("import resource, runpy, sys\n"
            + (f"resource.setrlimit(resource.RLIMIT_AS, ({limit_kb * 1024}, {limit_kb * 1024}))\n" if limit_kb else "")
            + pre + f"sys.argv = ['progrpo_core'] + {list(args)!r}\n"
            + "runpy.run_module('progrpo_core', run_name='__main__')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout)


def save_state(src: Path, dst: Path, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    save_file({k: change(v).contiguous() for k, v in load_file(str(src)).items()}, str(dst), metadata=meta)
    return dst


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished TINY run with a checkpoint (copied into each case that needs one)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--out", str(run), *TINY, "--run.checkpoint_every", "1"]) == 0
    return run


# -- the cases -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    args: tuple = ()                  # command line ({tmp}: the case's folder, {run}: tmp/run)
    code: int = 2                     # expected exit code
    message: str = ""                 # a phrase the output (stderr + stdout) must hold
    setup: Callable | None = None     # setup(tmp, tiny_run)
    check: Callable | None = None     # check(tmp, output) after the command
    absent: str = ""                  # a phrase the output must not hold


def _lock_link(tmp, _):
    (tmp / "run").mkdir()
    (tmp / "run" / ".lock").symlink_to(tmp / "outside" / "victim.txt")


def _lock_link_resume(tmp, run):
    shutil.copytree(run, tmp / "run", symlinks=True)
    (tmp / "run" / ".lock").unlink()
    (tmp / "run" / ".lock").symlink_to(tmp / "outside" / "victim.txt")


def _checkpoints_link(tmp, run):
    shutil.copytree(run, tmp / "run", symlinks=True)
    shutil.rmtree(tmp / "run" / "checkpoints")
    (tmp / "outside" / "ckpts").mkdir()
    (tmp / "outside" / "ckpts" / "epoch-000001.pt").write_bytes(b"someone else's file")
    (tmp / "outside" / "ckpts" / "mine.txt").write_text("mine")
    (tmp / "run" / "checkpoints").symlink_to(tmp / "outside" / "ckpts")


def _checkpoint_file_link(tmp, run):
    shutil.copytree(run, tmp / "run", symlinks=True)
    (tmp / "run" / "checkpoints" / "epoch-000009.pt").symlink_to(tmp / "outside" / "victim.txt")


def _metrics_link(tmp, run):
    shutil.copytree(run, tmp / "run", symlinks=True)
    (tmp / "run" / "metrics.jsonl").unlink()
    (tmp / "run" / "metrics.jsonl").symlink_to(tmp / "outside" / "victim.txt")


def _user_folder(tmp, _):
    (tmp / "run").mkdir()
    (tmp / "run" / "config.toml").write_text("[run]\nepochs = 1\n")
    (tmp / "run" / "summary.json").write_text('{"mine": true}\n')


def _loras_folder(tmp, _):
    (tmp / "run").mkdir()
    (tmp / "run" / "lora.safetensors").write_bytes(b"the user's LoRA")
    (tmp / "run" / "samples_before.png").write_bytes(b"the user's image")


def _user_files_in_a_run(tmp, run):
    shutil.copytree(run, tmp / "run", symlinks=True)
    (tmp / "run" / "checkpoints" / "notes.txt").write_text("mine")
    (tmp / "run" / "notes.txt").write_text("mine")


def _user_files_kept(tmp, _):
    assert (tmp / "run" / "checkpoints" / "notes.txt").read_text() == "mine"
    assert (tmp / "run" / "notes.txt").read_text() == "mine"
    assert json.loads((tmp / "run" / "summary.json").read_text())["seed"] == 3


def _user_folder_untouched(tmp, _):
    assert sorted(p.name for p in (tmp / "run").iterdir()) in (
        ["config.toml", "summary.json"], ["lora.safetensors", "samples_before.png"])
    assert b"epochs = 1" in (tmp / "run" / "config.toml").read_bytes() if (tmp / "run" / "config.toml").exists() \
        else (tmp / "run" / "lora.safetensors").read_bytes() == b"the user's LoRA"


def _nothing_made(name):
    def check(tmp, _):
        assert not (tmp / name).exists(), f"{name} was created"
    return check


def _collapse_told(tmp, out):
    """The slow-collapse stop: a falling evaluation reward, the learning rate named with a lower one to try."""
    m = re.search(r"fell from ([0-9.]+) before training to ([0-9.]+) at epoch (\d+) → ([0-9.]+) at epoch (\d+)", out)
    assert m, out
    start, mid, last = float(m[1]), float(m[2]), float(m[4])
    assert last < mid < start and int(m[3]) < int(m[5]) <= 20, out
    assert "grpo.lr=0.1 is probably too high" in out and "try 0.01" in out and "are kept as they are" in out, out


def _no_png(tmp, _):
    assert not list(tmp.glob("*.png")), "an image was written"


def _bomb(tmp, _):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # 60000×60000 RGB, claimed
    (tmp / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                                   + chunk(b"IEND", b""))


def _digit_png(tmp, _):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp / "d.png")


def _weights(kind):
    def setup(tmp, run):
        from progrpo_core.embedded import CLASSIFIER_FILE, MODELS, WEIGHTS_DIR

        model, clf = WEIGHTS_DIR / MODELS["digits-flow"], WEIGHTS_DIR / CLASSIFIER_FILE
        if kind == "int64":
            save_state(model, tmp / "w.safetensors", lambda v: v.to(torch.int64))
        elif kind == "nan-model":
            save_state(model, tmp / "w.safetensors", lambda v: v * math.nan)
        elif kind == "nan-classifier":
            save_state(clf, tmp / "w.safetensors", lambda v: v * math.nan)
        elif kind == "nan-lora":
            save_state(run / "lora.safetensors", tmp / "w.safetensors", lambda v: v * math.nan if v.dim() == 2 else v)
        elif kind == "big-lora":
            save_state(run / "lora.safetensors", tmp / "w.safetensors", lambda v: v * 1e30 if v.dim() == 2 else v)
    return setup


def _text(name, text):
    def setup(tmp, _):
        (tmp / name).write_text(text)
    return setup


def _bom_config(tmp, _):
    (tmp / "c.toml").write_bytes(b"\xef\xbb\xbf[run]\nseed = 7\n")


def _bom_applied(tmp, _):
    assert json.loads((tmp / "run" / "summary.json").read_text())["seed"] == 7


def _run_without_checkpoint(tmp, _):
    assert main(["train", "--out", str(tmp / "run"), *TINY, "--run.checkpoint_every", "0"]) == 0
    assert not list((tmp / "run" / "checkpoints").glob("epoch-*"))


def _follow_the_advice(tmp, out):
    advice = out.split("on the command line: `")[1].split("`")[0].split()
    assert advice[0] == "train" and main([*advice, "--no-progress"]) == 0


def _real_latest(tmp, _):
    (tmp / "runs" / "latest").mkdir(parents=True)


def _latest_untouched(tmp, _):
    latest = tmp / "runs" / "latest"
    assert latest.is_dir() and not latest.is_symlink() and not list(latest.iterdir())


CASES: dict[str, Case] = {
    # -- writes outside the run folder ------------------------------------------------------------------
    "lock-link-new-run": Case(("train", "--out", "{run}", *TINY), 2, "symbolic link(s) (.lock -> ", _lock_link),
    "lock-link-resume": Case(("train", "--resume", "{run}", "--no-progress"), 2, "symbolic link(s) (.lock -> ",
                             _lock_link_resume),
    "checkpoints-link-overwrite": Case(("train", "--out", "{run}", *TINY, "--overwrite"), 2,
                                       "symbolic link(s) (checkpoints -> ", _checkpoints_link),
    "checkpoint-file-link-resume": Case(("train", "--resume", "{run}", "--no-progress"), 2,
                                        "(checkpoints/epoch-000009.pt -> ", _checkpoint_file_link),
    "metrics-link-resume": Case(("train", "--resume", "{run}", "--no-progress"), 2, "(metrics.jsonl -> ",
                                _metrics_link),
    "sample-out-in-missing-folders": Case(("sample", "--out", "{tmp}/nonexistent/dir/x.png", "--seeds", "1"), 2,
                                          "the folder {tmp}/nonexistent/dir does not exist",
                                          check=_nothing_made("nonexistent")),
    # -- the user's files ---------------------------------------------------------------------------------
    "out-is-a-user-folder": Case(("train", "--out", "{run}", *TINY, "--config", "{run}/config.toml"), 2,
                                 "is not a run folder of ProGRPO: it holds config.toml, summary.json",
                                 _user_folder, _user_folder_untouched),
    "out-is-a-loras-folder": Case(("train", "--out", "{run}", *TINY), 2,
                                  "it holds lora.safetensors, samples_before.png", _loras_folder,
                                  _user_folder_untouched),
    "overwrite-a-user-folder": Case(("train", "--out", "{run}", *TINY, "--overwrite"), 2,
                                    "(--overwrite included)", _loras_folder, _user_folder_untouched),
    "overwrite-keeps-user-files": Case(("train", "--out", "{run}", *TINY, "--overwrite", "--seed", "3"), 0, "",
                                       _user_files_in_a_run, _user_files_kept),
    # -- raw tracebacks -------------------------------------------------------------------------------------
    "device-meta": Case(("train", "--out", "{run}", *TINY, "--run.device", "meta"), 2,
                        "run.device='meta' is PyTorch's shape-only device"),
    "device-mps": Case(("train", "--out", "{run}", *TINY, "--run.device", "mps"), 2,
                       "run.device='mps', but this PyTorch has no MPS"),
    "loader-os-system": Case(("train", "--out", "{run}", *TINY, "--model.comfyui", "{tmp}", "--model.checkpoint", "x",
                              "--model.loader", "os:system"), 2,
                             "model.loader 'os:system' raised TypeError: system() takes at most 1 argument"),
    "score-decompression-bomb": Case(("score", "--reward", "digit", "--prompt", "a 3", "{tmp}/bomb.png"), 2,
                                     "claims 3600000000 pixels, more than 89,478,485", _bomb),
    "plan-gpu-memory-inf": Case(("plan", *TINY[1:], "--gpu-memory", "inf", "--gpu-tflops", "10"), 2,
                                "argument --gpu-memory: inf must be a number above 0"),
    "sample-scale-negative": Case(("sample", "--scale", "-3", "--out", "{tmp}/s.png"), 2,
                                  "argument --scale: -3 must be a number from 1 to 256", check=_no_png),
    "sample-scale-5000": Case(("sample", "--scale", "5000", "--out", "{tmp}/s.png"), 2,
                              "argument --scale: 5000 must be a number from 1 to 256", check=_no_png),
    "sample-grid-too-large": Case(("sample", "--scale", "200", "--out", "{tmp}/s.png"), 2,
                                  "makes a grid of 12818×16022 pixels", check=_no_png),
    "sample-out-is-a-folder": Case(("sample", "--out", "{tmp}/outside", "--seeds", "1"), 2,
                                   "outside is a folder; give a file name"),
    # -- silent wrong results -----------------------------------------------------------------------------
    "lr-0.1-slow-collapse": Case(("train", "--out", "{run}", "--no-progress", "--run.epochs", "20", "--run.eval_every",
                                  "2", "--grpo.lr", "0.1"), 1,
                                 # the numbers are the run's own (they move with the kernels): the words are pinned
                                 "the policy is collapsing — the evaluation reward fell from ",
                                 absent="Lower grpo.lr (try a tenth)", check=_collapse_told),
    "lr-1": Case(("train", "--out", "{run}", *TINY, "--grpo.lr", "1"), 2,
                 "grpo.lr=1.0: Adam moves every LoRA weight by about the learning rate",
                 check=_nothing_made("run")),
    "model-path-int64": Case(("train", "--out", "{run}", *TINY, "--model.path", "{tmp}/w.safetensors"), 2,
                             "holds torch.int64 tensors", _weights("int64")),
    "sample-nan-lora": Case(("sample", "--lora", "{tmp}/w.safetensors", "--out", "{tmp}/s.png"), 2,
                            "holds NaN or infinite values", _weights("nan-lora"), _no_png),
    "sample-cfg-nan": Case(("sample", "--cfg", "nan", "--out", "{tmp}/s.png"), 2,
                           "argument --cfg: nan must be a number from 0 to 100", check=_no_png),
    "sample-cfg-1e30": Case(("sample", "--cfg", "1e30", "--out", "{tmp}/s.png"), 2,
                            "argument --cfg: 1e30 must be a number from 0 to 100", check=_no_png),
    "sample-scale-0": Case(("sample", "--scale", "0", "--out", "{tmp}/s.png"), 2,
                           "argument --scale: 0 must be a number from 1 to 256", check=_no_png),
    "toml-out-tilde": Case(("train", *TINY, "--config", "{tmp}/c.toml"), 0, "run folder {tmp}/home/x",
                           _text("c.toml", '[run]\nout = "~/x"\n'), _nothing_made("~")),
    # -- silent accepts and warnings only -----------------------------------------------------------------
    "lora-targets-comma": Case(("train", "--out", "{run}", *TINY, "--lora.targets", ","), 2,
                               "lora.targets='' names no module"),
    "memory-gib-1e9": Case(("train", "--out", "{run}", *TINY, "--run.memory_gib", "1e9"), 2,
                           "run.memory_gib=1e+09 GiB is more than this run can ever have on cpu"),
    "reward-device-meta": Case(("train", "--out", "{run}", *TINY, "--reward.device", "meta"), 2,
                               "reward.device='meta' is PyTorch's shape-only device"),
    "score-device-banana": Case(("score", "--reward", "digit", "--prompt", "a 3", "--device", "banana", "{tmp}/d.png"),
                                2, "device='banana' is not a device", _digit_png),
    "score-device-cuda-without-gpu": Case(("score", "--reward", "digit", "--prompt", "a 3", "--device", "cuda",
                                           "{tmp}/d.png"), 2, "device='cuda', but PyTorch sees no such GPU",
                                          _digit_png),
    "prompts-proc-self-cmdline": Case(("train", "--out", "{run}", *TINY, "--run.prompts", "/proc/self/cmdline"), 2,
                                      "prompt file /proc/self/cmdline holds NUL characters"),
    "prompt-naming-two-digits": Case(("train", "--out", "{run}", *TINY, "--run.prompts", "{tmp}/p.txt"), 2,
                                     "line 2: prompt 'a 3 and a 5' names 2 different digits (3, 5)",
                                     _text("p.txt", "a handwritten 7\na 3 and a 5\n")),
    "resume-below-the-epochs-done": Case(("train", "--resume", "{run}", "--no-progress", "--run.epochs", "3"), 2,
                                         "run.epochs=3, but the run has done 4 epochs already",
                                         lambda tmp, run: _four_epochs(tmp)),
    "runs-latest-is-a-real-folder": Case(("train", *TINY), 0, "runs/latest is a real folder, not a link",
                                         _real_latest, _latest_untouched),
    "kl-beta-1e308": Case(("train", "--out", "{run}", *TINY, "--grpo.kl_beta", "1e308"), 2,
                          "grpo.kl_beta=1e+308 would make the KL penalty outweigh the reward"),
    "noise-level-1e10": Case(("train", "--out", "{run}", *TINY, "--sampler.noise_level", "1e10"), 2,
                             "sampler.noise_level=10000000000.0 must be a number from 0 to 10"),
    "sampler-cfg-1e30": Case(("train", "--out", "{run}", *TINY, "--sampler.cfg", "1e30"), 2,
                             "sampler.cfg=1e+30 must be a guidance scale from 1 (off) to 100"),
    "model-weights-nan": Case(("train", "--out", "{run}", *TINY, "--model.path", "{tmp}/w.safetensors"), 2,
                              "model.path {tmp}/w.safetensors holds NaN or infinite weights", _weights("nan-model"),
                              absent="reward"),
    "classifier-nan": Case(("train", "--out", "{run}", *TINY, "--reward.path", "{tmp}/w.safetensors"), 2,
                           "the digit reward's classifier (reward.path) {tmp}/w.safetensors holds NaN",
                           _weights("nan-classifier")),
    "init-from-lora-times-1e30": Case(("train", "--out", "{run}", *TINY, "--lora.init_from", "{tmp}/w.safetensors"), 2,
                                      "more than 100 times the layer, so it would replace the model",
                                      _weights("big-lora")),
    # -- misleading messages ------------------------------------------------------------------------------
    "weight-decay-1e10": Case(("train", "--out", "{run}", *TINY, "--grpo.weight_decay", "1e10"), 2,
                              "grpo.weight_decay=10000000000.0: AdamW multiplies the weights", absent="grpo.lr"),
    "init-from-nan-lora": Case(("train", "--out", "{run}", *TINY, "--lora.init_from", "{tmp}/w.safetensors"), 2,
                               "w.safetensors holds NaN or infinite values", _weights("nan-lora"), absent="grpo.lr"),
    "resume-without-a-checkpoint": Case(("train", "--resume", "{run}", "--no-progress"), 2,
                                        "the run stopped before it wrote its first one", _run_without_checkpoint,
                                        lambda tmp, out: _follow_the_advice(tmp, out)),
    "prompt-file-with-a-non-digit-line": Case(("train", "--out", "{run}", *TINY, "--run.prompts", "{tmp}/p.txt"), 2,
                                              "prompt file {tmp}/p.txt, line 3: prompt 'a cat' names no digit",
                                              _text("p.txt", "a handwritten 3\n# a comment\na cat\n"),
                                              _nothing_made("run")),
    "seed-2-to-the-64": Case(("train", "--out", "{run}", *TINY, "--run.seed", str(2**64)), 2,
                             f"run.seed={2**64} must be a whole number from 0 to 4294967295", absent="Overflow"),
    "config-with-utf8-bom": Case(("train", "--out", "{run}", *TINY, "--config", "{tmp}/c.toml"), 0, "",
                                 _bom_config, _bom_applied),
    "config-is-a-folder": Case(("train", "--out", "{run}", *TINY, "--config", "{tmp}/outside"), 2,
                               "config file {tmp}/outside is a folder, not a file"),
    "config-is-dev-zero": Case(("train", "--out", "{run}", *TINY, "--config", "/dev/zero"), 2,
                               "config file /dev/zero is not a regular file"),
    "prompts-is-a-folder": Case(("train", "--out", "{run}", *TINY, "--run.prompts", "{tmp}/outside"), 2,
                                "prompt file {tmp}/outside is a folder, not a file"),
    "prompts-is-dev-null": Case(("train", "--out", "{run}", *TINY, "--run.prompts", "/dev/null"), 2,
                                "prompt file /dev/null is not a regular file"),
    "model-path-is-a-folder": Case(("train", "--out", "{run}", *TINY, "--model.path", "{tmp}/outside"), 2,
                                   "model.path {tmp}/outside is a folder, not a file"),
    "model-path-is-dev-zero": Case(("train", "--out", "{run}", *TINY, "--model.path", "/dev/zero"), 2,
                                   "model.path /dev/zero is not a regular file"),
    "init-from-is-dev-null": Case(("train", "--out", "{run}", *TINY, "--lora.init_from", "/dev/null"), 2,
                                  "LoRA file /dev/null is not a regular file"),
}


def _four_epochs(tmp):
    assert main(["train", "--out", str(tmp / "run"), *TINY, "--run.epochs", "4", "--run.checkpoint_every", "1"]) == 0


@pytest.mark.parametrize("name", list(CASES))
def test_sweep(name, tmp_path, tiny_run, capsys, monkeypatch):
    case = CASES[name]
    if name == "score-device-cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if name == "prompts-proc-self-cmdline" and not Path("/proc/self/cmdline").exists():
        pytest.skip("no /proc here")
    tmp = tmp_path
    (tmp / "outside").mkdir()
    (tmp / "outside" / "victim.txt").write_bytes(os.urandom(1500))  # 1.5 kB that no case may change
    (tmp / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp / "home"))
    monkeypatch.chdir(tmp)
    if case.setup:
        case.setup(tmp, tiny_run)
    capsys.readouterr()
    before = tree(tmp / "outside")
    code = cli(*(str(a).format(tmp=tmp, run=tmp / "run") for a in case.args))
    out = "".join(capsys.readouterr())
    assert "Traceback" not in out, out
    assert code == case.code, out
    assert case.message.format(tmp=tmp) in out, out
    assert not case.absent or case.absent not in out, out
    assert tree(tmp / "outside") == before, "a file outside the run folder changed"
    if case.check:
        case.check(tmp, out)


# -- a full disk ------------------------------------------------------------------------------------------
def _fill_disk_when(monkeypatch, full: dict):
    """Make ``shutil.disk_usage`` report a full disk while ``full["now"]``."""
    import collections

    from progrpo_core import io as pio

    usage = collections.namedtuple("usage", "total used free")
    real = pio.shutil.disk_usage
    monkeypatch.setattr(pio.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0) if full["now"] else real(p))


@pytest.mark.parametrize("where", ["checkpoint", "lora", "plot", "metrics", "first-checkpoint"])
def test_sweep_full_disk(where, tmp_path, capsys, monkeypatch):
    """The disk fills while a file is written: a clear message, nothing half-written, and the way on
    that exists (resume from the newest checkpoint, or start over when there is none)."""
    from safetensors import SafetensorError

    from progrpo_core import checkpoint as ckpt
    from progrpo_core.training import RunFolder

    run, full = tmp_path / "run", {"now": False}
    _fill_disk_when(monkeypatch, full)
    real_save, real_write = torch.save, os.write

    def torch_save(obj, f, *a, **k):  # what torch says when its stream fails: no errno, no words
        if full["now"] or isinstance(obj, dict) and obj.get("epoch") == (1 if where == "first-checkpoint" else 2):
            Path(f).write_bytes(b"half a checkpoint")
            full["now"] = True
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\n"
                               "basic_ios::clear: iostream error")
        return real_save(obj, f, *a, **k)

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a LoRA")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    def plot(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.out / "reward_curve.png"))

    def os_write(fd, data):  # the disk takes ten bytes of epoch 3's metrics row, then is full
        if isinstance(data, bytes) and data.startswith(b'{"') and b'"epoch": 3,' in data:
            real_write(fd, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    if where in ("checkpoint", "first-checkpoint"):
        monkeypatch.setattr(torch, "save", torch_save)
    elif where == "lora":
        import safetensors.torch
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    elif where == "plot":
        monkeypatch.setattr(RunFolder, "plot_rewards", plot)
    elif where == "metrics":
        from progrpo_core import io as pio
        monkeypatch.setattr(pio.os, "write", os_write)
    code = main(["train", "--out", str(run), *TINY, "--run.epochs", "3", "--run.checkpoint_every", "1"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and code == 2, err
    assert f"the disk holding the run folder {run} is full (No space left on device)" in err, err
    found = [e for e, _ in ckpt.list_checkpoints(run)]
    if where == "first-checkpoint":
        assert not found and "no checkpoint was written yet, so there is nothing to resume" in err
        assert "--resume" not in err and "checkpoints written so far are intact" not in err
    else:
        assert found and f"continue with `train --resume {run}` (from its checkpoint of epoch {found[-1]}" in err
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")], "a half-written file was left"
    if where == "metrics":
        rows = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [1, 2]  # no half row
    full["now"] = False
    monkeypatch.undo()
    if found:  # the way on works
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    else:
        assert main(["train", "--config", str(run / "config.toml"), "--overwrite", "--no-progress"]) == 0



# -- the nodes -------------------------------------------------------------------------------------------
@pytest.fixture()
def pack(tmp_path, monkeypatch):
    """The node pack with ComfyUI's folders in ``tmp_path`` (input/, models/loras/, output/) and
    ``outside/`` beside them."""
    import types

    sys.path.insert(0, str(ROOT))
    from nodes import NODE_CLASS_MAPPINGS, host
    from nodes.host import files

    for d in ("input", "loras", "output", "outside"):
        (tmp_path / d).mkdir()
    (tmp_path / "outside" / "victim.txt").write_text("mine")
    fake = types.SimpleNamespace(get_output_directory=lambda: str(tmp_path / "output"),
                                 get_input_directory=lambda: str(tmp_path / "input"),
                                 get_folder_paths=lambda kind: [str(tmp_path / "loras")])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.setattr(host, "input_dir", lambda: tmp_path / "input")
    monkeypatch.setattr(host, "loras_dir", lambda: tmp_path / "loras")
    return types.SimpleNamespace(nodes=NODE_CLASS_MAPPINGS, files=files, tmp=tmp_path)


LORA = {"diffusion_model.a.lora_down.weight": torch.ones(2, 3), "diffusion_model.a.lora_up.weight": torch.ones(3, 2)}


def _save_lora(name, link=None):
    def run(p):
        if link:
            (p.tmp / "loras" / "progrpo").symlink_to(p.tmp / link)
        return p.nodes["ProGRPOSaveLoRA"]().save(dict(LORA), name, False)
    return run


def _train_node_nan(widget):
    def run(p):
        from nodes.train_driver import build_train_config

        args = dict(method="pro-grpo", epochs=1, prompts_per_epoch=1, steps=4, group_size=4, checkpoints="", keep="",
                    sampler="auto", noise_level=-1.0, cfg=0.0, learning_rate=1e-3, rank=4, alpha=4.0, kl_beta=0.0,
                    seed=0, reward_spec="digit")
        return build_train_config(**{**args, widget: math.nan})
    return run


def _sampler_node_nan(p):
    return p.nodes["ProGRPOExpandedGroupSampler"]().sample(None, None, None, None, 4, 4, "auto", 0.7, math.nan, 0,
                                                           "", "", "ovf", "a 3")


def _autosave_through_a_link(p):
    (p.tmp / "loras" / "progrpo").symlink_to(p.tmp / "outside")
    return p.files.autosave_path("run")


NODE_CASES = {
    "save-lora-through-a-linked-subfolder": (_save_lora("progrpo/x", link="outside"),
                                             "the folder 'progrpo' in models/loras is a link leading outside it"),
    "save-lora-300-character-name": (_save_lora("a" * 300), "is too long: a name of 300 characters, at most 150"),
    "prompt-list-5000-character-name": (
        lambda p: p.nodes["ProGRPOPromptList"]().build("a 3", "a" * 5000),
        "(5000 characters) is too long to be a file name inside ComfyUI's input folder"),
    "trainer-node-nan-cfg": (_train_node_nan("cfg"), "cfg=nan is not a number"),
    "trainer-node-nan-noise-level": (_train_node_nan("noise_level"), "noise_level=nan is not a number"),
    "sampler-node-nan-cfg": (_sampler_node_nan, "cfg=nan is not a number"),
    "run-name-too-long": (lambda p: p.files.run_folder("r" * 300), "run_name 'rrrr"),
    "autosave-through-a-linked-folder": (_autosave_through_a_link,
                                         "the folder 'progrpo' in models/loras is a link leading outside it"),
}


@pytest.mark.parametrize("name", list(NODE_CASES))
def test_sweep_nodes(name, pack):
    call, message = NODE_CASES[name]
    before = tree(pack.tmp / "outside")
    with pytest.raises(ValueError) as e:
        call(pack)
    assert message in str(e.value) and "run.out" not in str(e.value), str(e.value)
    assert tree(pack.tmp / "outside") == before


def test_save_lora_follows_links_that_stay_inside_models_loras(pack):
    (pack.tmp / "loras" / "real").mkdir()
    (pack.tmp / "loras" / "progrpo").symlink_to(pack.tmp / "loras" / "real")
    out = pack.nodes["ProGRPOSaveLoRA"]().save(dict(LORA), "progrpo/sub/x", False)
    assert out["result"] == ("progrpo/sub/x_00001_.safetensors",)
    assert (pack.tmp / "loras" / "real" / "sub" / "x_00001_.safetensors").is_file()
    assert pack.files.autosave_path("run") == pack.tmp / "loras" / "real" / "autosave" / "run.safetensors"


# -- a process of its own: a memory limit, a Ctrl-C while importing --------------------------------------
LIMIT_KB = 6_000_000  # the sweep's `ulimit -v 6000000`
MEMORY_CASES = {
    "ulimit-group-size-1e6": (["train", "--out", "run", *TINY, "--schedule.group_size", "1000000"], 2,
                              "this run does not fit in memory"),
    "ulimit-prompts-per-epoch-1e6": (["train", "--out", "run", *TINY, "--grpo.prompts_per_epoch", "1000000"], 2,
                                     "this run does not fit in memory"),
    "ulimit-lora-rank-1e5": (["train", "--out", "run", *TINY, "--lora.rank", "100000"], 2,
                             "lora.rank=100000 is more than any adapted layer can use"),
    "ulimit-plan-group-size-1e6": (["plan", *TINY[1:], "--schedule.group_size", "1000000"], 1,
                                   "more than the budget"),
}


@pytest.mark.parametrize("name", list(MEMORY_CASES))
def test_sweep_under_a_memory_limit(name, tmp_path):
    """Under ``ulimit -v 6000000`` the planner's budget is what the limit leaves (not the machine's
    free RAM), so a run that cannot fit is refused up front instead of crashing mid-allocation."""
    args, code, message = MEMORY_CASES[name]
    r = subprocess_cli(args, tmp_path, limit_kb=LIMIT_KB)
    out = r.stdout + r.stderr
    assert "Traceback" not in out and r.returncode == code and message in out, out
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()  # nothing trained
    assert not list((tmp_path / "run").glob("checkpoints/epoch-*"))


def test_sweep_ctrl_c_while_importing(tmp_path):
    """SIGINT while ``python -m progrpo_core`` imports torch: "interrupted", exit 130, no traceback."""
    # a terminal's Ctrl-C: Python's own SIGINT handler, also when this suite runs in the background
    # (a shell's background jobs start with SIGINT ignored, and then Python installs none)
    hook = ("import builtins, os, signal\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "_real = builtins.__import__\n"
            "def _hook(name, *a, **k):\n"
            "    if name == 'torch':\n"
            "        builtins.__import__ = _real\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return _real(name, *a, **k)\n"
            "builtins.__import__ = _hook\n")
    r = subprocess_cli(["train", "--no-progress"], tmp_path, pre=hook)
    assert r.returncode == 130 and r.stderr.strip() == "interrupted", r.stderr
    assert not (tmp_path / "runs").exists()


# -- the planner's budget: the least of free memory, ulimit -v and the cgroup ------------------------------
@pytest.mark.parametrize("version", ["v2", "v1", "unlimited"])
def test_the_cgroup_memory_limit_counts(version, tmp_path):
    from progrpo_core import devices

    if version == "v2":
        (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
        (tmp_path / "memory.current").write_text(f"{2**30}\n")
    elif version == "v1":
        (tmp_path / "memory").mkdir()
        (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{3 * 2**30}\n")
        (tmp_path / "memory" / "memory.usage_in_bytes").write_text(f"{2**30}\n")
    else:
        (tmp_path / "memory.max").write_text("max\n")
        (tmp_path / "memory.current").write_text(f"{2**30}\n")
    room = devices._cgroup_room(str(tmp_path))
    assert room == (None if version == "unlimited" else 2 * 2**30)


def test_the_cpu_budget_honours_a_cgroup_limit(monkeypatch):
    from progrpo_core import devices

    monkeypatch.setattr(devices, "_cgroup_room", lambda root="/sys/fs/cgroup": 2**30)
    free, total = devices.memory_info(torch.device("cpu"))
    assert free <= 2**30 and total >= free


def test_the_cpu_budget_honours_ulimit_v(tmp_path):
    """In a process whose address space is limited, free memory is at most what the limit leaves."""
    code = ("import resource, torch\n"
            "from progrpo_core.devices import _vm_size, memory_info, memory_ceiling\n"
            "limit = _vm_size() + 2**30\n"
            "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
            "free, total = memory_info(torch.device('cpu'))\n"
            "print(free <= 2**30, free > 0, memory_ceiling(torch.device('cpu')) == limit)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["True", "True", "True"], r.stdout + r.stderr


@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs of a given size at ``tmp_path/disk`` (root only: skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small disk needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=True)


@pytest.mark.parametrize("size,epochs,written", [("100k", "3", []), ("640k", "1", [1]), ("1250k", "3", [1, 2])])
def test_sweep_a_real_full_disk(size, epochs, written, small_disk, capsys):
    """The same on a real disk that fills: before the first checkpoint (100k), in the final LoRA
    save (640k, one epoch: safetensors' own error) and in the third checkpoint's write (1250k:
    torch's iostream error). Sizes measured on Linux tmpfs with the built-in model."""
    from progrpo_core import checkpoint as ckpt

    run = small_disk(size) / "run"
    code = main(["train", "--out", str(run), *TINY, "--run.epochs", epochs, "--run.checkpoint_every", "1",
                 "--run.check_disk", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "is full (No space left on device)" in err, err
    assert [e for e, _ in ckpt.list_checkpoints(run)] == written and not list(run.rglob("*.tmp"))
    assert ("--resume" in err) == bool(written), err
    if epochs == "1":
        assert not (run / "lora.safetensors").exists()
    resumable = bool(written)
    subprocess.run(["mount", "-o", "remount,size=4m", str(run.parent)], check=True)
    way_on = (["train", "--resume", str(run), "--no-progress"] if resumable
              else ["train", "--config", str(run / "config.toml"), "--overwrite", "--no-progress"])
    assert main(way_on) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == int(epochs)


def test_the_sweep_table_names_every_case():
    """docs/RELIABILITY.md's sweep table names every row of this file."""
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text().split("## The second hostile sweep")[1]
    names = [f"[{n}]" for n in (*CASES, *NODE_CASES, *MEMORY_CASES)] + [
        n for n in globals() if n.startswith("test_") and n != "test_the_sweep_table_names_every_case"]
    missing = [n for n in names if n not in doc]
    assert not missing, missing


def test_a_fresh_comfyui_without_models_loras_gets_one(pack):
    """(models/loras is ComfyUI's; a fresh base directory may not have it yet.)"""
    shutil.rmtree(pack.tmp / "loras")
    assert pack.files.autosave_path("run") == pack.tmp / "loras" / "progrpo" / "autosave" / "run.safetensors"
    assert (pack.tmp / "loras" / "progrpo" / "autosave").is_dir()


def test_a_run_of_an_older_progrpo_without_run_json_stays_usable(tiny_run, tmp_path, capsys):
    """(The ownership rule must not lock out runs made before run.json: config.toml and
    checkpoints/epoch-*.pt mark them.)"""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    (run / "run.json").unlink()
    assert main(["train", "--resume", str(run), "--no-progress", "--run.epochs", "2"]) == 0
    (run / "run.json").unlink(missing_ok=True)
    assert main(["train", "--out", str(run), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(run), *TINY, "--overwrite"]) == 0
