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


def _version(value: bool) -> None:
    if value:
        from bigmodel import __version__

        typer.echo(f"bigmodel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


def _check_outputs(force: bool, *outputs: tuple[Path | None, str, tuple[str, ...], str]) -> None:
    """Each (path, what, suffixes, flag) output file usable before any work starts; no two the same file."""
    from bigmodel.errors import InputError
    from bigmodel.fileio import check_output_file

    seen: dict[Path, str] = {}
    for path, what, suffixes, flag in outputs:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{flag} and {seen[key]} name the same file {path}; expected different files")
        seen[key] = flag
        check_output_file(path, force, what, suffixes, flag)


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


# --------------------------------------------------------------------------------------------- train
@app.command()
def train(
    family: str = typer.Argument(..., help="Model family: ae, vae, gan or aae (see `bigmodel models`)."),
    arch: str | None = typer.Option(None, help="Architecture: mlp or conv (default mlp)."),
    dataset: str | None = typer.Option(
        None, help="mnist-5k (default) | digits | PATH.npz | PATH.npy | IMAGE_DIR | mnist | fashion-mnist | cifar10."
    ),
    epochs: int | None = typer.Option(
        None, help="Total epochs, with --resume the epoch to end at (default: 20; GAN 30)."
    ),
    batch_size: int | None = typer.Option(None, help="Mini-batch size per process (default: 128; GAN 64)."),
    lr: float | None = typer.Option(None, help="Learning rate (default per family: 1e-3; GAN 2e-4)."),
    latent_dim: int | None = typer.Option(
        None, help="Latent size (default per family: AE 32, VAE 20, GAN 100, AAE 8)."
    ),
    beta: float | None = typer.Option(None, help="VAE: weight of the KL term (default 1)."),
    prior: str | None = typer.Option(None, help="AAE: prior on codes, normal or mixture (default normal)."),
    seed: int | None = typer.Option(None, help="Seed for weights, data split, shuffling and noise (default 0)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    out: Path | None = typer.Option(None, help="Run directory (default runs/FAMILY): new, empty, or holding a run "
                                               "(then --resume or --force)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint. May change on resume: --epochs "
        "(the epoch to end at) and --device; any other flag must match the run's settings or be left out."),
    force: bool = typer.Option(
        False, "--force", help="Start over in an --out that holds a run: its checkpoint, metrics and pictures are "
        "replaced and a bundle exported from it is removed. A folder holding other files is never written."),
    max_train: int | None = typer.Option(None, help="Train on only the first N training images (smoke runs)."),
) -> None:
    """Train a model on a dataset; writes checkpoint.pt, config.json, metrics.jsonl and PNGs to the run dir.

    Example: bigmodel train vae --epochs 20   (then: bigmodel export runs/vae)
    """
    import os

    from bigmodel.training.loop import TrainSettings
    from bigmodel.training.loop import train as run_training

    model_cfg = {k: v for k, v in {"lr": lr, "latent_dim": latent_dim, "beta": beta, "prior": prior}.items()
                 if v is not None}
    settings = TrainSettings(family=family, arch=arch, dataset=dataset, epochs=epochs, batch_size=batch_size,
                             seed=seed, device=device, out=str(out) if out else None, resume=resume, model=model_cfg,
                             force=force, max_train=max_train)
    console = _console()
    with _train_progress(console) as report:
        result = run_training(settings, progress=report)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports, as only rank 0 writes
        return
    if not result.epochs_run:
        console.print(f"nothing to do: {result.out} already reached epoch {result.history[-1]['epoch']}")
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
    # Plain aligned columns, one line per model whatever the terminal width (a wrapped rich table would not be).
    cells = [("family", "arch", "roles", "latent", "description")]
    cells += [(r["family"], r["arch"], ", ".join(r["roles"]), str(r["latent_dim"]), r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[4])


# -------------------------------------------------------------------------------------------- export
@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run directory holding checkpoint.pt (or the checkpoint file)."),
    out: Path | None = typer.Option(None, help="Bundle folder (default RUN_DIR/bundle)."),
    opset: int = typer.Option(18, help="ONNX opset to write (18 up to what the installed onnx knows)."),
    precision: str = typer.Option("fp32", help="fp32, fp16 or int8: the precision of the bundle's graphs."),
    io: str = typer.Option("fp32", "--io", help="fp16 bundles: dtype of graph inputs/outputs, fp32 or fp16."),
    int8_mode: str = typer.Option(
        "static", help="int8: static (QDQ, calibrated on validation images), dynamic, or weights (weight-only, "
        "onnxruntime MatMulNBits: fastest at batch 1 on big MLPs)."
    ),
    calibration: int = typer.Option(256, help="int8 static: validation images (or prior samples) to calibrate on."),
    max_batch: int = typer.Option(1024, help="Largest batch of the TensorRT profile and Triton's max_batch_size."),
    opt_batch: int = typer.Option(64, help="Batch size TensorRT tunes for (and Triton prefers)."),
    engine: bool = typer.Option(False, "--engine", help="Also build a TensorRT engine per role (needs a GPU)."),
    triton: Path | None = typer.Option(None, help="Also write a Triton model repository to this folder."),
    external_data: bool | None = typer.Option(
        None, "--external-data/--no-external-data", help="Weights beside each graph (default: only over 2 GiB)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a bundle (and Triton repository, --json file) that "
                               "bigmodel wrote before; a folder holding anything else is never replaced."),
    allow_failing: bool = typer.Option(
        False, "--allow-failing", help="fp16/int8: write the bundle even when its checks fail, with the failures "
        "recorded in its manifest (bigmodel info shows them)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the export report as JSON to this file."),
) -> None:
    """Export a trained run: one ONNX graph per role + manifest.json, verified against PyTorch.

    Every graph has a dynamic batch axis, no random operators, passes onnx.checker (full check) and
    matches PyTorch within 1e-5 at fp32 on validation images, prior samples and ±4σ latents, or the
    export fails and nothing is written. fp16/int8 graphs then pass `bigmodel parity`'s checks
    (same inputs, statistics and tolerances) against the fp32 graphs, or the export exits 1 and
    writes nothing; int8 first tries other calibration methods and keeps the most sensitive nodes
    in float. The report gives each role's error against fp32.

    Example: bigmodel export runs/vae --precision fp16 --triton models/
    """
    from rich.markup import escape

    from bigmodel.export import ExportOptions, export_bundle

    _check_outputs(force, (json_out, "export report", (), "--json"))
    console = _console()
    opts = ExportOptions(out=out, opset=opset, precision=precision, io=io, int8_mode=int8_mode,
                         calibration=calibration, max_batch=max_batch, opt_batch=opt_batch, engine=engine,
                         triton=triton, force=force, external_data=external_data, allow_failing=allow_failing)
    result = export_bundle(run_dir, opts, progress=lambda msg: console.print(f"  {msg}", markup=False))
    m = result.manifest
    total = sum(r.bytes for r in result.roles)
    worst = max(_checked_err(r) for r in result.roles)
    console.print(f"[green]exported[/green] {m.family}/{m.arch} {m.precision} -> {result.bundle} "
                  f"({len(result.roles)} roles, {total / 1e6:.2f} MB, opset {m.opset}, {result.seconds:.1f}s)")
    for r in result.roles:
        console.print(f"  {m.roles[r.role].file:<22} {r.bytes / 1e6:9.2f} MB  fp32 |onnx - torch| "
                      f"{_checked_err(r):.1e}{_quality_cell(m.precision, result.quality.get(r.role))}",
                      markup=False)
    console.print(f"fp32 check: max |onnx - torch| = {worst:.2e} (allowed 1e-05) on validation images, "
                  "prior samples and ±4σ latents: [green]pass[/green]")
    if m.precision != "fp32":
        verdict = "[red]FAILED[/red]" if result.failures else "[green]pass[/green]"
        console.print(f"{m.precision} check against the fp32 graphs (bigmodel parity's checks and "
                      f"{m.precision} tolerances): {verdict}")
        for line in result.failures[:_PARITY_SHOWN]:
            console.print(f"[red]FAIL[/red] {escape(line)}", soft_wrap=True)
        if result.failures:
            console.print(f"[red]{len(result.failures)} failed check(s) recorded in {result.bundle}/manifest.json "
                          "(--allow-failing)[/red]")
    for e in m.engines:
        console.print(f"engine {e.file}: TensorRT {e.tensorrt_version}, sm{e.compute_capability}, {e.precision}, "
                      f"batch {e.profile['min']}/{e.profile['opt']}/{e.profile['max']}")
    if result.triton:
        console.print(f"Triton model repository: {result.triton}")
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, _export_report(result))
    console.print(f"next: bigmodel parity {result.bundle}")


def _quality_cell(precision: str, q: dict | None) -> str:
    """One role's cost of fp16/int8: errors against the fp32 graphs, tolerance used, int8 choices."""
    if not q:
        return ""

    def num(key: str, fmt: str) -> str:
        v = q.get(key)
        return format(v, fmt) if isinstance(v, float) else str(v)

    cell = f"  {precision} vs fp32: max {num('max_abs', '.2e')} mean {num('mean_abs', '.2e')}"
    cell += f" PSNR {num('psnr_db', '.1f')} dB" if "psnr_db" in q else ""
    cell += f" (noise/±4σ max {num('max_abs_stress', '.2e')})" if "max_abs_stress" in q else ""
    cell += f", {num('tolerance_used', '.0%')} of tolerance"
    if q.get("calibration"):
        cell += f", calibration {q['calibration']}"
    if q.get("kept_float"):
        cell += f", kept in float: {', '.join(q['kept_float'])}"
    return cell


def _checked_err(report) -> float:
    """Max |onnx - torch| over the inputs the 1e-5 bound applies to (validation images, prior, ±4σ)."""
    from bigmodel.export.options import ABS_CHECKED

    return max((v for k, v in report.max_abs_err.items() if k in ABS_CHECKED), default=0.0)


def _export_report(result) -> dict:
    from dataclasses import asdict

    return {"bundle": str(result.bundle), "seconds": result.seconds, "roles": [asdict(r) for r in result.roles],
            "quality": result.quality, "failures": result.failures,
            "triton": str(result.triton) if result.triton else None,
            "manifest": result.manifest.to_dict()}


# -------------------------------------------------------------------------------------------- parity
@app.command()
def parity(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs)."),
    checkpoint: Path | None = typer.Option(
        None, help="The checkpoint.pt the bundle was exported from (default: beside the bundle); sha256 must match."
    ),
    backend: list[str] = typer.Option(
        ["all"], "--backend", help="ort-cpu, ort-cuda, ort-trt, tensorrt, ov-cpu, or all (repeat or comma-separate). "
        "all: those unavailable here are listed as skipped; a backend named here that cannot run is an error (exit 2)."
    ),
    samples: int = typer.Option(31, help="Inputs per probe set, odd and >= 3: each set runs at batch 1 and batch N."),
    seed: int = typer.Option(0, help="Seed of every probe set (image picks, noise, latents)."),
    data: str | None = typer.Option(
        None, help="Images for the real-data probes (any train --dataset source); default: the bundle's dataset."
    ),
    atol: float | None = typer.Option(None, help="Absolute tolerance for every output (overrides the table)."),
    rtol: float | None = typer.Option(None, help="Relative tolerance for every output (overrides the table)."),
    tolerances: str | None = typer.Option(
        None, help="Hold the bundle to this precision's tolerances (fp32, fp16, int8); default: its own precision."
    ),
    threads: int | None = typer.Option(None, help="CPU threads for the ort backends (default: physical cores)."),
    device: str = typer.Option("auto", help="GPU of the GPU backends: cuda or cuda:N."),
    strict: bool = typer.Option(False, "--strict", help="onnxruntime GPU backends: fail if any node falls back to "
                                "the CPU provider; report the nodes placed on each provider."),
    tf32: bool = typer.Option(False, "--tf32", help="Let fp32 MatMul/Conv use TF32 on the GPU (held to the tf32 "
                              "tolerances); off by default."),
    save_inputs: Path | None = typer.Option(
        None, "--save-inputs", help="Also write each role's inputs to DIR/ROLE.json (for polygraphy --load-inputs)."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the whole report as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file or --save-inputs files."),
) -> None:
    """Check every backend against the PyTorch model, per role and chain; exit 1 if any output is out of tolerance.

    The reference is the checkpoint the bundle came from, in eval mode on the CPU in float32. Inputs:
    validation images, noise images, prior samples and latents out to ±4σ, at batch 1 and batch N,
    through each role and the chains encoder->decoder and generator->discriminator. Per output: max
    and mean abs error, max relative error, cosine; PSNR and uint8 changes for images; sign agreement
    for logits. Exit 0 all pass, 1 a check failed, 2 bad usage or a named backend unavailable.

    Example: bigmodel parity runs/vae/bundle --backend ort-cpu --json parity.json
    """
    from bigmodel.errors import CheckFailed
    from bigmodel.parity import run_parity
    from bigmodel.parity import save_inputs as write_inputs

    _check_outputs(force, (json_out, "parity report", (), "--json"))
    if save_inputs:
        _check_inputs_folder(bundle, save_inputs, force)
    console = _console()
    with _parity_progress(console) as progress:
        report = run_parity(bundle, checkpoint=checkpoint, backends=backend, samples=samples, seed=seed, data=data,
                            atol=atol, rtol=rtol, tolerances=tolerances, threads=threads, progress=progress,
                            device=device, strict=strict, tf32=tf32)
    wide = console if console.is_terminal else _console_wide()
    for b in report.ran:
        wide.print(_parity_table(report, b))
    for b in report.backends:
        if b.status == "skipped":
            console.print(f"skipped {b.backend}: {b.reason}", soft_wrap=True, markup=False)
        elif b.settings.get("placement"):
            console.print(f"{b.backend} nodes per provider: {b.settings['placement']}", soft_wrap=True, markup=False)
    if save_inputs:
        files = write_inputs(bundle, save_inputs, samples=samples, seed=seed, data=data)
        console.print(f"inputs for polygraphy --load-inputs: {', '.join(str(f) for f in files)}", soft_wrap=True)
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, report.to_dict())
        console.print(f"report: {json_out}", markup=False)
    checks = sum(len(c.outputs) for b in report.ran for c in b.cases)
    ran = ", ".join(b.backend for b in report.ran)
    where = f"{ran} against PyTorch ({report.tolerance_precision} tolerances), {report.seconds:.1f}s"
    if report.passed:
        console.print(f"[green]parity passed[/green]: {checks} checks on {where}")
        return
    from rich.markup import escape

    messages = report.messages()
    for m in messages[:_PARITY_SHOWN]:
        console.print(f"[red]FAIL[/red] {escape(m)}", soft_wrap=True)
    if len(messages) > _PARITY_SHOWN:
        console.print(f"... and {len(messages) - _PARITY_SHOWN} more failures (all of them in --json)")
    bad = sum(1 for b in report.ran for c in b.cases for o in c.outputs if not o.passed)
    raise CheckFailed(f"parity failed: {bad} of {checks} checks on {where}; first: {messages[0]}")


_PARITY_SHOWN = 12  # failure lines printed; --json has every one


def _check_inputs_folder(bundle: Path, folder: Path, force: bool) -> None:
    """--save-inputs DIR: a folder (new or existing) where ROLE.json files may be written."""
    from bigmodel.errors import InputError
    from bigmodel.fileio import check_writable
    from bigmodel.manifest import read_manifest

    if folder.exists() and not folder.is_dir():
        raise InputError(f"--save-inputs {folder} is a file; expected a folder for the ROLE.json input files")
    for role in read_manifest(bundle).roles:
        _check_outputs(force, (folder / f"{role}.json", f"{role} inputs", (), "--save-inputs"))
    check_writable(folder)


def _console_wide():
    from rich.console import Console

    return Console(stderr=False, highlight=False, width=160)


def _parity_table(report, run):
    """One backend's checks: a row per role or chain, probe set, batch and output."""
    from rich.table import Table

    def e(v):
        return "" if v is None else f"{v:.1e}"

    tol = report.tolerance_precision
    table = Table("role / chain", "output", "inputs", "max abs", "mean abs", "max rel", "1 - cos", "image / logit",
                  "verdict", box=None, header_style="bold", title_justify="left", pad_edge=False,
                  title=f"{run.backend} vs PyTorch, {report.family}/{report.arch} {report.bundle_precision} bundle, "
                        f"{tol} tolerances ({run.seconds:.1f}s)")
    for column in table.columns:
        column.no_wrap = True
    relaxed = any(t.stress is not None for t in report.tolerances.values())
    if relaxed:
        table.caption = ("* stress inputs (±4σ codes, noise images) lie outside the calibrated range and are held "
                         f"to the {tol} stress rule (see TOLERANCES)")
        table.caption_justify = "left"
    as_p = report.tolerances.get("logit") is not None and report.tolerances["logit"].probability
    if as_p:
        table.caption = (table.caption + "\n" if table.caption else "") + (
            "(p): discriminator logits compared as probabilities, sigmoid(logit)")
        table.caption_justify = "left"
    last = None
    for c in run.cases:
        for o in c.outputs:
            s = o.stats
            if "psnr" in s:
                extra = f"{s['psnr']:.1f} dB, {s['uint8_changed']:.2%} u8"
            elif "sign_agreement" in s:
                extra = f"sign {s['sign_agreement']:.1%}"
            else:
                extra = ""
            verdict = "[green]pass[/green]" if o.passed else "[red]FAIL " + ",".join(
                f.statistic for f in o.failures) + "[/red]"
            cos = s.get("cosine")
            inputs = f"{c.probe} x{c.batch}" + ("*" if relaxed and c.stress else "")
            name = f"{o.output} (p)" if as_p and o.kind == "logit" else o.output
            table.add_row(c.target if c.target != last else "", name, inputs, e(s.get("max_abs")),
                          e(s.get("mean_abs")), e(s.get("max_rel")), e(None if cos is None else 1 - cos), extra,
                          verdict)
            last = c.target
    return table


class _parity_progress:
    """A transient rich progress bar fed by run_parity's (what, done, total) callback."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = None
        if not self.console.is_terminal:  # nothing to animate in a pipe or a log file
            return None
        self.bar = Progress(TextColumn("parity"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            console=self.console, transient=True)
        self.bar.__enter__()
        self.task = None
        return self.report

    def report(self, what: str, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(what, total=total)
        self.bar.update(self.task, description=what, completed=done, total=total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


# ------------------------------------------------------------------------------------------- runtime
# sample / encode / decode / info run on bigmodel.runtime (numpy + onnxruntime or TensorRT), never torch.
_BACKEND_HELP = "auto, ort, ort-cpu, ort-cuda, ort-trt, tensorrt or ov-cpu."
_DEVICE_HELP = "auto, cpu, cuda or cuda:N."


def _runtime_model(bundle: Path, backend: str, device: str, threads: int | None, fallback: bool):
    from bigmodel.runtime import load

    return load(bundle, backend=backend, device=device, threads=threads, fallback=fallback)


def _read_npy(path: Path):
    import numpy as np

    from bigmodel.errors import InputError

    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a .npy file")
    if not path.is_file():
        raise InputError(f"{path}: expected a .npy file; it does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: expected a .npy array file; got {type(e).__name__}: {e}") from e


def _write_npy(path: Path, array) -> None:
    import numpy as np

    from bigmodel.fileio import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def _save_images(path: Path, images, manifest, ncol: int = 8) -> None:
    """A PNG grid of images in the bundle's data range (mapped to [0, 1] for the picture)."""
    from bigmodel.images import save_grid

    lo, hi = manifest.data.value_range
    save_grid(path, (images - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else images, ncol=ncol)


SAMPLE_MAX = 10_000  # images in one PNG grid


@app.command("sample")
def sample_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs)."),
    n: int = typer.Option(64, "-n", "--n", help="Number of samples."),
    seed: int | None = typer.Option(0, help="Seed of numpy's Generator for the prior codes (same seed, same images)."),
    out: Path = typer.Option(Path("samples.png"), help="PNG grid to write."),
    npy: Path | None = typer.Option(None, "--npy", help="Also write the images, (n, C, H, W) float32, to this .npy."),
    latents: Path | None = typer.Option(None, "--latents", help="Also write the prior codes (n, latent) to this .npy."),
    ncol: int = typer.Option(8, help="Images per row of the grid."),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, help="CPU threads (default: the physical cores)."),
    fallback: bool = typer.Option(False, "--fallback", help="Run on the CPU (with a warning) if the GPU can't."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
) -> None:
    """Draw n images from the bundle's prior and save them as a PNG grid (no torch needed).

    Example: bigmodel sample runs/vae/bundle -n 64 --seed 0 --out grid.png
    """
    from bigmodel.errors import InputError
    from bigmodel.runtime.checks import SEED_MAX

    if ncol < 1:
        raise InputError(f"--ncol must be >= 1; got {ncol}")
    if n < 1:
        raise InputError(f"-n must be a positive integer; got {n}")
    if n > SAMPLE_MAX:
        raise InputError(f"-n must be at most {SAMPLE_MAX:,} (one PNG grid); got {n:,} (draw more with the Python "
                         "API: bigmodel.runtime.load(BUNDLE).sample(n))")
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be an integer from 0 to 2**63-1; got {seed}")
    _check_outputs(force, (out, "sample grid", (".png",), "--out"), (npy, "images", (".npy",), "--npy"),
                   (latents, "latent codes", (".npy",), "--latents"))
    model = _runtime_model(bundle, backend, device, threads, fallback)
    z = model.sample_latent(n, seed=seed)
    images = model.decode(z)
    _save_images(out, images, model.manifest, ncol)
    if npy:
        _write_npy(npy, images)
    if latents:
        _write_npy(latents, z)
    extra = "".join(f", {p}" for p in (npy, latents) if p)
    _console().print(f"wrote {out}{extra}: {n} samples of {model.family}/{model.manifest.arch}, seed {seed}, "
                     f"backend {model.backend_name}")


@app.command("encode")
def encode_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs)."),
    images: Path = typer.Argument(..., help=".npy of images (N, C, H, W) or one (C, H, W): uint8, or float in range."),
    out: Path = typer.Option(..., "--out", help=".npy to write the codes (N, latent) float32 to."),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, help="CPU threads (default: the physical cores)."),
    fallback: bool = typer.Option(False, "--fallback", help="Run on the CPU (with a warning) if the GPU can't."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Encode images to latent codes (a VAE gives the mean of q(z|x)); .npy in, .npy out.

    Example: bigmodel encode runs/vae/bundle images.npy --out z.npy
    """
    _check_outputs(force, (out, "codes", (".npy",), "--out"))
    model = _runtime_model(bundle, backend, device, threads, fallback)
    codes = model.encode(_read_npy(images))
    _write_npy(out, codes)
    _console().print(f"wrote {out}: codes {tuple(codes.shape)} float32 (backend {model.backend_name})")


@app.command("decode")
def decode_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs)."),
    codes: Path = typer.Argument(..., help=".npy of latent codes (N, latent) or one (latent,)."),
    out: Path = typer.Option(..., "--out", help=".npy to write the images (N, C, H, W) float32 to."),
    png: Path | None = typer.Option(None, "--png", help="Also save the images as a PNG grid."),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    device: str = typer.Option("auto", help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, help="CPU threads (default: the physical cores)."),
    fallback: bool = typer.Option(False, "--fallback", help="Run on the CPU (with a warning) if the GPU can't."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
) -> None:
    """Decode latent codes to images in the data range; .npy in, .npy (and optionally PNG) out.

    Example: bigmodel decode runs/vae/bundle z.npy --out x.npy --png x.png
    """
    _check_outputs(force, (out, "images", (".npy",), "--out"), (png, "image grid", (".png",), "--png"))
    model = _runtime_model(bundle, backend, device, threads, fallback)
    images = model.decode(_read_npy(codes))
    _write_npy(out, images)
    if png:
        _save_images(png, images, model.manifest)
    also = f" and {png}" if png else ""
    _console().print(f"wrote {out}{also}: images {tuple(images.shape)} float32 (backend {model.backend_name})")


@app.command("info")
def info_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Describe a bundle: roles and their shapes, precision, prior, engines, versions, file checks, backends.

    Example: bigmodel info runs/vae/bundle --json
    """
    import json

    from bigmodel.runtime.inspect import describe

    d = describe(bundle)
    if json_out:
        typer.echo(json.dumps(d, indent=2, default=str))
        _info_verdict(bundle, d)
        return
    from rich.table import Table

    console = _console()
    m = d["manifest"]
    data, latent = m["data"], m["latent"]
    params = f" ({len(latent['params'].get('means', []))} components)" if latent["prior"] == "mixture" else ""
    console.print(f"[bold]{bundle}[/bold]: {m['family']}/{m['arch']}, precision {m['precision']}, "
                  f"opset {m['opset']}, format {m['format_version']}")
    console.print(f"data: {data['source']} {tuple(data['shape'])} in {tuple(data['value_range'])}   "
                  f"latent: {latent['dim']}, prior {latent['prior']}{params}   methods: {', '.join(d['methods'])}")
    console.print(f"prior: {latent['params'].get('source') or 'set by the model family (not fitted to data)'}")
    roles = Table("role", "file", "MB", "sha256", "inputs", "outputs", box=None, title="roles", title_justify="left")
    for name, r in d["roles"].items():
        ios = [", ".join(f"{t['name']} {t['dtype']} ({', '.join(map(str, t['shape']))})" for t in r[k])
               for k in ("inputs", "outputs")]
        roles.add_row(name, r["file"], f"{r['bytes'] / 1e6:.2f}", _check_cell(r["check"]), *ios)
    console.print(roles)
    if d["engines"]:
        eng = Table("role", "file", "precision", "TensorRT", "GPU", "profile min/opt/max", "sha256", "here",
                    box=None, title="TensorRT engines", title_justify="left")
        for e in d["engines"]:
            p = e["profile"]
            eng.add_row(e["role"], e["file"], e["precision"], e["tensorrt_version"],
                        f"sm {e['compute_capability']} {e['device_name']}".strip(),
                        f"{p.get('min')}/{p.get('opt')}/{p.get('max')}", _check_cell(e["check"]),
                        e["here"].split(":", 1)[0])
        console.print(eng)
    else:
        console.print("TensorRT engines: none (build them on the target GPU with `bigmodel export RUN_DIR --engine`)")
    _print_verification(console, m)
    console.print("versions: " + "  ".join(f"{k} {v}" for k, v in m["versions"].items()))
    console.print("backends here: " + "  ".join(
        f"{k} [green]yes[/green]" if v is None else f"{k} [dim]no[/dim]" for k, v in d["backends"].items()))
    console.print("TF32 on the GPU: " + "; ".join(f"{k} {v}" for k, v in d.get("tf32", {}).items()), markup=False)
    if d.get("tuning"):
        _tuning_table(console, d["tuning"])
    _info_verdict(bundle, d)


def _print_verification(console, m: dict) -> None:
    """fp16/int8 bundles: export's check against the fp32 graphs, per role's cost, and any failures."""
    from rich.markup import escape

    v, quality = m["extra"].get("verification"), m["extra"].get("quality", {})
    if not v:
        return
    verdict = "[green]passed[/green]" if v.get("passed") else "[red]FAILED (written with --allow-failing)[/red]"
    console.print(f"{m['precision']} check at export against the fp32 graphs ({v.get('tolerances')} tolerances): "
                  f"{verdict}")
    for role, q in quality.items():
        console.print(f"  {role}: {escape(_quality_cell(m['precision'], q).strip())}", soft_wrap=True)
    failures = v.get("failures") or []
    for line in failures[:_PARITY_SHOWN]:
        console.print(f"[red]FAIL[/red] {escape(line)}", soft_wrap=True)
    if len(failures) > _PARITY_SHOWN:
        console.print(f"... and {len(failures) - _PARITY_SHOWN} more (all in manifest.json, extra.verification)")


def _info_verdict(bundle: Path, d: dict) -> None:
    """Exit 1 (after the table) when a file the manifest names is missing, altered or outside the bundle."""
    from bigmodel.errors import CheckFailed

    bad = [f"role {k}: {r['file']} {r['check']}" for k, r in d["roles"].items() if r["check"] != "ok"]
    bad += [f"engine of {e['role']}: {e['file']} {e['check']}" for e in d["engines"] if e["check"] != "ok"]
    if bad:
        raise CheckFailed(f"bundle {bundle} is damaged: {'; '.join(bad)} (re-export it)")


def _check_cell(check: str) -> str:
    return "[green]ok[/green]" if check == "ok" else f"[red]{check}[/red]"


def _tuning_table(console, tuning: dict) -> None:
    """The tuning table (p50 ms per backend, the fastest marked) and whether it applies here."""
    from rich.table import Table

    t = tuning["table"]
    if t is None:
        console.print(f"[red]tuning table: {tuning['stale']}[/red]", soft_wrap=True)
        return
    m = t["machine"]
    state = "[green]applies here[/green]" if tuning["stale"] is None else f"[yellow]stale: {tuning['stale']}[/yellow]"
    table = Table("role", "batch", *[f"{b} ms" for b in t["backends"]], "fastest", box=None, title_justify="left",
                  title=f"tuning ({tuning['file']}: {m['cpu']}, {m['threads']} threads)")
    for role, cells in t["roles"].items():
        for batch, cell in cells.items():
            table.add_row(role, batch, *[f"{cell['p50_s'][b] * 1e3:.3f}" if b in cell["p50_s"] else "-"
                                         for b in t["backends"]], cell["best"])
    console.print(table)
    console.print(f"tuning table {state}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------- tune
@app.command()
def tune(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs)."),
    batch_sizes: str = typer.Option("1,4,16,64,256,1024", help="Comma-separated batch sizes to measure."),
    backends: str | None = typer.Option(None, help="Comma-separated runtime backends (default: every one for the "
                                        "device; those that cannot run here are listed as skipped)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int | None = typer.Option(None, help="CPU threads (default: physical cores); a load with another "
                                       "count ignores the table."),
    seconds: float = typer.Option(0.6, help="Timed seconds per backend and cell (over 3 alternating rounds)."),
    json_out: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Measure every backend per role and batch size; write BUNDLE/tuning.json for load(backend="auto").

    With the table, `auto` sends each call to the backend that was fastest for the nearest measured
    batch size. A table measured on another CPU, thread count, engine version or graph is ignored
    with a warning.

    Example: bigmodel tune runs/vae/bundle --batch-sizes 1,16,256,1024
    """
    import json

    from bigmodel.bench import parse_list
    from bigmodel.bench.tune import tune_bundle

    console = _console_for_tables()
    with console.status("tuning") as status:
        table = tune_bundle(bundle, batch_sizes=parse_list(batch_sizes, int, "--batch-sizes") or (),
                            threads=threads, backends=parse_list(backends, str, "--backends"), device=device,
                            seconds=seconds, progress=lambda what: status.update(f"tuning: {what}"))
    if json_out:
        typer.echo(json.dumps(table, indent=2))
        return
    _tuning_table(console, {"file": str(bundle / "tuning.json"), "stale": None, "table": table})
    for name, reason in table.get("skipped", {}).items():
        console.print(f"[dim]skipped {name}: {reason}[/dim]", soft_wrap=True, markup=False)


# --------------------------------------------------------------------------------------------- bench
@app.command()
def bench(
    bundle: Path = typer.Argument(..., help="Bundle folder (manifest.json + role graphs) from `bigmodel export`."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (torch runs there too)."),
    backends: str | None = typer.Option(
        None, help="Comma-separated, from torch,torch-cudagraph,ort-cpu,ort-cuda,ort-trt,tensorrt,ov-cpu "
                   "(default: torch and the CPU backends on cpu; all of them on cuda). Unavailable ones are listed "
                   "as skipped."),
    roles: str | None = typer.Option(None, help="Comma-separated roles, e.g. decoder (default: every role)."),
    batch_sizes: str = typer.Option("1,16,256,1024", help="Comma-separated batch sizes."),
    warmup: int = typer.Option(10, help="Untimed runs per backend, role and batch before timing."),
    iters: int | None = typer.Option(None, help="Timed runs per backend, role and batch (instead of --duration)."),
    duration: float | None = typer.Option(None, help="Seconds of timed runs per backend, role and batch "
                                                     "(default 1; at least 5 runs)."),
    threads: int | None = typer.Option(None, help="CPU threads for torch and onnxruntime alike (default: "
                                                  "physical cores)."),
    copies: bool = typer.Option(True, "--copies/--no-copies",
                                help="CUDA: include host<->device copies of inputs and outputs in each timed run."),
    checkpoint: Path | None = typer.Option(None, help="Checkpoint for the torch baseline (default: "
                                                      "BUNDLE/../checkpoint.pt)."),
    seed: int = typer.Option(0, help="Seed of the random inputs."),
    tf32: bool = typer.Option(False, "--tf32", help="CUDA: let fp32 MatMul/Conv use TF32 (torch, onnxruntime, "
                              "TensorRT alike); off by default."),
    strict: bool = typer.Option(False, "--strict", help="onnxruntime GPU backends: no node may fall back to the CPU "
                                "provider (the backend is skipped with the reason otherwise)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON to this file."),
    plot: Path | None = typer.Option(None, "--plot", help="Write latency and throughput against batch size "
                                                          "to this PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json / --plot files."),
) -> None:
    """Latency and throughput of every backend side by side, against PyTorch eager in the same run.

    Per backend, role and batch: cold phases (load, first run), warm p50/p90/p99/mean/min/max/cv,
    samples/s and speed-up over torch (torch p50 / backend p50).

    Example: bigmodel bench runs/vae/bundle --batch-sizes 1,256 --plot bench.png
    """
    from bigmodel.bench import BenchSettings, parse_list, run_bench, write_plot

    _check_outputs(force, (json_out, "bench report", (), "--json"), (plot, "plot", (".png",), "--plot"))
    settings = BenchSettings(
        device=device, backends=parse_list(backends, str, "--backends"), roles=parse_list(roles, str, "--roles"),
        batch_sizes=parse_list(batch_sizes, int, "--batch-sizes") or (), warmup=warmup, iters=iters,
        duration=duration, threads=threads, copies=copies, checkpoint=checkpoint, seed=seed, tf32=tf32, strict=strict)
    console = _console_for_tables()
    with _bench_progress(console) as report_progress:
        report = run_bench(bundle, settings, progress=report_progress)
    _bench_table(console, report)
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, report)
        console.print(f"JSON report: {json_out}")
    if plot:
        write_plot(report, plot)
        console.print(f"plot: {plot}")


def _console_for_tables():
    """The terminal's width on a terminal; 160 columns when the output goes to a file or pipe."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=160)


class _bench_progress:
    """A rich progress bar over the bench's (backend, role, batch) cells."""

    def __init__(self, console):
        self.console = console

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            TimeElapsedColumn(), console=self.console, transient=True)
        self.bar.__enter__()
        self.task = self.bar.add_task("starting", total=None)
        return self.report

    def report(self, event) -> None:
        self.bar.update(self.task, total=event.total, completed=event.done, description=event.what)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
        return False


def _bench_table(console, report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from bigmodel.bench import NOISY_CV, TABLE_COLUMNS, table_rows

    s, m = report["settings"], report["machine"]
    where = m.get("gpu", {}).get("name") if s["device"].startswith("cuda") and m.get("gpu") else m.get("cpu")
    table = Table(*TABLE_COLUMNS, box=None, title=f"{s['family']}/{s['arch']} {s['precision']} on {s['device']} "
                  f"({where}; {s['threads']} threads)", title_justify="left")
    for col in table.columns[2:]:
        col.justify = "right"
    last = None
    for row in table_rows(report):
        if last is not None and (row.role, row.batch) != last:
            table.add_section()
        last = (row.role, row.batch)
        cells = list(row.cells)
        if row.noisy:
            cells[8] = f"[yellow]{cells[8]}[/yellow]"
        table.add_row(*cells)
    console.print(table)
    if any(r["noisy"] for r in report["results"]):
        console.print(f"[yellow]warning[/yellow]: cv > {NOISY_CV:.0%} marked '!': timings vary a lot (a busy or "
                      "noisy machine); compare p50s with care, or rerun with a longer --duration")
    load = m.get("load_average_1m")
    if load is not None and load > m.get("logical_cpus", 1):
        console.print(f"[yellow]warning[/yellow]: load average {load:.1f} on {m['logical_cpus']} CPUs while "
                      "benchmarking: other processes compete for the cores, so these figures understate both sides")
    if s["device"].startswith("cuda"):
        console.print(f"copies: {escape(s['copies_note'])}")
        for name, used in report.get("backend_settings", {}).items():
            if used:
                console.print(f"[dim]{name}: {escape(', '.join(f'{k}={v}' for k, v in used.items()))}[/dim]")
    for sk in report["skipped"]:
        where = f" {sk['role']} batch {sk['batch']}" if "role" in sk else ""
        console.print(f"[dim]skipped {sk['backend']}{where}: {escape(sk['reason'])}[/dim]")


# ---------------------------------------------------------------------------------------------- eval
@app.command("eval")
def eval_cmd(
    target: Path = typer.Argument(..., help="A bundle folder, or a run folder (exported to a temporary fp32 bundle)."),
    compare: Path | None = typer.Option(None, "--compare", help="Another bundle or run folder: print its deltas."),
    k: int = typer.Option(500, "--k", help="VAE: importance samples per image for the IWAE NLL bound."),
    nll_images: int = typer.Option(500, help="VAE: the fixed subset for -ELBO/IWAE: the first N validation images."),
    samples: int = typer.Option(2000, help="Generated images for FID, precision/recall and class coverage."),
    seed: int = typer.Option(0, help="Seed of the samples and of the importance draws."),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, help="CPU threads for the ort backends (default: physical cores)."),
    cache_dir: Path | None = typer.Option(None, help="Where the feature classifier is cached "
                                          "(default $BIGMODEL_CACHE/eval or ~/.cache/bigmodel/eval)."),
    picture: Path | None = typer.Option(None, help="PNG of samples above their nearest training images "
                                        "(default: TARGET-nearest.png beside the target folder)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report (and any comparison) as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json / --picture files."),
) -> None:
    """Generative quality through the runtime: reconstruction, -ELBO and IWAE NLL, FID, precision/recall, coverage.

    Real images are the validation split of the model's own dataset; the feature net for FID,
    precision/recall (Kynkaanniemi et al. 2019) and class coverage is a small classifier trained
    on the training split once and cached (its accuracy is printed). Works on every family, on
    fp32/fp16/int8 bundles and on any backend.

    Example: bigmodel eval runs/vae/bundle-int8 --compare runs/vae/bundle
    """
    from rich.table import Table

    from bigmodel.eval import EvalOptions, evaluate, load_eval_data, same_data
    from bigmodel.eval import compare as compare_reports
    from bigmodel.eval.report import compare_rows, summary_rows

    _check_outputs(force, (json_out, "eval report", (), "--json"),
                   (picture, "nearest-neighbour picture", (".png",), "--picture"))
    console = _console()
    paths = [target] + ([compare] if compare else [])
    opts = EvalOptions(k=k, nll_images=nll_images, samples=samples, seed=seed, backend=backend, device=device,
                       threads=threads, cache_dir=cache_dir)
    opts.validate()
    with console.status("loading data and the feature classifier"):
        data = load_eval_data(same_data(paths), opts)  # one dataset and classifier for both sides
    reports = []
    for path in paths:
        opts.picture = picture if picture and path == target else path.with_name(f"{path.name}-nearest.png")
        with console.status(f"evaluating {path}") as status:
            report = evaluate(path, opts, data, progress=lambda m, s=status, p=path: s.update(f"{p}: {m}"))
        reports.append(report)
        m, d = report["model"], report["data"]
        table = Table("metric", "value", "note", box=None, title_justify="left",
                      title=f"{path}: {m['family']}/{m['arch']} {m['precision']} on {m['backend']}, "
                            f"{d['images']} {d['source']} validation images, {samples} samples ({report['seconds']}s)")
        for row in summary_rows(report):
            table.add_row(*row)
        console.print(table)
        console.print(f"samples above their nearest training images: {report['picture']}", markup=False)
    out = {"report": reports[0]}
    if compare:
        deltas = compare_reports(reports[0], reports[1])
        table = Table("metric", str(target), str(compare), "other - this", box=None, title="comparison",
                      title_justify="left")
        for row in compare_rows(deltas):
            table.add_row(*row)
        console.print(table)
        out.update({"compare": reports[1], "deltas": deltas})
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, out)
        console.print(f"report: {json_out}", markup=False)


# -------------------------------------------------------------------------------------------- doctor
@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """What this machine has for bigmodel: Python, torch (+ CUDA, GPU), onnx, onnxruntime and its providers,
    TensorRT, cuda-python, and which backends can run here (if not: why, and what installs them). Always exits 0.
    """
    import json

    try:
        from bigmodel.doctor import gather

        report = gather()
    except Exception as e:  # doctor reports; it never fails
        report = {"error": f"{type(e).__name__}: {e}", "packages": [], "backends": []}
    if json_out:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console_for_tables()
    packages = Table("package", "version", "detail", box=None, title="found", title_justify="left")
    for p in report["packages"]:
        version = p["version"] if p["found"] else f"[red]{p['version'] or 'missing'}[/red]"
        packages.add_row(p["name"], version, escape(p["detail"]))
    console.print(packages)
    backends = Table("backend", "here", "why not / what installs it", box=None, title="backends",
                     title_justify="left")
    for b in report["backends"]:
        backends.add_row(b["name"], "[green]yes[/green]" if b["ok"] else "[red]no[/red]",
                         "" if b["ok"] else escape(b["why"]) + ("" if "install" in b["why"] else
                                                                 f"\n[dim]install: {escape(b['extra'] or '')}[/dim]"))
    console.print(backends)
    if report.get("error"):
        console.print(f"[red]doctor could not finish[/red]: {escape(report['error'])}")


# ---------------------------------------------------------------------------------------- quickstart
@app.command()
def quickstart(
    family: str = typer.Option("vae", help="Model family: vae, ae, gan or aae (mlp arch)."),
    out: Path = typer.Option(Path("runs/quickstart"), help="Run directory; its bundle/ is replaced."),
    epochs: int | None = typer.Option(None, help="Training epochs (default 30 for vae, ae and aae: clear digits "
                                                 "from the VAE in about 2 minutes on 2 CPU cores; gan: its "
                                                 "training default)."),
    max_train: int | None = typer.Option(None, help="Train on only the first N images (smoke runs)."),
    bench_duration: float = typer.Option(1.0, help="Seconds of timed runs per backend and batch."),
    threads: int | None = typer.Option(None, help="CPU threads for torch and onnxruntime (default: physical "
                                                  "cores)."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that holds an earlier run."),
) -> None:
    """Everything on the bundled digits in about two minutes on a laptop CPU: train, export to ONNX, check
    parity against PyTorch, bench torch against onnxruntime, and draw samples with the runtime.

    Example: bigmodel quickstart   (then try the commands it prints)
    """
    from bigmodel.quickstart import STAGES, run_quickstart

    console = _console()
    bar = _train_progress(console)
    state = {"report": None}

    def close_bar() -> None:
        if state["report"] is not None:
            bar.__exit__(None, None, None)
            state["report"] = None

    def on_stage(name: str, message: str) -> None:
        close_bar()
        from rich.markup import escape

        console.print(f"[bold]\\[{STAGES.index(name) + 1}/{len(STAGES)}] {name}[/bold]: {escape(message)}",
                      soft_wrap=True)
        if name == "train":
            state["report"] = bar.__enter__()

    try:
        summary = run_quickstart(family=family, out=out, epochs=epochs, max_train=max_train,
                                 bench_duration=bench_duration, threads=threads, stage=on_stage, force=force,
                                 train_progress=lambda p: state["report"] and state["report"](p))
    finally:
        close_bar()
    _quickstart_summary(console, summary)
    if not summary.parity_passed:
        raise typer.Exit(1)


def _quickstart_summary(console, s) -> None:
    from rich.markup import escape

    def say(line: str) -> None:
        console.print(line, soft_wrap=True)

    steps = ", ".join(f"{k} {v:.0f}s" for k, v in s.seconds.items())
    say(f"\n[green]quickstart done[/green] in {s.total_seconds:.0f}s ({steps})")
    val = "  ".join(f"{k} {v:.4g}" for k, v in s.validation.items())
    say(f"  run directory  {escape(str(s.out))}  (checkpoint.pt, samples.png, curves.png, metrics.jsonl)")
    say(f"  validation     {val}  after {s.epochs} epoch(s)")
    say(f"  bundle         {escape(str(s.bundle))}  (ONNX graphs + manifest.json)")
    say(f"  samples        {escape(str(s.files['samples']))}  (drawn by the runtime from the bundle, no torch)")
    verdict = "[green]PASS[/green]: onnxruntime (CPU) matches PyTorch within fp32 tolerances" if s.parity_passed \
        else "[red]FAIL[/red]: " + escape("; ".join(s.parity_failures[:3]))
    say(f"  parity         {verdict}  ({escape(str(s.files['parity']))})")
    ups = ", ".join(f"{v:.2f}x at batch {b}" if v is not None else f"- at batch {b}" for b, v in s.speedups.items())
    say(f"  speed-up       onnxruntime over torch eager on {s.bench_role}: {ups}  ({escape(str(s.files['bench']))})")
    for backend, lat in s.latency_ms.items():
        say(f"                 {backend:8s} p50 " + ", ".join(f"{ms:.3f} ms @ {b}" for b, ms in lat.items()))
    if s.load_average is not None and s.cpus and s.load_average > s.cpus:
        say(f"  [yellow]warning[/yellow]: the machine was busy (load average {s.load_average:.1f} on {s.cpus} CPUs), "
            "so the speed-ups above are unreliable; rerun `bigmodel bench` when it is quiet")
    console.print("next:")
    for cmd in s.next_commands:
        console.print(f"  {cmd}", markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- main
# optional packages -> the extra that brings them (train, export, parity, bench, models need torch)
MISSING_EXTRA = {"torch": "cpu", "onnx": "cpu", "onnxscript": "cpu", "onnxslim": "cpu", "mlxtend": "cpu",
                 "matplotlib": "cpu", "sklearn": "cpu", "onnxruntime": "runtime", "PIL": "runtime"}


def main() -> None:
    """Entry point of the `bigmodel` console script."""
    try:
        app()  # standalone: Typer shows usage errors itself and exits 2
    except BigmodelError as e:
        if _state["debug"]:
            raise
        _error(str(e))
        sys.exit(e.exit_code)
    except OSError as e:  # the machine refused: disk full, read-only, permission (library code names its paths)
        from bigmodel.fileio import STORAGE_ERRNOS, storage_error

        if _state["debug"]:
            raise
        _error(str(storage_error(e, e.filename or "a file", "write")) if e.errno in STORAGE_ERRNOS
               else f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
        sys.exit(3 if e.errno in STORAGE_ERRNOS else 2)
    except ModuleNotFoundError as e:  # an optional package missing (e.g. torch in a runtime-only install)
        extra = MISSING_EXTRA.get((e.name or "").split(".")[0])
        if extra is None or _state["debug"]:
            raise
        _error(f"this command needs the '{e.name}' package, which is not installed here; install it with: "
               f"pip install 'bigmodel[{extra}]'" + (" (install the torch build for your platform first, see "
                                                     "README)" if extra == "cpu" else ""))
        sys.exit(2)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)


def _error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # escape: messages carry things like "pip install 'bigmodel[gpu]'" that rich would eat as markup
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
