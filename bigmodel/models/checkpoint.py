"""Checkpoints: plain dicts of tensors and builtins, written atomically, read with weights_only=True.

The models own their checkpoint format: training writes it, and everything downstream (export,
parity, bench, eval) reads a model back through `load_model` here, never through the training loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bigmodel.errors import CheckpointError
from bigmodel.fileio import atomic_write
from bigmodel.manifest import DataSpec
from bigmodel.models.registry import create_model, family_class

FORMAT = "bigmodel-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_FIELDS = ("family", "arch", "config", "data_spec", "state_dict")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (plus format tags) to `path` via a temporary file and rename."""
    state = {"format": FORMAT, "version": VERSION, **state}

    def write(tmp: str) -> None:
        # through a Python file: a full disk then raises OSError(ENOSPC), not torch's "enforce fail" text
        with open(tmp, "wb") as f:
            torch.save(state, f)

    return atomic_write(path, write)


def require_fields(state: dict[str, Any], fields: tuple[str, ...], path: str | Path, purpose: str) -> None:
    """CheckpointError naming the fields `purpose` needs that the checkpoint lacks."""
    missing = [f for f in fields if f not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}, which {purpose} needs; expected a checkpoint "
                              "written by `bigmodel train`")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; anything else is a one-line CheckpointError.

    `path` may be the file or a run directory holding `checkpoint.pt`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # on garbage, torch.load raises nearly anything (IndexError, KeyError, ...)
        why = ("it pickles Python objects, which bigmodel never loads" if "Unsupported global" in str(e)
               else f"truncated, corrupt or foreign: torch.load fails with {type(e).__name__}")  # (not torch's text:
        raise CheckpointError(foreign(path, f"no readable checkpoint: {why}")) from e  # long, with ANSI escapes)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(foreign(path, f"no format tag {FORMAT!r}; it holds {_holds(state)}"))
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r} unsupported; expected {VERSION}")
    return state


OWN_MODEL_DOC = "docs/own-model.md"


def foreign(path: str | Path, why: str) -> str:
    """The one line for a file or folder that is not a bigmodel run, pointing to exporting one's own model."""
    return f"{path} is not a bigmodel run ({why}); to export your own model see {OWN_MODEL_DOC}"


def _holds(state: Any) -> str:
    """What a foreign checkpoint holds, in a few words."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}"
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"a plain state dict of {len(state)} tensors"
    keys = ", ".join(repr(k)[:40] for k in list(state)[:5]) + (", ..." if len(state) > 5 else "")
    lightning = any("lightning" in str(k) for k in state)
    return f"{'a Lightning checkpoint, ' if lightning else ''}a dict with keys {keys}"


def config_from_dict(family: str, d: dict[str, Any]):
    """Rebuild a family's config dataclass from its JSON/checkpoint form (lists back to tuples)."""
    cls = family_class(family).config_cls
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def model_from_checkpoint(state: dict[str, Any]):
    """The model a checkpoint describes, with its weights loaded, in eval mode on CPU.

    >>> model = model_from_checkpoint(load_checkpoint("runs/vae"))
    """
    require_fields(state, MODEL_FIELDS, "the checkpoint", "rebuilding the model")
    family = state["family"]
    try:
        config = config_from_dict(family, state["config"])
    except TypeError as e:
        raise CheckpointError(f"checkpoint config does not fit the {family} model: {e}") from e
    model = create_model(family, state["arch"], DataSpec.from_dict(state["data_spec"]), **vars(config))
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit the {family}/{state['arch']} model: {e}") from e
    return model.eval()


def load_model(path: str | os.PathLike, mapped: bool = False):
    """The model a checkpoint file (or run directory) holds, weights loaded, eval mode on CPU.

    mapped: memory-map the checkpoint and, where every tensor comes from it, build the model on the
    meta device and let it take the mapped tensors as its own: the weights are in memory once (export
    of big models).

    The model's `data_record` is the checkpoint's "dataset" (data.data_record: where a path dataset lay, and
    its sha256), or None.

    >>> model = load_model("runs/vae")
    """
    if not mapped:
        state = load_checkpoint(path)
        model = model_from_checkpoint(state)
        model.data_record = state.get("dataset")
        return model
    from torch.utils.serialization import config as serialization

    mmap = serialization.load.mmap
    serialization.load.mmap = True
    try:
        state = load_checkpoint(path)
    finally:
        serialization.load.mmap = mmap
    model = _model_on_mapped_weights(state)
    if model is None:
        model = model_from_checkpoint(state)
    model.data_record = state.get("dataset")
    state.clear()
    return model


def _model_on_mapped_weights(state: dict):
    """Build on the meta device and assign the checkpoint's tensors; None when that leaves a tensor unset."""
    try:
        family = state["family"]
        config = config_from_dict(family, state["config"])
        with torch.device("meta"):
            model = create_model(family, state["arch"], DataSpec.from_dict(state["data_spec"]), **vars(config))
        model.load_state_dict(state["state_dict"], assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit the {state.get('family')}/{state.get('arch')} "
                              f"model: {str(e).strip().splitlines()[0][:300]}") from e
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint is missing a field or has a wrong one: {type(e).__name__}: {e}") from e
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return None  # a buffer computed in __init__ (not saved): build the model the ordinary way
    return model.eval()
