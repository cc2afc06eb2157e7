"""Config files: TOML read and written, with the standard library only (no torch).

Python 3.11+ parses with ``tomllib``; 3.10 with ``tomli``, the same parser as a package (a
dependency there). Kept free of torch so the oldest supported Python can check it cheaply.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import input_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


BOM = b"\xef\xbb\xbf"


def load_toml(path: str | Path) -> dict[str, Any]:
    """The table in the TOML file ``path``; a missing, malformed or binary file is a clear error."""
    path = input_file(path, "config file", "TOML file")
    data = path.read_bytes()
    if data.startswith(BOM):  # Windows editors (Notepad) start UTF-8 files with a byte-order mark
        data = data[len(BOM):]
    try:
        return tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a TOML text file (it is not UTF-8 text); give a config written like "
                         "the config.toml of a run folder") from None


def toml_text(table: dict[str, dict[str, Any]]) -> str:
    """``[section]`` blocks of ``name = value`` lines (bools, numbers, strings, lists of them)."""
    lines = []
    for section, values in table.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {_value(v)}")
        lines.append("")
    return "\n".join(lines)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
