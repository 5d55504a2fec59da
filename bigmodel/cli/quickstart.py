"""`bigmodel quickstart`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel.cli.app import _locked, app


@app.command()
def quickstart(
    family: Annotated[str, typer.Option(help="Model family: vae, ae, gan or aae (mlp arch).")] = "vae",
    out: Annotated[Path, typer.Option(help="Run directory; its bundle/ is replaced.")] = Path("runs/quickstart"),
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Training epochs (default 30 for vae, ae and aae: clear digits "
            "from the VAE in about 25 s on 2 CPU cores; gan: its "
            "training default)."
        ),
    ] = None,
    max_train: Annotated[int | None, typer.Option(help="Train on only the first N images (smoke runs).")] = None,
    bench_duration: Annotated[float, typer.Option(help="Seconds of timed runs per backend and batch.")] = 1.0,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for torch and onnxruntime (default: physical cores).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in an --out that holds an earlier run.")] = False,
) -> None:
    """Everything on the bundled digits in about 25 s on a 2-core CPU: train, export to ONNX, check
    parity against PyTorch, bench torch against onnxruntime, and draw samples with the runtime.

    Example: bigmodel quickstart   (then try the commands it prints)
    """
    from bigmodel.quickstart import run_quickstart

    console = ui.console()
    screen = ui.QuickstartProgress(console)

    try:
        with _locked("run", out):  # one writer per run folder
            summary = run_quickstart(
                family=family,
                out=out,
                epochs=epochs,
                max_train=max_train,
                bench_duration=bench_duration,
                threads=threads,
                progress=screen.report,
                force=force,
            )
    finally:
        screen.close()
    ui.quickstart_summary(console, summary)
    if not summary.parity_passed:
        raise typer.Exit(1)
