"""Atomic writes, temporaries and the operating system's refusals (standard library only; see `bigmodel.fileio`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bigmodel.errors import InputError, StorageError

# .NAME.PID.XXXXXXXX.tmp (a file or folder being written) and .NAME.PID.old (a replaced folder being removed)
_TEMP = re.compile(r"^\..+\.(\d+)\.(?:[a-z0-9_]{8}\.tmp|old)$")
LOCK_SUFFIX = ".bigmodel.lock"  # .NAME.bigmodel.lock beside the folder NAME being written (folder_lock)
_LOCK = re.compile(r"^\..+\.bigmodel\.lock$")
_TEMP_NAME = re.compile(r"^\.(.+)\.\d+\.(?:[a-z0-9_]{8}\.tmp|old)$")  # group 1: the final name
# errno values that mean "this machine refuses" rather than "this input is wrong"
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                            errno.EFBIG, errno.EMFILE, errno.ENFILE})


_HELD: dict[str, int] = {}  # lock path -> how many nested folder_lock calls of this process hold it


# ----------------------------------------------------------------------------------------- temporaries
def temp_prefix(name: str) -> str:
    """Prefix of a temporary file or folder for `name`, carrying this process's id."""
    return f".{name}.{os.getpid()}."


def write_json(path: str | os.PathLike, data) -> Path:
    """`data` as indented JSON (non-JSON values as str), written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def make_temp_dir(final: Path) -> Path:
    """An empty temporary folder beside `final` (same filesystem, so it can be renamed onto it)."""
    return Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".tmp", dir=final.parent))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def stale_temp(name: str) -> bool:
    """True if `name` is a bigmodel temporary whose writer process is gone."""
    m = _TEMP.match(name)
    return bool(m) and not _alive(int(m.group(1)))


def bigmodel_entry(name: str) -> bool:
    """A name bigmodel gives its temporaries and locks (never a user's file)."""
    return bool(_TEMP.match(name) or _LOCK.match(name))


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Remove temporaries of dead bigmodel processes in `folder` (never a live one's); their names.

    A dead writer's `.NAME.PID.old` is the complete folder it was replacing: when NAME is gone (a kill
    between the two renames of `replace_dir`) it is put back as NAME, never deleted. Lock files no
    process holds are removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in sorted(entries, key=lambda e: not e.name.endswith(".old")):  # restore before removing
        if _LOCK.match(entry.name):
            _remove_free_lock(Path(entry.path))
        elif entry.name.startswith(".") and stale_temp(entry.name):
            if entry.name.endswith(".old"):
                final = Path(folder) / _TEMP_NAME.match(entry.name).group(1)
                if not (final.exists() or final.is_symlink()):
                    with contextlib.suppress(OSError):
                        os.rename(entry.path, final)
                        removed.append(entry.name)
                        continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass  # someone else removed it, or we may not: not our business to fail on
    return removed


def _remove_free_lock(path: Path) -> None:
    """Remove a lock file no live process holds (its writer was killed)."""
    if str(path) in _HELD:
        return
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR)
    except (ImportError, OSError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass  # held by a live writer, or gone
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`.

    A failure of the operating system (disk full, read-only) is a StorageError naming `path`.

    >>> atomic_write("out.txt", lambda tmp: Path(tmp).write_text("hi"))
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        refused = os_refusal(e)
        if refused is not None:
            raise storage_error(refused, path, "write") from e
        raise
    return path


def os_refusal(e: BaseException) -> OSError | None:
    """The OSError (disk full, read-only, ...) behind `e`, also when a library raised its own error while
    handling it (torch.save's writer does: RuntimeError "enforce fail" on top of ENOSPC); else None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        if isinstance(e, OSError) and e.errno is None and (
                ("requested and" in str(e) and "written" in str(e)) or "Not enough free space" in str(e)):
            # numpy's tofile on a full disk: "N requested and M written" or "Not enough free space to write N
            # bytes", no errno (a short write is ENOSPC)
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public_dir(path: str | os.PathLike) -> None:
    """Give a folder from tempfile.mkdtemp (0700) the usual permissions before it is renamed into place."""
    os.chmod(path, 0o777 & ~_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`; an older `out` is removed only once the new one is in place.

    Where the system can (Linux renameat2), new and old swap names in one atomic step and `tmp` then
    holds the old folder; elsewhere the old one is first renamed to `.NAME.PID.old`, which
    `remove_stale_temps` puts back if a crash comes before the new one is renamed into place.
    """
    if not (out.exists() or out.is_symlink()):
        tmp.rename(out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of `a` and `b` atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # this kernel or filesystem cannot: the two-rename path
    raise OSError(err, os.strerror(err), str(b))

# -------------------------------------------------------------------------------------------- errors
def storage_error(e: OSError, path: str | os.PathLike, doing: str = "write") -> StorageError:
    """One line for an OSError: what could not be done to which path, and the operating system's reason."""
    reason = e.strerror or str(e) or type(e).__name__
    hint = {errno.ENOSPC: "free some space or choose another folder",
            errno.EDQUOT: "free some space or choose another folder",
            errno.EROFS: "the filesystem is read-only: choose a writable folder",
            errno.EACCES: "choose a folder you may write to", errno.EPERM: "choose a folder you may write to"}
    more = hint.get(e.errno)
    return StorageError(f"cannot {doing} {path}: {reason}" + (f" ({more})" if more else ""))


def check_writable(folder: str | os.PathLike) -> None:
    """The folder (or, if it does not exist yet, its nearest existing parent) accepts new files.

    Tried for real (a temporary file created and removed), so a read-only mount, missing permission
    or a full inode table is found before any work starts.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{probe} is a file; expected a folder to write {folder} in")
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix("probe"), suffix=".tmp", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise storage_error(e, folder if probe == folder else f"{folder} (in {probe})", "write to") from e


