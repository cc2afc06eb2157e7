"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m progrpo_core train …`` starts ``N`` processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` reads them and joins the process group
(``nccl`` when training on CUDA, ``gloo`` otherwise). Without them, or with ``WORLD_SIZE=1``,
everything here is a no-op on one process, so the trainer has a single code path.

How the work is split (``B`` prompts per epoch, the *global* batch, ``W`` processes):

* rank ``r`` samples the whole groups of prompts ``r·B/W … (r+1)·B/W − 1`` (expand-and-prune
  stays inside a group, so it stays on one rank);
* final rewards (and the proxy rewards logged per checkpoint) are gathered in prompt order, so
  advantages, selections and metrics are computed on the same ``(B, K)`` tensor as on one
  process;
* gradients of the LoRA are summed over ranks once per optimizer step (:meth:`World.sync_grads`),
  and each rank scales its loss by its share of the *global* minibatch, so the sum is the
  one-process gradient.

Why an all-reduce of the LoRA gradients and not ``DistributedDataParallel``: DDP only synchronises
gradients when the forward pass goes through its wrapper, but the denoiser (the built-in model,
or a ComfyUI ``ModelPatcher``) calls the network the LoRA is injected into itself; a rank may own
no row of a global minibatch (DDP would wait for it forever); and one optimizer step accumulates
``T × chunks`` backward passes, which DDP would all-reduce every time unless each is wrapped in
``no_sync``. One flat all-reduce per optimizer step is what DDP would send with ``no_sync``.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Mapping, Sequence

import torch

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedSetupError(ValueError):
    """torchrun's environment is incomplete or inconsistent."""


def env_world(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return 0, 1, 0
    vals = {}
    for name in ENV_VARS:
        raw = env.get(name, "0" if name == "LOCAL_RANK" else None)
        if raw is None:
            raise DistributedSetupError(f"WORLD_SIZE={env['WORLD_SIZE']!r} is set but {name} is not; "
                                        "start multi-process training with torchrun, which sets both")
        try:
            vals[name] = int(raw)
        except ValueError:
            raise DistributedSetupError(f"{name}={raw!r} is not an integer (set by torchrun)") from None
    rank, world, local = vals["RANK"], vals["WORLD_SIZE"], vals["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedSetupError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} are inconsistent; "
                                    "expected 0 <= RANK < WORLD_SIZE")
    return rank, world, local


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes, and the collectives the trainer
    uses. With ``world_size == 1`` every collective returns its input."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes the run folder."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[lo, hi)`` of ``n`` items (the first ``n % W`` ranks get
        one more when ``n`` is not divisible)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    # -- collectives --------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``t`` along dim 0, in rank order. Ranks may hold different
        numbers of rows; the other dims and the dtype must agree."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        dev = self._device()
        n = torch.tensor([t.shape[0]], device=dev)
        counts = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(counts, n)
        counts = [int(c) for c in counts]
        most = max(counts)
        padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=dev)
        padded[:t.shape[0]] = t.to(dev)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)

    def sum(self, values: Sequence[float], dtype: torch.dtype = torch.float64) -> list[float]:
        """Element-wise sum of a list of numbers over ranks."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=dtype, device=self._device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable; these are the trainer's own values), in rank order."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with rank ``src``'s values."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                buf = t.detach().to(self._device())
                dist.broadcast(buf, src=src)
                t.copy_(buf.to(t.device))

    def sync_grads(self, params: Sequence[torch.Tensor], flag: float = 0.0) -> float:
        """Sum the gradients of ``params`` over ranks (a missing gradient counts as zero) and
        return the sum of every rank's ``flag`` (e.g. 1 for "my loss was not finite"), in one
        all-reduce."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        dev = self._device()
        flat = torch.cat([(p.grad.detach().reshape(-1).to(dev, torch.float32) if p.grad is not None
                           else torch.zeros(p.numel(), device=dev)) for p in params]
                         + [torch.tensor([float(flag)], device=dev)])
        dist.all_reduce(flat)
        i = 0
        for p in params:
            g = flat[i:i + p.numel()].view_as(p).to(p.device, p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            i += p.numel()
        return float(flat[-1])

    def reduce_compute(self, c):
        """A :class:`~progrpo_core.compute.Compute` summed over ranks (wall time per phase: the
        slowest rank's)."""
        if not self.enabled:
            return c
        import dataclasses

        from .compute import Compute

        names = [f.name for f in dataclasses.fields(Compute) if f.name != "wall"]
        totals = self.sum([getattr(c, n) for n in names])
        walls = self.all_gather_object(dict(c.wall))
        out = Compute(**{n: int(round(v)) for n, v in zip(names, totals)})
        out.wall = {k: max(wd.get(k, 0.0) for wd in walls) for k in sorted(set().union(*walls))}
        return out

    def run_on_main(self, fn, errors: tuple[type[Exception], ...]) -> None:
        """Run ``fn()`` on rank 0; if it raises one of ``errors``, every rank raises it."""
        error: Exception | None = None
        if self.is_main:
            try:
                fn()
            except errors as e:
                error = e
        message = self.broadcast_object(None if error is None else (type(error).__name__, str(error)))
        if message is not None:
            if error is not None:
                raise error
            kind = next((e for e in errors if e.__name__ == message[0]), errors[0])
            raise kind(message[1])

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def world_size() -> int:
    """How many processes train together: the initialised group's size, else torchrun's WORLD_SIZE."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env_world()[1]


def setup(device: str = "cpu", timeout_s: float | None = None) -> World:
    """The :class:`World` of this process, joining torchrun's process group if there is one.

    An already initialised default group (e.g. from the caller's own launcher) is used as it is."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        _, _, local = env_world()
        return World(dist.get_rank(), dist.get_world_size(), local, dist.get_backend(), owns_group=False)
    rank, world, local = env_world()
    if world == 1:
        return World()
    if not dist.is_available():
        raise DistributedSetupError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed")
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"run.device={device!r} with LOCAL_RANK={local}, but {torch.cuda.device_count()} CUDA device(s) "
                "are visible; start at most one process per GPU (torchrun --nproc_per_node <= GPUs)")
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise DistributedSetupError("this PyTorch build has neither NCCL (for CUDA) nor gloo; cannot train on "
                                    f"{world} processes")
    kwargs = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    return World(rank, world, local, backend, owns_group=True)


def shutdown(world: World) -> None:
    """Leave the process group if :func:`setup` created it."""
    if world.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
