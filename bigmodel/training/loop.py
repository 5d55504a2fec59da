"""The one training loop: every family, CPU or CUDA, single process or data-parallel under torchrun.

Families only compute losses (`train_step`); this loop owns batching, backward, gradient
averaging across ranks, optimizer steps, validation, checkpoints and pictures.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bigmodel.data import data_record, load_data
from bigmodel.errors import CheckpointError, ConfigError, InputError
from bigmodel.limits import check_count, check_items
from bigmodel.manifest import DataSpec
from bigmodel.models.checkpoint import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint, require_fields
from bigmodel.models.registry import archs, create_model, family_class, make_config
from bigmodel.progress import Progress, ProgressFn
from bigmodel.training.rundir import check_run_folder, config_record, write_epoch

VAL_BATCH = 500
VAL_SEED = 4321  # validation noise is fixed so epochs compare like with like


@dataclass
class TrainSettings:
    """What `bigmodel train` was asked; `model` holds family settings (latent_dim, lr, beta, prior...)."""

    family: str = "vae"
    arch: str | None = None  # None: "mlp" (None lets --resume tell a flag given from a default)
    dataset: str | None = None  # None: "mnist-5k"
    epochs: int | None = None  # None: the family's default (models.base.GenerativeModel.train_defaults)
    batch_size: int | None = None
    seed: int | None = None  # None: 0
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    max_train: int | None = None  # use only the first N training images (tests, smoke runs)
    force: bool = False  # start over in a folder that holds a run

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.family}")


@dataclass
class TrainResult:
    out: Path
    history: list[dict[str, Any]]  # every epoch of the run, restored ones included
    epochs_run: int = 0  # epochs trained by this call
    reports: bool = True  # False on torchrun ranks other than 0: only rank 0 writes and reports
    notes: list[str] = field(default_factory=list)  # defaults fitted to a small dataset, one line each
    learning: dict[str, Any] | None = None  # training.health.learning_report: figures and warnings
    model: Any = field(default=None, repr=False)  # the trained model, until train() has checked it


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(f"--device must be auto, cpu or cuda; got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was asked for, but torch finds no CUDA GPU (torch.cuda.is_available() is False)"
        )
    return torch.device(name)


class Ranks:
    """Rank/world from torchrun's environment; gradient averaging when world > 1."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.dist = dist
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        # One flat all-reduce per step, as DDP's buckets do; DDP itself does not fit GAN/AAE steps
        # that run several forwards and optimizers per batch.
        grads = [p.grad for p in params if p.grad is not None]
        if self.world == 1 or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.world > 1 and self.dist.is_initialized():
            self.dist.destroy_process_group()


def make_step(optimizers: dict[str, torch.optim.Optimizer], ranks: Ranks) -> Callable[[str, torch.Tensor], None]:
    params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}

    def step(name: str, loss: torch.Tensor) -> None:
        opt = optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ranks.average_grads(params[name])
        opt.step()

    return step


@torch.no_grad()
def validate(model, val: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Sample-weighted mean of each validation loss term over the whole validation split."""
    model.eval()
    noise = torch.Generator().manual_seed(VAL_SEED)
    totals: dict[str, float] = {}
    for i in range(0, len(val), VAL_BATCH):
        x = val[i : i + VAL_BATCH].to(device)
        for k, v in model.eval_losses(x, noise).items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(x)
    model.train()
    return {k: v / len(val) for k, v in totals.items()}


# Settings a resumed run may change; every other flag must match the run's own (or be left out).
RESUMABLE = ("epochs", "device")
RESUME_FIELDS = ("family", "arch", "config", "data_spec", "settings", "state_dict", "optimizers", "epoch", "rng")
SEED_MAX = 2**63 - 1


def _restore(settings: TrainSettings, out: Path) -> tuple[TrainSettings, dict[str, Any]]:
    """Settings and state to resume from: the run's own; a flag that contradicts them is refused."""
    path = out / CHECKPOINT_NAME
    state = load_checkpoint(path)
    require_fields(state, RESUME_FIELDS, path, "--resume")
    try:
        saved = TrainSettings(**{k: v for k, v in state["settings"].items() if k in TrainSettings.__dataclass_fields__})
    except TypeError as e:
        raise CheckpointError(f"{path}: its settings are not a bigmodel run's: {e}") from e
    if saved.family != settings.family:
        raise ConfigError(f"--resume: {out} holds a {saved.family} run; got family {settings.family}")
    conflicts = resume_conflicts(settings, saved, state)
    if conflicts:
        raise ConfigError(f"--resume: {out} was trained with {'; '.join(conflicts)}; leave these flags out to "
                          f"continue it (only {', '.join('--' + k for k in RESUMABLE)} may change on resume), "
                          "or train into a new --out")
    saved.epochs = settings.epochs or saved.epochs
    saved.device, saved.out, saved.resume, saved.force = settings.device, str(out), True, False
    return saved, state


def resume_conflicts(asked: TrainSettings, saved: TrainSettings, state: dict[str, Any]) -> list[str]:
    """'--flag SAVED, got ASKED' for each flag given on resume that differs from the run's setting."""
    conflicts = []
    for name, value in (("arch", asked.arch), ("dataset", asked.dataset), ("batch_size", asked.batch_size),
                        ("seed", asked.seed), ("max_train", asked.max_train)):
        had = getattr(saved, name)
        if value is not None and value != had:
            conflicts.append(f"--{name.replace('_', '-')} {had}, got {value}")
    config = state.get("config") or {}
    for name, value in asked.model.items():
        had = config.get(name, saved.model.get(name))
        if value is not None and value != had:
            conflicts.append(f"--{name.replace('_', '-')} {had}, got {value}")
    return conflicts


def validate_settings(settings: TrainSettings) -> None:
    """Refuse bad values before any file is read or written."""
    for name in ("epochs", "batch_size", "max_train"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; got {value!r}")
    bound_sizes(settings)
    seed = settings.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX):
        raise ConfigError(f"--seed must be an integer from 0 to 2**63-1; got {seed!r}")
    if settings.resume and settings.force:
        raise ConfigError("--resume continues the run and --force starts it over; pass one of them")
    family_class(settings.family)  # ConfigError for an unknown family
    if settings.arch is not None and settings.arch not in archs():
        raise ConfigError(f"unknown arch {settings.arch!r}; expected one of: {', '.join(archs())}")
    if settings.device not in ("auto", "cpu", "cuda") and not str(settings.device).startswith("cuda:"):
        raise InputError(f"--device must be auto, cpu or cuda; got {settings.device!r}")
    if not settings.resume:
        make_config(settings.family, **settings.model)


# what one latent unit or one image of a batch costs at most (float32 weights/activations, gradients, Adam's two)
LATENT_UNIT_BYTES = 4 * 4 * 4096  # one row of a layer up to 4096 wide
IMAGE_BYTES = 4 * 4 * 3 * 64 * 64 * 8  # an image up to 3x64x64 and the activations it makes (about 8x)


def bound_sizes(settings: TrainSettings) -> None:
    """Sizes this machine can hold, refused before any work (limits.check_items names the bound)."""
    if settings.epochs is not None:
        check_count(settings.epochs, "--epochs", 10**6)
    if settings.batch_size is not None:
        check_items(settings.batch_size, "--batch-size", IMAGE_BYTES, "images in a batch")
    latent = settings.model.get("latent_dim")
    if isinstance(latent, int) and latent > 0:  # (below 1: the model's config says what it takes)
        check_items(latent, "--latent-dim", LATENT_UNIT_BYTES, "latent units")


def with_defaults(settings: TrainSettings) -> TrainSettings:
    """Fill settings left as None: epochs/batch size from the family's `train_defaults`, then mlp, mnist-5k, 0."""
    defaults = family_class(settings.family).train_defaults
    return replace(settings, epochs=settings.epochs if settings.epochs is not None else defaults["epochs"],
                   batch_size=settings.batch_size if settings.batch_size is not None else defaults["batch_size"],
                   arch=settings.arch or "mlp", dataset=settings.dataset or "mnist-5k",
                   seed=settings.seed if settings.seed is not None else 0)


MIN_STEPS = 500  # a default run makes at least this many optimizer steps (more epochs on a small dataset)
MIN_BATCHES = 8  # a default batch size leaves at least this many batches an epoch
PICTURES_EVERY_S = 5.0  # samples.png, reconstructions.png and curves.png: redrawn at most this often (and at the end)


def fit_to_data(asked: TrainSettings, settings: TrainSettings, n_train: int, world: int = 1
                ) -> tuple[TrainSettings, list[str]]:
    """Defaults that scale with the dataset: a batch size left out is clamped so an epoch has MIN_BATCHES
    batches, epochs left out are raised until MIN_STEPS optimizer steps happen; one note per change.

    >>> fit_to_data(TrainSettings(), TrainSettings(epochs=20, batch_size=128), 90)[0].batch_size
    11
    """
    per_rank = n_train // world
    batch, epochs, notes = settings.batch_size, settings.epochs, []
    if asked.batch_size is None and per_rank // MIN_BATCHES < batch:
        batch = max(1, per_rank // MIN_BATCHES)
        notes.append(f"batch size {batch}: the default {settings.batch_size} would leave fewer than {MIN_BATCHES} "
                     f"batches an epoch of the {per_rank} training images")
    batches = max(1, per_rank // batch)
    if asked.epochs is None and batches * epochs < MIN_STEPS:
        epochs = -(-MIN_STEPS // batches)
        notes.append(f"{epochs} epochs ({batches * epochs} optimizer steps): the default {settings.epochs} would "
                     f"make only {batches * settings.epochs} on {per_rank} images")
    return replace(settings, batch_size=batch, epochs=epochs), notes


def train(settings: TrainSettings, progress: ProgressFn | None = None) -> TrainResult:
    """Train `settings.family` on `settings.dataset`; writes checkpoint, metrics and pictures to the run dir.

    progress gets Progress("train", done=batch, total=batches) after every batch (metrics: epoch, epochs,
    samples_per_s, the batch's losses as "train/NAME") and Progress("train:epoch") after each epoch's
    validation (metrics: the epoch's record, "train/NAME" means and "val/NAME" validation losses).

    >>> train(TrainSettings(family="vae", epochs=5, out="runs/vae"))
    """
    out = settings.out_dir()
    state = None
    # Bad values, unknown family/arch/model settings and an unusable --out fail before any data is read.
    validate_settings(settings)
    stale = None  # the old run's bundle, dropped once the new checkpoint has landed
    if os.environ.get("RANK", "0") == "0":
        stale = check_run_folder(out, settings.resume, settings.force)
    if settings.resume:
        settings, state = _restore(settings, out)
    asked = settings
    settings = with_defaults(settings)
    device = resolve_device(settings.device)
    data = load_data(settings.dataset, seed=settings.seed)
    train_x = torch.from_numpy(data.train[: settings.max_train])
    val_x = torch.from_numpy(data.val)
    spec = DataSpec(**{**asdict(data.spec), "n_train": len(train_x)})
    settings, notes = fit_to_data(asked, settings, len(train_x), int(os.environ.get("WORLD_SIZE", "1")))
    if progress is not None and os.environ.get("RANK", "0") == "0":
        for note in notes:
            progress(Progress("train:note", note))
    if not 1 <= settings.batch_size <= len(train_x):
        limit = f" (--max-train {settings.max_train})" if settings.max_train else ""
        raise ConfigError(f"--batch-size must be between 1 and the {len(train_x)} training images; got "
                          f"{settings.batch_size}{limit}")

    ranks = Ranks(device)
    try:
        result = _run(settings, state, out, device, ranks, train_x, val_x, spec, progress, stale,
                      data_record(data, out))
    finally:
        ranks.close()
    result.notes = notes
    if result.reports and result.epochs_run and result.model is not None:
        from bigmodel.training.health import learning_report

        result.learning = learning_report(result.model, train_x, val_x, result.history[-1]["val"], device)
    result.model = None  # (only for the check: a result stays plain data)
    return result


def _run(settings, state, out, device, ranks: Ranks, train_x, val_x, spec, progress, stale=None,
         dataset: dict | None = None) -> TrainResult:
    torch.manual_seed(settings.seed)
    if state is None:
        model = create_model(settings.family, settings.arch, spec, **settings.model)
    else:
        model = model_from_checkpoint(state)
    model.to(device).train()
    optimizers = model.optimizers()
    shuffle = torch.Generator().manual_seed(settings.seed)  # same order on every rank
    noise = torch.Generator().manual_seed(settings.seed + 1 + ranks.rank)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if state is not None:
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        shuffle.set_state(state["rng"]["shuffle"])
        if ranks.main:  # only rank 0's noise state is saved; other ranks take a fresh per-epoch seed
            noise.set_state(state["rng"]["noise"])
        else:
            noise.manual_seed(settings.seed + 1 + ranks.rank + 7919 * state["epoch"])
        history = list(state.get("history", []))
        start_epoch = state["epoch"] + 1
    step = make_step(optimizers, ranks)

    per_rank = len(train_x) // ranks.world
    batches = per_rank // settings.batch_size
    if batches < 1:
        raise ConfigError(
            f"--batch-size {settings.batch_size} leaves no full batch on each of {ranks.world} ranks "
            f"({per_rank} images each)"
        )
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
    # written beside the first checkpoint
    config = json.dumps(config_record(settings, model, spec, dataset), indent=2) + "\n"

    drawn = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs + 1):
        order = torch.randperm(len(train_x), generator=shuffle)[ranks.rank :: ranks.world]
        sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        for b in range(batches):
            x = train_x[order[b * settings.batch_size : (b + 1) * settings.batch_size]].to(device, non_blocking=True)
            losses = model.train_step(x, noise, step)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress is not None and ranks.main:
                rate = (b + 1) * settings.batch_size * ranks.world / (time.perf_counter() - t0)
                plain = {"epoch": epoch, "epochs": settings.epochs, "samples_per_s": rate}
                metrics = LossMetrics(plain, {f"train/{k}": v for k, v in losses.items()})
                progress(Progress("train", done=b + 1, total=batches, metrics=metrics))
        seconds = time.perf_counter() - t0
        train_means = {k: float(v) / batches for k, v in sums.items()}
        if not all(math.isfinite(v) for v in train_means.values()):
            raise InputError(f"training diverged at epoch {epoch}: losses {train_means} (try a lower --lr)")
        if ranks.main:
            record = {
                "epoch": epoch,
                "train": train_means,
                "val": validate(model, val_x, device),
                "seconds": round(seconds, 3),
                "samples_per_s": round(batches * settings.batch_size * ranks.world / seconds, 1),
            }
            history.append(record)
            first = epoch == start_epoch
            draw = first or epoch == settings.epochs or time.perf_counter() - drawn >= PICTURES_EVERY_S
            write_epoch(out, settings, model, optimizers, shuffle, noise, epoch, history, val_x, device,
                        config if first else None, stale if first else None, pictures=draw, dataset=dataset)
            drawn = time.perf_counter() if draw else drawn
            if progress is not None:
                progress(Progress("train:epoch", f"epoch {epoch}/{settings.epochs}", batches, batches,
                                  epoch_metrics(record, settings.epochs)))
        ranks.barrier()
    result = TrainResult(out, history, max(0, settings.epochs + 1 - start_epoch), reports=ranks.main)
    result.model = model
    return result


class LossMetrics(Mapping[str, float]):
    """Progress metrics whose loss tensors become floats when first read, not when reported: on a GPU a
    reader that redraws ten times a second costs ten device syncs a second, not one per batch."""

    def __init__(self, plain: dict[str, float], losses: dict[str, torch.Tensor]):
        self._plain, self._losses = plain, losses
        self._floats: dict[str, float] | None = None

    def __getitem__(self, key: str) -> float:
        if key in self._plain:
            return self._plain[key]
        if key not in self._losses:
            raise KeyError(key)
        if self._floats is None:  # one sync for all losses
            values = torch.stack([v.detach() for v in self._losses.values()]).tolist()
            self._floats = dict(zip(self._losses, values, strict=True))
        return self._floats[key]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._plain, *self._losses])

    def __len__(self) -> int:
        return len(self._plain) + len(self._losses)


def epoch_metrics(record: dict[str, Any], epochs: int) -> dict[str, float]:
    """An epoch's history record as flat progress metrics: "train/NAME" and "val/NAME" for its losses."""
    flat = {"epoch": record["epoch"], "epochs": epochs, "seconds": record["seconds"],
            "samples_per_s": record["samples_per_s"]}
    return flat | {f"{group}/{k}": v for group in ("train", "val") for k, v in record[group].items()}
