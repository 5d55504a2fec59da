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
    atomic_write_text,
    check_writable,
    is_bundle,
    is_triton_repository,
    remove_stale_temps,
    sha256_file,
)
from bigmodel.manifest import MANIFEST_NAME, DataSpec
from bigmodel.models.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from bigmodel.training.artifacts import write_curves, write_pictures

# Files and folders a run directory holds (quickstart adds its reports); anything else is the user's.
RUN_FILES = frozenset({CHECKPOINT_NAME, "config.json", "metrics.jsonl", "samples.png", "reconstructions.png",
                       "curves.png", "bundle", "parity.json", "bench.json", "samples_onnx.png"})


def check_run_folder(out: Path, resume: bool, force: bool, can_resume: bool = True) -> Path | None:
    """May a run be written into `out`? Returns the checkpoint of a run to replace (with --force), else None.

    A folder holding a run is refused unless resuming or forced (what else it holds -- bundles,
    reports -- is left alone either way). A folder without a run that holds anything but a run's
    own files is refused always: bigmodel never starts a run among a user's files.
    """
    if not out.exists():
        if not resume:  # (resume: the checkpoint loader says what is missing)
            check_writable(out)
        return None
    if not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a run directory")
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
        return None if resume else ckpt
    if not resume:
        foreign = [e for e in sorted(os.listdir(out)) if not _run_entry(out / e)]
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise InputError(f"--out {out} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} a run "
                             f"does not write ({shown}); choose a new or empty run directory")
        check_writable(out)
    return None


def _run_entry(path: Path) -> bool:
    """A file or folder a run directory may hold: the run's files, bundles, hidden files (temporaries)."""
    if path.name.startswith(".") or path.name in RUN_FILES:
        return True
    return path.is_dir() and (is_bundle(path) or is_triton_repository(path))


def remove_stale_bundle(out: Path, old_checkpoint: Path) -> None:
    """Starting over: the bundle exported from the replaced checkpoint no longer describes this run."""
    bundle = out / "bundle"
    if not (bundle.is_dir() and is_bundle(bundle) and old_checkpoint.is_file()):
        return
    try:
        exported_from = json.loads((bundle / MANIFEST_NAME).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError):
        return
    if exported_from == sha256_file(old_checkpoint):
        shutil.rmtree(bundle)


def config_record(settings, model, spec: DataSpec) -> dict[str, Any]:
    return {
        "family": settings.family,
        "arch": settings.arch,
        "config": model.config.to_dict(),
        "data_spec": spec.to_dict(),
        "latent": asdict(model.latent_spec()),
        "settings": asdict(settings),
    }


def write_epoch(out, settings, model, optimizers, shuffle, noise, epoch, history, val_x, device) -> None:
    """Checkpoint first (atomic), then metrics and pictures (curves.png too): a kill loses at most this epoch."""
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
        },
    )
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    write_pictures(model, val_x, out, device)
    write_curves(out / "curves.png", history)
    model.train()
