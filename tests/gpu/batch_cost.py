"""Seconds per network row against the batch size, on a full-size network with random weights.

Pruning shrinks the batches the sampler sends through the network; where a smaller batch costs
more per row, wall-clock falls less than compute. This times one no-grad forward of the full-size
network (built as in ``real_size.py``) at each batch size, the best of two after a warm-up call, and
prints one JSON object ``{batch: seconds per row}``. Run with ComfyUI's python from the repository
root; not part of the test suite::

    python tests/gpu/batch_cost.py --comfyui PATH --model sd15 --resolution 128 --batches 1,8,12,16,24
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batches", default="1,8,12,16,24", help="comma-separated batch sizes")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import real_size as R

    sys.path.insert(0, str(R.REPO))
    from progrpo_headless import pack_nodes

    pack_nodes("host.headless").import_comfyui(args.comfyui, args.device)
    import comfy.model_management as mm
    import torch

    device = mm.get_torch_device()
    patcher, _ = R.build_patcher(args.model, torch.float32, device)
    unet = patcher.model.diffusion_model.eval()
    side = args.resolution // 8
    width = {"sd15": 768, "sdxl": 2048}[args.model]
    out = {}
    with torch.no_grad():
        for n in (int(b) for b in args.batches.split(",")):
            x = torch.randn(n, 4, side, side, device=device)
            t = torch.full((n,), 500.0, device=device)
            ctx = torch.randn(n, 77, width, device=device)
            extra = {"y": torch.randn(n, 2816, device=device)} if args.model == "sdxl" else {}
            unet(x, t, context=ctx, **extra)  # warm-up at this size
            times = []
            for _ in range(2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                unet(x, t, context=ctx, **extra)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            out[n] = round(min(times) / n, 4)
    print(json.dumps({"model": args.model, "resolution": args.resolution, "device": str(device),
                      "seconds_per_row": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
