"""Files, written safely and read with clear errors.

Writes are atomic: a temporary file beside the target, flushed and fsynced, then renamed over it.
A crash at any moment leaves either the old file or the new one, never a torn one. A rename
replaces a symbolic link at the target instead of writing through it; appends and folders are
opened without following links (``O_NOFOLLOW``, ``lstat``). Nothing here creates a missing parent
folder: whoever owns a folder makes it (:func:`make_folder`). A writer that fails because the disk
is full — whatever it raises (torch: "iostream error", safetensors: ``SafetensorError``) — raises
``OSError(ENOSPC)`` and leaves nothing half-written.

:func:`input_file` checks a path a user gave before it is read: a missing file, a folder, a
device (``/dev/zero`` would be read forever) or a name too long each get their own message.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported where a tensor is written: io stays light for config checks
    import torch

DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (Windows has none; it has no symlinks a user makes by accident)


class PathError(ValueError):
    """A path that cannot be used as given (a folder where a file is wanted, a link, too long …)."""


def is_disk_full(e: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether ``e`` (from a write in ``folder``) means the disk is full. Writers that are not
    Python's own say so in words or not at all (torch's "basic_ios::clear: iostream error"):
    then a folder with (almost) no free space decides."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return True
    if any(t in str(e) for t in _DISK_FULL_TEXT):
        return True
    if folder is not None and not isinstance(e, OSError):
        try:
            return shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            return False
    return False


def disk_full_error(path: str | os.PathLike) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def check_writable_target(path: str | os.PathLike) -> Path:
    """``path`` may be written as a file: its folder exists and it is not a folder itself."""
    path = Path(path)
    parent = path.parent
    try:
        st = parent.stat()
    except FileNotFoundError:
        raise PathError(f"cannot write {path}: the folder {parent} does not exist; create it first or give a "
                        "path in an existing folder") from None
    except OSError as e:
        raise PathError(f"cannot write {path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PathError(f"cannot write {path}: {parent} is a file, not a folder")
    if path.is_dir():
        raise PathError(f"{path} is a folder; give a file name (e.g. {path / 'out.png'})")
    if len(path.name.encode()) > 200:
        raise PathError(f"the file name {path.name[:40]!r}… is {len(path.name)} characters long; file systems "
                        "allow about 255 bytes and the pack needs room beside it: use a name of at most 200")
    return path


def _atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    path = check_writable_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make 0600; use the usual permissions
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a link at ``path`` itself, never its target
    except BaseException as e:
        full = isinstance(e, Exception) and is_disk_full(e, path.parent)  # measured while the torn file exists
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if full and not (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS):
            raise disk_full_error(path) from e
        raise
    return path


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` to ``path`` (created if missing) without following a link at ``path``; a
    failed write (a full disk) is cut back off, so the file never ends in half a line."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PathError(f"{path} is a symbolic link; the pack does not write through links: remove it") from None
        raise
    try:
        size = os.fstat(fd).st_size
        data = line.encode()
        try:
            while data:
                n = os.write(fd, data)
                if n <= 0:
                    raise disk_full_error(path)
                data = data[n:]
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def make_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create the folder ``path`` (one level; its parent must exist) or accept it if it is already a
    real folder; a symbolic link or a file there is refused, never followed."""
    path = Path(path)
    try:
        os.mkdir(path)
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise PathError(f"the {what} {path} is a symbolic link (to {os.readlink(path)}); the pack writes only "
                            "into real folders it made: remove the link") from None
        if not stat.S_ISDIR(st.st_mode):
            raise PathError(f"the {what} {path} is a file, not a folder; move it away") from None
    return path


def input_file(path: str | os.PathLike, what: str, kind: str = "file") -> Path:
    """The regular file ``path`` (``~`` expanded) names, or an error saying what it is instead
    (``kind``: what to give instead, e.g. "TOML file")."""
    p = Path(os.path.expanduser(str(path)))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise PathError(f"{what} {str(p)[:60]!r}… is not a usable path: the name is too long "
                            f"({len(str(p))} characters)") from None
        raise PathError(f"{what} {p} cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise PathError(f"{what} {p} is a folder, not a file; give the {kind} itself")
    if not stat.S_ISREG(st.st_mode):
        raise PathError(f"{what} {p} is not a regular file (a device, pipe or socket); give a {kind}")
    return p


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_figure(fig, path: str | os.PathLike) -> Path:
    return _atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """For checkpoints of plain tensors/numbers/dicts only (read back with weights_only=True)."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))
