"""Import every module of the pack (``progrpo_core``, ``nodes``) in this python and print JSON.

    python tests/import_all.py            # from the repository root

What an install must make importable: a missing dependency shows up here as the module that
needs it, not at run time in the middle of a training. ComfyUI itself is not needed (the
modules import it lazily). Prints ``{"modules": N, "failed": {module: error}, "versions": …}``
and exits 1 if any failed.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("progrpo_core", "nodes")
DISTRIBUTIONS = ("torch", "safetensors", "peft", "transformers", "open_clip_torch", "scipy", "scikit-learn",
                 "accelerate", "matplotlib")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    names, failed = [], {}
    for pkg in PACKAGES:
        base = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(base.__path__, prefix=pkg + "."):
            if not info.name.endswith(".__main__"):  # runs the command line
                names.append(info.name)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # any failure is the finding
            failed[name] = f"{type(e).__name__}: {e}"
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    print(json.dumps({"python": sys.version.split()[0], "modules": len(names), "failed": failed,
                      "versions": versions}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
