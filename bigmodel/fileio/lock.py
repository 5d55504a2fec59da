"""One writer per folder: an advisory fcntl lock beside the run or bundle being written (see `bigmodel.fileio`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bigmodel.errors import InputError
from bigmodel.fileio.atomic import _HELD, LOCK_SUFFIX, _umask, storage_error


def lock_path(folder: str | os.PathLike) -> Path:
    """Where the lock of `folder` lives: `.NAME.bigmodel.lock` beside it (the folder may not exist yet)."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "folder"):
    """Hold the one-writer lock of `folder` (an advisory fcntl lock beside it) for the block.

    A second writer gets an InputError naming the holder's PID; the lock dies with its process, so a
    killed writer's lock is taken over. Nested calls in one process share the lock.

    >>> with folder_lock("runs/vae", "run"): ...
    """
    path = lock_path(folder)
    key = str(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        yield path
        return
    made = _missing_parents(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, fcntl, folder, what)
    except OSError as e:
        _remove_empty(made)
        raise storage_error(e, path, "write") from e
    except BaseException:
        _remove_empty(made)
        raise
    _HELD[key] = 1
    try:
        yield path
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiting writer re-checks the inode and retries
        os.close(fd)
        _remove_empty(made)


def _acquire(path: Path, fcntl, folder, what: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"{folder} is being written by another bigmodel process (PID {holder}, lock {path}); "
                             f"expected one writer per {what}: wait for it to finish or stop it") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:  # (a full disk): leave no lock file behind
                os.unlink(path)
                os.close(fd)
                raise
            return fd
        os.close(fd)  # the holder released and removed it between our open and flock: try again


def _missing_parents(folder: Path) -> list[Path]:
    made = []
    while not folder.exists() and folder.parent != folder:
        made.append(folder)
        folder = folder.parent
    return made


def _remove_empty(folders: list[Path]) -> None:
    for f in folders:  # deepest first
        with contextlib.suppress(OSError):
            f.rmdir()

