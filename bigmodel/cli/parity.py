"""`bigmodel parity`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel import tables
from bigmodel.cli.app import BACKEND_NAMES, BundleArg, JsonOutOpt, _check_outputs, app


@app.command()
def parity(
    bundle: BundleArg,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="The checkpoint.pt the bundle was exported from (default: beside the bundle); sha256 must match."
        ),
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend",
            help=f"{BACKEND_NAMES}, or all (the default; repeat or comma-separate). all: "
            "those unavailable here are listed as skipped; a backend named here that cannot run is an error (exit 2).",
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option(help="Inputs per probe set, odd and >= 3: each set runs at batch 1 and batch N.")
    ] = 31,
    seed: Annotated[int, typer.Option(help="Seed of every probe set (image picks, noise, latents).")] = 0,
    data: Annotated[
        str | None,
        typer.Option(
            help="Images for the real-data probes (any train --dataset source); default: the bundle's dataset."
        ),
    ] = None,
    atol: Annotated[
        float | None, typer.Option(help="Absolute tolerance for every output (overrides the table).")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option(help="Relative tolerance for every output (overrides the table).")
    ] = None,
    tolerances: Annotated[
        str | None,
        typer.Option(
            help="Hold the bundle to this precision's tolerances (fp32, fp16, int8); default: its own precision."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the ort backends (default: physical cores).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="Which verified precision of the bundle to check (export --precision fp32,int8,...); "
                          "default: its own."),
    ] = None,
    device: Annotated[str, typer.Option(help="GPU of the GPU backends: cuda or cuda:N.")] = "auto",
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="onnxruntime GPU backends: fail if any node falls back to "
            "the CPU provider; report the nodes placed on each provider.",
        ),
    ] = False,
    tf32: Annotated[
        bool,
        typer.Option(
            "--tf32", help="Let fp32 MatMul/Conv use TF32 on the GPU (held to the tf32 tolerances); off by default."
        ),
    ] = False,
    save_inputs: Annotated[
        Path | None,
        typer.Option(
            "--save-inputs", help="Also write each role's inputs to DIR/ROLE.json (for polygraphy --load-inputs)."
        ),
    ] = None,
    json_out: JsonOutOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --json file or --save-inputs files.")
    ] = False,
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

    _check_outputs(force, (json_out, "parity report", (), "--json"), reads=(bundle, checkpoint))
    if save_inputs:
        _check_inputs_folder(bundle, save_inputs, force)
    console = ui.console()
    with ui.ParityProgress(console) as progress:
        report = run_parity(
            bundle,
            checkpoint=checkpoint,
            backends=backend or ["all"],
            samples=samples,
            seed=seed,
            data=data,
            atol=atol,
            rtol=rtol,
            tolerances=tolerances,
            threads=threads,
            precision=precision,
            progress=progress,
            device=device,
            strict=strict,
            tf32=tf32,
        )
    tables.print_parity(console, report)
    if save_inputs:
        files = write_inputs(bundle, save_inputs, samples=samples, seed=seed, data=data)
        ui.print_saved(console, "inputs for polygraphy --load-inputs", ", ".join(str(f) for f in files), markup=True,
                      soft_wrap=True)
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, report.to_dict())
        ui.print_saved(console, "report", json_out)
    tables.print_parity_verdict(console, report)
    if not report.passed:
        raise CheckFailed(
            f"parity failed: {report.failed_checks} of {report.checks} checks on {report.where()}; "
            f"first: {report.messages()[0]}"
        )


def _check_inputs_folder(bundle: Path, folder: Path, force: bool) -> None:
    """--save-inputs DIR: a folder (new or existing) where ROLE.json files may be written."""
    from bigmodel.errors import InputError
    from bigmodel.fileio import check_writable
    from bigmodel.manifest import read_manifest

    if folder.exists() and not folder.is_dir():
        raise InputError(f"--save-inputs {folder} is a file; expected a folder for the ROLE.json input files")
    for role in read_manifest(bundle).roles:
        _check_outputs(force, (folder / f"{role}.json", f"{role} inputs", (), "--save-inputs"), reads=(bundle,))
    check_writable(folder)
