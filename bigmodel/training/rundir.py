"""The run directory: what it may hold before a run starts there, and what each epoch writes into it.

`check_run_folder` guards --out (never start a run among a user's files); `write_epoch` leaves the
checkpoint, metrics.jsonl and pictures of one epoch, checkpoint first.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bigmodel.errors import CheckpointError, InputError
from bigmodel.fileio import (
    RUN_FILES,
    atomic_write_text,
    bigmodel_entry,
    bundle_files,
    check_writable,
    foreign_files,
    holds_cwd,
    is_bundle,
    is_triton_repository,
    remove_stale_temps,
    sha256_file,
)
from bigmodel.manifest import MANIFEST_NAME, DataSpec
from bigmodel.models.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from bigmodel.training.artifacts import write_curves, write_pictures

# fileio.RUN_FILES: what a run directory holds besides bundles; anything else is the user's.


def check_run_folder(out: Path, resume: bool, force: bool, can_resume: bool = True) -> Path | None:
    """May a run be written into `out`? Returns the bundle to drop once the new run's first checkpoint
    has landed (with --force: the bundle exported from the checkpoint being replaced), else None.

    A folder holding a run is refused unless resuming or forced; forced, a bundle of the old run that
    holds a file its manifest does not record is refused, naming it. A folder without a run that holds
    anything but a run's own files is refused always, as are the current folder, its parents and your
    home folder: bigmodel never starts a run among a user's files.
    """
    if not out.exists():
        if not resume:  # (resume: the checkpoint loader says what is missing)
            check_writable(out)
        return None
    if not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a run directory")
    if not resume and holds_cwd(out):
        raise InputError(f"--out {out} is the current folder, a parent of it or your home folder; expected a "
                         "run directory of its own (e.g. runs/NAME)")
    remove_stale_temps(out)
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists():
        if not (resume or force):
            try:
                held = f"a run at epoch {load_checkpoint(ckpt).get('epoch', '?')}"
            except CheckpointError as e:
                held = f"an unreadable {CHECKPOINT_NAME} ({str(e)[:80]})"
            hint = "--resume to continue, --force to start over" if can_resume else \
                "--force to start over, or choose another --out"
            raise InputError(f"--out {out} holds {held}; {hint}")
        check_writable(out)
        return None if resume else stale_bundle(out, ckpt)
    if not resume:
        foreign = [e for e in sorted(os.listdir(out)) if not _run_entry(out / e)]
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise InputError(f"--out {out} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} a run "
                             f"does not write ({shown}); choose a new or empty run directory")
        check_writable(out)
    return None


def _run_entry(path: Path) -> bool:
    """A file or folder a run directory may hold: the run's files, bundles, bigmodel's temporaries and locks
    (a user's hidden file is the user's)."""
    if bigmodel_entry(path.name) or path.name in RUN_FILES:
        return True
    return path.is_dir() and (is_bundle(path) or is_triton_repository(path))


def stale_bundle(out: Path, old_checkpoint: Path) -> Path | None:
    """Starting over: RUN/bundle if it was exported from the checkpoint being replaced (it would no longer
    describe this run), else None. One holding a file its manifest does not record is refused, naming it."""
    bundle = out / "bundle"
    owned = bundle_files(bundle) if bundle.is_dir() else None
    if owned is None or not old_checkpoint.is_file():
        return None
    try:
        exported_from = json.loads((bundle / MANIFEST_NAME).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    if exported_from != sha256_file(old_checkpoint):
        return None
    foreign = foreign_files(bundle, owned, tables=True)
    if foreign:
        raise InputError(f"--out {out}: --force would remove {bundle}, the bundle of the run it replaces, but "
                         f"it holds {len(foreign)} file(s) its manifest does not record ({', '.join(foreign[:4])}); "
                         "move them out first")
    return bundle


def config_record(settings, model, spec: DataSpec, dataset: dict | None = None) -> dict[str, Any]:
    """config.json; `dataset` (data.data_record) lets export find a path dataset again after a move."""
    return {
        "family": settings.family,
        "arch": settings.arch,
        "config": model.config.to_dict(),
        "data_spec": spec.to_dict(),
        "latent": asdict(model.latent_spec()),
        "settings": asdict(settings),
        "dataset": dataset,
    }


def write_epoch(out, settings, model, optimizers, shuffle, noise, epoch, history, val_x, device,
                config: str | None = None, stale: Path | None = None, pictures: bool = True,
                dataset: dict | None = None) -> None:
    """Checkpoint first (atomic), then metrics and pictures (curves.png too): a kill loses at most this epoch.

    `pictures` False skips the PNGs (the loop draws them every few seconds, not after each of hundreds
    of tiny epochs on a small dataset; the last epoch always draws them).

    The first epoch of a run also writes `config` and drops the `stale` bundle of the run it replaced:
    only once the new checkpoint is on disk, so a refused write leaves the old run whole.
    """
    save_checkpoint(
        out / CHECKPOINT_NAME,
        {
            "family": settings.family,
            "arch": settings.arch,
            "config": model.config.to_dict(),
            "data_spec": model.data.to_dict(),
            "settings": asdict(settings),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
            "epoch": epoch,
            "rng": {"shuffle": shuffle.get_state(), "noise": noise.get_state()},
            "history": history,
            "dataset": dataset,  # data.data_record: where a path dataset lay, and its sha256
        },
    )
    if config is not None:
        atomic_write_text(out / "config.json", config)
    if stale is not None and is_bundle(stale):
        shutil.rmtree(stale)
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    if pictures:
        write_pictures(model, val_x, out, device)
        write_curves(out / "curves.png", history)
    model.train()
