"""ProGRPO for ComfyUI: the custom-node entry point.

ComfyUI imports this package from ``custom_nodes/``; anywhere else (``python -m progrpo_core``,
pytest, pip) it defines nothing and imports nothing heavy. The headless core ``progrpo_core``
ships beside it and is made importable from this folder.
"""


def _load(here: str) -> dict:
    import importlib.util
    import logging
    import os
    import sys

    core = os.path.join(here, "progrpo_core")
    loaded = sys.modules.get("progrpo_core")
    if loaded is None:
        spec = importlib.util.spec_from_file_location("progrpo_core", os.path.join(core, "__init__.py"),
                                                      submodule_search_locations=[core])
        module = importlib.util.module_from_spec(spec)
        sys.modules["progrpo_core"] = module
        spec.loader.exec_module(module)
    elif os.path.realpath(os.path.dirname(loaded.__file__)) != os.path.realpath(core):
        logging.getLogger("progrpo").warning(
            "ProGRPO: using progrpo_core from %s, not the copy in this pack (%s)", loaded.__file__, core)

    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes.host import register_folders

    register_folders()
    return {"NODE_CLASS_MAPPINGS": NODE_CLASS_MAPPINGS, "NODE_DISPLAY_NAME_MAPPINGS": NODE_DISPLAY_NAME_MAPPINGS}


try:  # only inside ComfyUI
    import folder_paths as _folder_paths  # noqa: F401
    import comfy as _comfy  # noqa: F401
except ImportError:
    pass
else:
    globals().update(_load(__path__[0]))
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
