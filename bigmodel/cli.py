"""The `bigmodel` command line: thin Typer commands; heavy imports happen inside each command.

Library code raises `BigmodelError`; here it becomes one red line and an exit code
(2 bad input, 1 a failed check), with the traceback only under `--debug`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from bigmodel.errors import BigmodelError

app = typer.Typer(
    name="bigmodel",
    help="Train generative models (AE, VAE, GAN, AAE), export them to ONNX/TensorRT, check parity, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


# --------------------------------------------------------------------------------------------- train
@app.command()
def train(
    family: str = typer.Argument(..., help="Model family: ae, vae, gan or aae (see `bigmodel models`)."),
    arch: str = typer.Option("mlp", help="Architecture: mlp or conv."),
    dataset: str = typer.Option(
        "mnist-5k", help="mnist-5k | digits | PATH.npz | PATH.npy | IMAGE_DIR | mnist | fashion-mnist | cifar10."
    ),
    epochs: int = typer.Option(20, help="Total epochs (with --resume: the epoch to end at)."),
    batch_size: int = typer.Option(128, help="Mini-batch size per process."),
    lr: float | None = typer.Option(None, help="Learning rate (default per family: 1e-3; GAN 2e-4)."),
    latent_dim: int | None = typer.Option(
        None, help="Latent size (default per family: AE 32, VAE 20, GAN 100, AAE 8)."
    ),
    beta: float | None = typer.Option(None, help="VAE: weight of the KL term (default 1)."),
    prior: str | None = typer.Option(None, help="AAE: prior on codes, normal or mixture (default normal)."),
    seed: int = typer.Option(0, help="Seed for weights, data split, shuffling and noise."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/FAMILY)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Train a model on a dataset; writes checkpoint.pt, config.json, metrics.jsonl and PNGs to the run dir.

    Example: bigmodel train vae --epochs 20   (then: bigmodel export runs/vae)
    """
    from bigmodel.training.loop import TrainSettings
    from bigmodel.training.loop import train as run_training

    model_cfg = {k: v for k, v in {"lr": lr, "latent_dim": latent_dim, "beta": beta, "prior": prior}.items()
                 if v is not None}
    settings = TrainSettings(family=family, arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size,
                             seed=seed, device=device, out=str(out) if out else None, resume=resume, model=model_cfg)
    console = _console()
    with _train_progress(console) as report:
        result = run_training(settings, progress=report)
    if not result.history:
        console.print(f"nothing to do: {result.out} already reached epoch {epochs}")
        return
    last = result.history[-1]
    val = "  ".join(f"{k} {v:.4g}" for k, v in last["val"].items())
    console.print(f"[green]done[/green]: epoch {last['epoch']}  validation: {val}")
    console.print(f"run directory: {result.out}  (checkpoint.pt, metrics.jsonl, samples.png, curves.png)")
    console.print(f"next: bigmodel export {result.out}")


class _train_progress:
    """A rich progress bar fed by the training loop's `Progress` callback, refreshed ~10x a second."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                            refresh_per_second=8, transient=False)
        self.bar.__enter__()
        self.task = None
        self.last = 0.0
        return self.report

    def report(self, p) -> None:
        import time

        if self.task is None or p.batch == 1 and not p.done:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task("train", total=p.batches, epoch=f"{p.epoch}/{p.epochs}", info="")
        now = time.perf_counter()
        if p.done:
            val = " ".join(f"{k}={v:.4g}" for k, v in p.record["val"].items())
            self.bar.update(self.task, completed=p.batches, info=f"val {val} | {p.samples_per_s:,.0f} samples/s")
            self.bar.console.print(f"epoch {p.epoch}/{p.epochs}: {val}  ({p.record['seconds']:.1f}s, "
                                   f"{p.samples_per_s:,.0f} samples/s)")
            self.bar.remove_task(self.task)
            self.task = None
        elif now - self.last > 0.1 or p.batch == p.batches:
            self.last = now
            losses = " ".join(f"{k}={float(v):.4g}" for k, v in p.losses.items())
            self.bar.update(self.task, completed=p.batch, info=f"{losses} | {p.samples_per_s:,.0f} samples/s")

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
        return False


# --------------------------------------------------------------------------------------------- models
@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the registered model families and architectures, with their roles and default settings."""
    import dataclasses
    import json

    from bigmodel.models.registry import family_class, list_models

    rows = []
    for info in list_models():
        defaults = family_class(info.family).config_cls()
        rows.append({"family": info.family, "arch": info.arch, "roles": list(info.roles),
                     "latent_dim": defaults.latent_dim, "description": info.description,
                     "settings": {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}})
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("family", "arch", "roles", "latent", "description", box=None)
    for r in rows:
        table.add_row(r["family"], r["arch"], ", ".join(r["roles"]), str(r["latent_dim"]), r["description"])
    _console().print(table)


# -------------------------------------------------------------------------------------------- export
@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run directory holding checkpoint.pt (or the checkpoint file)."),
    out: Path | None = typer.Option(None, help="Bundle folder (default RUN_DIR/bundle)."),
    opset: int = typer.Option(18, help="ONNX opset to write."),
    precision: str = typer.Option("fp32", help="fp32, fp16 or int8."),
    io: str = typer.Option("fp32", "--io", help="fp16 bundles: dtype of graph inputs/outputs, fp32 or fp16."),
    int8_mode: str = typer.Option("static", help="int8: static (calibrated on validation images) or dynamic."),
    calibration: int = typer.Option(256, help="int8 static: number of validation images to calibrate on."),
    max_batch: int = typer.Option(1024, help="Largest batch engines and Triton accept."),
    opt_batch: int = typer.Option(64, help="Batch size TensorRT tunes for."),
    engine: bool = typer.Option(False, "--engine", help="Also build a TensorRT engine per role (needs a GPU)."),
    triton: Path | None = typer.Option(None, help="Also write a Triton model repository to this folder."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the export report as JSON to this file."),
) -> None:
    """Export a trained run: one ONNX graph per role + manifest.json, verified against PyTorch.

    Example: bigmodel export runs/vae --precision fp16
    """
    from bigmodel.export import ExportOptions, export_bundle

    console = _console()
    opts = ExportOptions(out=out, opset=opset, precision=precision, io=io, int8_mode=int8_mode,
                         calibration=calibration, max_batch=max_batch, opt_batch=opt_batch, engine=engine,
                         triton=triton, force=force)
    result = export_bundle(run_dir, opts, progress=lambda msg: console.print(f"  {msg}"))
    total = sum(r.bytes for r in result.roles)
    worst = max(max(r.max_abs_err.values()) for r in result.roles)
    console.print(f"[green]exported[/green] {result.manifest.family}/{result.manifest.arch} -> {result.bundle} "
                  f"({len(result.roles)} roles, {total / 1e6:.2f} MB, {result.seconds:.1f}s)")
    console.print(f"fp32 check: max |onnx - torch| = {worst:.2e} (allowed 1e-05) on validation images, "
                  "prior samples and ±4σ latents: [green]pass[/green]")
    for role, q in result.quality.items():
        console.print(f"{result.manifest.precision} {role}: " + "  ".join(f"{k} {v:.4g}" for k, v in q.items()))
    if json_out:
        _write_json(json_out, _export_report(result))
    console.print(f"next: bigmodel parity {result.bundle}")


def _export_report(result) -> dict:
    from dataclasses import asdict

    return {"bundle": str(result.bundle), "seconds": result.seconds, "roles": [asdict(r) for r in result.roles],
            "quality": result.quality, "manifest": result.manifest.to_dict()}


def _write_json(path: Path, data) -> None:
    import json

    from bigmodel.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    """Entry point of the `bigmodel` console script."""
    try:
        app(standalone_mode=False)
    except BigmodelError as e:
        if _state["debug"]:
            raise
        _error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click's usage errors and aborts
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            _error("aborted")
            sys.exit(1)
        raise


def _error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
