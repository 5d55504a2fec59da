"""`bigmodel train` and `bigmodel models`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel.cli.app import _locked, app


@app.command()
def train(
    family: Annotated[str, typer.Argument(help="Model family: ae, vae, gan or aae (see `bigmodel models`).")],
    arch: Annotated[str | None, typer.Option(help="Architecture: mlp or conv (default mlp).")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="mnist-5k (default) | digits | PATH.npz | PATH.npy | IMAGE_DIR | mnist | fashion-mnist | cifar10."
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Total epochs, with --resume the epoch to end at (default: 20; GAN 30).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size per process (default: 128; GAN 64).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default per family: 1e-3; GAN 2e-4).")] = None,
    latent_dim: Annotated[
        int | None, typer.Option(help="Latent size (default per family: AE 32, VAE 20, GAN 100, AAE 8).")
    ] = None,
    beta: Annotated[float | None, typer.Option(help="VAE: weight of the KL term (default 1).")] = None,
    prior: Annotated[str | None, typer.Option(help="AAE: prior on codes, normal or mixture (default normal).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for weights, data split, shuffling and noise (default 0).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run directory (default runs/FAMILY): new, empty, or holding a run (then --resume or --force)."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its last checkpoint. May change on resume: --epochs "
            "(the epoch to end at) and --device; any other flag must match the run's settings or be left out.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Start over in an --out that holds a run: its checkpoint, metrics and pictures are "
            "replaced and a bundle exported from it is removed. A folder holding other files is never written.",
        ),
    ] = False,
    max_train: Annotated[
        int | None, typer.Option(help="Train on only the first N training images (smoke runs).")
    ] = None,
) -> None:
    """Train a model on a dataset; writes checkpoint.pt, config.json, metrics.jsonl and PNGs to the run dir.

    Example: bigmodel train vae --epochs 20   (then: bigmodel export runs/vae)
    """
    from bigmodel.training.loop import TrainSettings
    from bigmodel.training.loop import train as run_training

    model_cfg = {
        k: v for k, v in {"lr": lr, "latent_dim": latent_dim, "beta": beta, "prior": prior}.items() if v is not None
    }
    settings = TrainSettings(
        family=family,
        arch=arch,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        out=str(out) if out else None,
        resume=resume,
        model=model_cfg,
        force=force,
        max_train=max_train,
    )
    import os

    console = ui.console()
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes
    with _locked("run", settings.out_dir() if rank0 else None), ui.TrainProgress(console) as report:
        result = run_training(settings, progress=report)
    if result.reports:  # under torchrun only rank 0 reports, as only rank 0 writes
        ui.print_train(console, result)


@app.command()
def models(json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """List the registered model families and architectures, with their roles and default settings."""
    import json

    from bigmodel.models.registry import describe_models

    rows = describe_models()
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    ui.print_models(rows)
