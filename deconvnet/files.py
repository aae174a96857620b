"""Writing result files: atomically (a reader never sees half a file, a crash leaves none), into
output folders that are checked before the work and locked while it runs."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from deconvnet.errors import DeconvNetError

try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None

# The temporary names write_atomic makes: ".<name>.<8 random characters>.tmp".
TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place.

    A failure of the file system (a full disk, a folder made read-only) removes the temporary
    file and raises ``DeconvNetError`` naming ``path``."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        # mkstemp makes the file private (0600); results are meant to be shared like any file
        # the user writes, so give it the usual mode under the umask.
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise DeconvNetError(cannot_write(path, error)) from None
        raise
    return path


def cannot_write(path: str | os.PathLike[str], error: OSError) -> str:
    """One line for a failed write: what, where, and for a full disk what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: no space left on its device; free some space and run again"
    return f"cannot write {path}: {error.strerror or error}"


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda file: file.write(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files ``write_atomic`` left in ``folder`` when a run was killed;
    only call it while holding the folder's lock, or it could remove a live run's file."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if TEMPORARY.match(name):
            path = Path(folder) / name
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def writable_folder(folder: str | os.PathLike[str], option: str = "--out") -> bool:
    """Make ``folder`` (and its parents) if needed and prove a file can be written in it, before
    any work; ``DeconvNetError`` in one line if not. Returns whether the folder was made."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DeconvNetError(f"{option} {folder} is a file, not a folder; give a folder")
    if folder.is_symlink() and not folder.exists():
        raise DeconvNetError(
            f"{option} {folder} is a link to {os.readlink(folder)}, which does not exist; make "
            "that folder, or give another"
        )
    for parent in folder.parents:
        if parent.exists() and not parent.is_dir():
            raise DeconvNetError(f"{option} {folder} cannot be made: {parent} is a file")
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise DeconvNetError(f"{option} {folder} cannot be made: {reason}") from None
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        try:
            os.write(handle, b"\0" * 4096)
            os.fsync(handle)
        finally:
            os.close(handle)
            Path(probe).unlink(missing_ok=True)
    except OSError as error:
        if made:
            _remove_empty(folder)
        raise DeconvNetError(f"{option} {folder}: {cannot_write(folder, error)}") from None
    return made


def _remove_empty(folder: Path) -> None:
    with suppress(OSError):
        folder.rmdir()


LOCK_NAME = ".deconvnet-lock"


@contextmanager
def locked(
    folder: str | os.PathLike[str], name: str = LOCK_NAME, *, shared: bool = False
) -> Iterator[None]:
    """Hold an ``flock`` on ``folder/name`` for the block: exclusive, or ``shared`` with other
    shared holders. Taken at once or not at all: ``DeconvNetError`` if another process holds
    it. The lock file is removed by the last holder (and never left by a clean exit)."""
    if fcntl is None:
        yield
        return
    path = Path(folder) / name
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise DeconvNetError(
                f"{folder} is being written by another deconvnet run; wait until it ends, "
                "or write elsewhere"
            ) from None
        # A holder that just ended may have removed the file we opened: lock the one in place.
        try:
            same = os.fstat(handle).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    try:
        yield
    finally:
        try:
            # Only a sole holder may remove the file: a shared one first asks for it alone.
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(handle)
