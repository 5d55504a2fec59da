"""Files bigmodel writes (standard library only): atomic writes, output-path rules, stale temporaries.

- Every file is written to a temporary name beside it and renamed: a crash never leaves half a file.
  Temporary names carry the writer's process id (`.NAME.PID.XXXXXXXX.tmp`, folders `.NAME.PID.old`),
  so the next writer in that folder removes those of dead processes and never those of a live one.
- Output paths are checked before any work: an existing file is replaced only with --force; an
  existing folder only when bigmodel made it (a bundle, a Triton repository it wrote) and --force
  is given; anything else (a run, a folder with other files, the current folder) is refused.
- The operating system's refusals (disk full, read-only, permission) become a one-line StorageError.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from bigmodel.checksum import sha256_file  # noqa: F401  (re-exported: the writers' one import)
from bigmodel.errors import InputError, StorageError

MANIFEST_NAME = "manifest.json"  # == bigmodel.manifest.MANIFEST_NAME (not imported: keep this module leaf-level)
TRITON_MARKER = ".bigmodel-triton"  # written into every Triton repository bigmodel makes
# .NAME.PID.XXXXXXXX.tmp (a file or folder being written) and .NAME.PID.old (a replaced folder being removed)
_TEMP = re.compile(r"^\..+\.(\d+)\.(?:[a-z0-9_]{8}\.tmp|old)$")
# errno values that mean "this machine refuses" rather than "this input is wrong"
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                            errno.EFBIG, errno.EMFILE, errno.ENFILE})


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


def remove_stale_temps(folder: str | os.PathLike) -> list[str]:
    """Remove temporaries of dead bigmodel processes in `folder` (never a live one's); their names."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and stale_temp(entry.name):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass  # someone else removed it, or we may not: not our business to fail on
    return removed


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
    """Put the finished folder `tmp` at `out`; an older `out` is removed only once the new one is in place."""
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


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


# ------------------------------------------------------------------------------------------ output rules
def check_output_file(path: str | os.PathLike, force: bool, what: str, suffixes: Iterable[str] = (),
                      flag: str = "--out") -> Path:
    """An output file path is usable: the right suffix, not a folder, not an existing file unless `force`,
    in a writable folder. Checked before any work starts."""
    path = Path(path)
    suffixes = tuple(suffixes)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{flag} {path}: expected a {' or '.join(suffixes)} file for the {what}; "
                         f"got suffix {path.suffix or '(none)'!r}")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; expected a file path for the {what} "
                         f"(e.g. {path / ('out' + (suffixes[0] if suffixes else ''))})")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise InputError(f"{flag} {path} exists and is not a regular file; expected a file path for the {what}")
        if not force:
            raise InputError(f"{flag} {path} already exists; pass --force to overwrite it, or choose another path")
    check_writable(path.parent)
    return path


def _holds_cwd(folder: Path) -> bool:
    here = Path.cwd().resolve()
    target = folder.resolve()
    return target == here or target in here.parents or target == Path.home().resolve()


def is_bundle(folder: Path) -> bool:
    """A folder bigmodel exported: a bigmodel manifest.json and nothing beside it but what bundles hold."""
    try:
        d = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not (isinstance(d, dict) and "format_version" in d and isinstance(d.get("roles"), dict)
            and "family" in d and "latent" in d):
        return False
    named = {MANIFEST_NAME, "engines", "fp32"}
    for r in d["roles"].values():
        if isinstance(r, dict) and isinstance(r.get("file"), str):
            first = Path(r["file"]).parts[0] if Path(r["file"]).parts else ""
            named |= {first, first + ".data"}
    for name in os.listdir(folder):
        if name in named or _TEMP.match(name) or name.endswith((".onnx", ".onnx.data")) \
                or (name.startswith("tuning") and name.endswith(".json")):
            continue
        return False
    return True


def is_triton_repository(folder: Path) -> bool:
    """A Triton model repository bigmodel wrote (it leaves a marker file)."""
    return (folder / TRITON_MARKER).is_file()


def _contents(folder: Path, entries: list[str]) -> str:
    if "checkpoint.pt" in entries:
        return "a training run (checkpoint.pt)"
    if MANIFEST_NAME in entries:
        return "files beside manifest.json that a bundle does not hold (" + ", ".join(
            sorted(e for e in entries if not e.endswith((".onnx", ".onnx.data")) and e != MANIFEST_NAME)[:4]) + ")"
    shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} bigmodel did not write ({shown})"


def check_output_folder(folder: str | os.PathLike, force: bool, what: str = "bundle",
                        flag: str = "--out") -> Path:
    """An output folder may be written: new, empty, or (with `force`) one bigmodel made of the same kind.

    `what`: "bundle" or "Triton model repository". A run folder, a parent of it, a folder holding
    anything else, the current folder or a file is refused, with or without --force.
    """
    folder = Path(folder)
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise InputError(f"{flag} {folder} is a file; expected a folder for the {what}")
        if _holds_cwd(folder):
            raise InputError(f"{flag} {folder} is the current folder, a parent of it or your home folder; "
                             f"expected a folder of its own for the {what}")
        remove_stale_temps(folder)
        entries = [e for e in os.listdir(folder) if not _TEMP.match(e)]
        if entries:
            ours = is_triton_repository(folder) if what.startswith("Triton") else is_bundle(folder)
            if not ours:
                raise InputError(f"{flag} {folder} holds {_contents(folder, entries)}; bigmodel replaces only a "
                                 f"{what} it wrote, so choose a new or empty folder for the {what}")
            if not force:
                raise InputError(f"{flag} {folder} already holds a {what}; pass --force to replace it, or choose "
                                 "another folder")
    check_writable(folder)
    return folder
