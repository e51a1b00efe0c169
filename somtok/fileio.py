"""Writing outputs safely: atomically, never over an existing file unasked, never outside
the folder a user chose."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from somtok.errors import SomtokError


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Return ``path`` as a Path, refusing an existing file unless ``force``."""
    path = Path(path)
    if path.is_dir():  # first: --force would not help
        raise SomtokError(f"output {str(path)!r} is a folder; expected a file path")
    if path.exists() and not force:
        raise SomtokError(f"output {str(path)!r} already exists; pass --force to overwrite it")
    check_folder(path.parent, f"output {str(path)!r}")
    return path


def check_folder(folder: str | os.PathLike, what: str | None = None) -> Path:
    """Return ``folder`` as a Path, refusing one that cannot be made or written to: a file in
    its place or above it, or a nearest existing folder this process may not write in.

    ``what`` names the output in the message (default: the folder itself).
    """
    folder = Path(folder)
    what = what or f"output folder {str(folder)!r}"
    for ancestor in (folder, *folder.parents):
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise SomtokError(
                f"{what} cannot be written: {str(ancestor)!r} is a file, not a folder"
            )
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise SomtokError(
                f"{what} cannot be written: no permission to write in {str(ancestor)!r}"
            )
        break
    return folder


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or an exception leaves no partial file behind: the temporary file is removed.
    """
    path = check_writable(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as err:  # what check_writable cannot foresee: a read-only or special file system
        raise SomtokError(f"output {str(path)!r} cannot be written: {err.strerror or err}") from err
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def safe_child(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name`` for an untrusted ``name``, refusing anything that leaves ``folder``."""
    folder = Path(folder).resolve()
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or "\x00" in base:
        raise SomtokError(f"unsafe output name {name!r}; expected a plain file name")
    child = (folder / base).resolve()
    if child.parent != folder:
        raise SomtokError(f"output name {name!r} points outside {str(folder)!r}")
    return child
