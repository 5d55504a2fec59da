"""What bigmodel may write over: output-file rules and the files a bundle or Triton repository records as
bigmodel's (see `bigmodel.fileio`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from bigmodel.errors import InputError
from bigmodel.fileio.atomic import bigmodel_entry, check_writable, remove_stale_temps

MANIFEST_NAME = "manifest.json"  # == bigmodel.manifest.MANIFEST_NAME (not imported: keep this module leaf-level)
TRITON_MARKER = ".bigmodel-triton"  # written into every Triton repository bigmodel makes (lists its files)
# What a run directory holds besides bundles (quickstart adds its reports); training.rundir guards it
RUN_FILES = frozenset({"checkpoint.pt", "config.json", "metrics.jsonl", "samples.png", "reconstructions.png",
                       "curves.png", "bundle", "parity.json", "bench.json", "samples_onnx.png"})


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


def holds_cwd(folder: Path) -> bool:
    """`folder` is the current folder, one of its parents, or the home folder."""
    here = Path.cwd().resolve()
    target = folder.resolve()
    return target == here or target in here.parents or target == Path.home().resolve()


def bundle_files(folder: str | os.PathLike) -> set[str] | None:
    """The files a bundle's manifest records as bigmodel's (relative paths); None if no bigmodel manifest.

    manifest.json, each role's graph and data files, engines, the reference programs. (Tuning tables
    `tuning*.json` are recognised by their content: `bigmodel tune` writes them beside the manifest.)
    """
    try:
        d = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not (isinstance(d, dict) and "format_version" in d and isinstance(d.get("roles"), dict)
            and "family" in d and "latent" in d):
        return None
    named: list = []
    for r in d["roles"].values():
        if isinstance(r, dict):
            named.append(r.get("file"))
            named += [f.get("file") for f in _dicts(r.get("data_files"))]
    named += [e.get("file") for e in _dicts(d.get("engines"))]
    ref = d.get("reference")
    if isinstance(ref, dict) and isinstance(ref.get("programs"), dict):
        named += [f.get("file") for f in ref["programs"].values() if isinstance(f, dict)]
    owned = {MANIFEST_NAME}
    for name in named:
        if isinstance(name, str) and name and "\0" not in name:
            parts = Path(name).parts
            if not Path(name).is_absolute() and ".." not in parts:
                owned.add(Path(*parts).as_posix())
    return owned


def _dicts(items) -> list[dict]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _tuning_table(path: Path) -> bool:
    """A table `bigmodel tune` wrote (tuning*.json beside the manifest, with its format, machine and roles)."""
    if not (path.name.startswith("tuning") and path.name.endswith(".json") and path.is_file()):
        return False
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and {"format", "machine", "roles"} <= d.keys()


def foreign_files(folder: Path, owned: set[str], tables: bool = False) -> list[str]:
    """Entries under `folder` that are not in `owned` (relative paths; folders above owned files are fine),
    bigmodel's temporaries and locks aside; with `tables`, tuning tables at the top are bigmodel's too."""
    above = {Path(p).parent.as_posix() for p in owned} | {p.as_posix() for o in owned for p in Path(o).parents}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            if bigmodel_entry(name):
                dirnames.remove(name)  # a temporary: not looked into
            elif rel not in above and rel not in owned:  # (an owned folder is looked into like the others)
                foreign.append(rel + "/")
                dirnames.remove(name)
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if rel in owned or bigmodel_entry(name) or (tables and rel == name and _tuning_table(folder / name)):
                continue
            foreign.append(rel)
    return sorted(foreign)


def is_bundle(folder: Path) -> bool:
    """A folder bigmodel exported: a bigmodel manifest.json and nothing but the files it records."""
    owned = bundle_files(folder)
    return owned is not None and not foreign_files(folder, owned, tables=True)


def triton_files(folder: Path) -> set[str] | None:
    """The files a Triton repository's marker records as bigmodel's; None if bigmodel did not write it."""
    try:
        d = json.loads((Path(folder) / TRITON_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    files = d.get("files") if isinstance(d, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return {TRITON_MARKER} | {Path(f).as_posix() for f in files
                              if f and "\0" not in f and not Path(f).is_absolute() and ".." not in Path(f).parts}


def mark_triton_repository(folder: Path) -> None:
    """Record every file now in the repository `folder` as bigmodel's (the marker --force reads)."""
    files = sorted(Path(dirpath, n).relative_to(folder).as_posix()
                   for dirpath, dirs, names in os.walk(folder) for n in dirs + names)  # folders too: 1/ may be empty
    (Path(folder) / TRITON_MARKER).write_text(json.dumps(
        {"written_by": "bigmodel export", "note": "--force may replace these files and nothing else",
         "files": files}, indent=2) + "\n", encoding="utf-8")


def is_triton_repository(folder: Path) -> bool:
    """A Triton model repository bigmodel wrote, holding only the files its marker records."""
    owned = triton_files(folder)
    return owned is not None and not foreign_files(folder, owned)


def _contents(folder: Path, entries: list[str], what: str) -> str:
    if "checkpoint.pt" in entries:
        return "a training run (checkpoint.pt)"
    owned = triton_files(folder) if what.startswith("Triton") else bundle_files(folder)
    if owned is not None:
        foreign = foreign_files(folder, owned, tables=not what.startswith("Triton"))
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        marker = TRITON_MARKER if what.startswith("Triton") else MANIFEST_NAME
        return f"{len(foreign)} file(s) its {marker} does not record as bigmodel's ({shown})"
    if MANIFEST_NAME in entries and not what.startswith("Triton"):
        return "a manifest.json bigmodel did not write"
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
        if holds_cwd(folder):
            raise InputError(f"{flag} {folder} is the current folder, a parent of it or your home folder; "
                             f"expected a folder of its own for the {what}")
        remove_stale_temps(folder)
        entries = [e for e in os.listdir(folder) if not bigmodel_entry(e)]
        if entries:
            ours = is_triton_repository(folder) if what.startswith("Triton") else is_bundle(folder)
            if not ours:
                raise InputError(f"{flag} {folder} holds {_contents(folder, entries, what)}; bigmodel replaces "
                                 f"only a {what} it wrote, and only when nothing else is in it, so move those "
                                 f"files or choose a new or empty folder for the {what}")
            if not force:
                raise InputError(f"{flag} {folder} already holds a {what}; pass --force to replace it, or choose "
                                 "another folder")
    check_writable(folder)
    return folder


def check_output_folders(force: bool, *outputs: tuple[Path | None, str, str]) -> None:
    """Each (folder, what, flag) usable (`check_output_folder`), and no two the same folder or one inside
    another (a Triton repository inside the bundle would be half-written, or replace it)."""
    given = [(Path(f), what, flag) for f, what, flag in outputs if f is not None]
    for i, (a, _, flag_a) in enumerate(given):
        for b, _, flag_b in given[i + 1:]:
            ra, rb = a.resolve(), b.resolve()
            if ra == rb or ra in rb.parents or rb in ra.parents:
                raise InputError(f"{flag_a} {a} and {flag_b} {b} overlap; expected two separate folders "
                                 f"(neither inside the other)")
    for folder, what, flag in given:
        check_output_folder(folder, force, what, flag)


def check_outside(path: str | os.PathLike, flag: str, folders: Iterable[str | os.PathLike]) -> None:
    """An output file never lands on what a command reads or writes: nothing inside a bundle or Triton
    repository in `folders`, none of a run's own files (checkpoint.pt, config.json, bundle/, ...) in a
    run folder, also the run a bundle sits in."""
    target = Path(os.path.abspath(path))
    inside, runs = [], []
    for folder in folders:
        if folder is None:
            continue
        folder = Path(os.path.abspath(folder))
        if folder.is_file():  # a checkpoint named directly: its run folder
            folder = folder.parent
        if (folder / "checkpoint.pt").is_file():
            runs.append(folder)
            continue
        inside.append(folder)
        if (folder.parent / "checkpoint.pt").is_file():
            runs.append(folder.parent)
    for folder in inside:
        if target == folder or folder in target.parents:
            raise InputError(f"{flag} {path} lies inside {folder}, which this command reads or writes; "
                             "expected a path outside it")
    for run in runs:
        if run in target.parents and target.relative_to(run).parts[0] in RUN_FILES:
            raise InputError(f"{flag} {path} is one of the run's own files in {run}; expected another name "
                             "(the run's checkpoint, config, pictures, reports and bundle are not overwritten)")
