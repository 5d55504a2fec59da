"""`bigmodel export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel.cli.app import JsonOutOpt, _check_outputs, _locked, app


@app.command()
def export(
    run_dir: Annotated[Path | None, typer.Argument(
        help="Run directory holding checkpoint.pt (or the checkpoint file); omit it with --module.")] = None,
    module: Annotated[str | None, typer.Option(
        "--module", metavar="FILE.py:FACTORY",
        help="Your own model: a function (in FILE.py or package.module) returning {role: nn.Module}; "
             "with --family, --data and --out. See docs/own-model.md.")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="--module: a state dict for the factory's modules ({role: state_dict} or 'role.'-prefixed keys), "
             "read with weights_only=True.")] = None,
    family: Annotated[str | None, typer.Option(
        help="--module: the preset that declares the roles' inputs and outputs: vae, ae, gan or aae.")] = None,
    data: Annotated[str | None, typer.Option(
        help="--module: example images (mnist-5k, digits, a .npy/.npz file or an image folder).")] = None,
    value_range: Annotated[str, typer.Option(
        metavar="LOW,HIGH", help="--module: the images' value range, e.g. -1,1 for a tanh generator.")] = "0,1",
    latent: Annotated[str | None, typer.Option(
        metavar="SHAPE", help="--module: the code shape when no encoder shows it, e.g. 100 or 100,1,1.")] = None,
    classes: Annotated[int | None, typer.Option(
        help="--module: class-conditional models with this many classes (a 'labels' input).")] = None,
    image_logits: Annotated[bool, typer.Option(
        "--image-logits", help="--module: the decoder/generator returns Bernoulli logits, not pixels.")] = False,
    dataset: Annotated[str | None, typer.Option(
        metavar="PATH", help="A run whose data moved: where its training images are now (checked against the "
                             "sha256 recorded at training).")] = None,
    out: Annotated[Path | None, typer.Option(help="Bundle folder (default RUN_DIR/bundle).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset to write (18 up to what the installed onnx knows).")] = 18,
    precision: Annotated[str, typer.Option(
        help="fp32, fp16, int8 or bf16 (fp32 graphs run by OpenVINO in bf16): the bundle's precision; several, "
             "fp32 first (fp32,int8,bf16), each verified, for `bigmodel tune` and load(precision='fastest')."
    )] = "fp32",
    io: Annotated[
        str, typer.Option("--io", help="fp16 bundles: dtype of graph inputs/outputs, fp32 or fp16.")
    ] = "fp32",
    int8_mode: Annotated[
        str,
        typer.Option(
            help="int8: static (QDQ, calibrated on validation images), dynamic, or weights (weight-only, "
            "onnxruntime MatMulNBits: fastest at batch 1 on big MLPs)."
        ),
    ] = "static",
    calibration: Annotated[
        int, typer.Option(help="int8 static: validation images (or prior samples) to calibrate on.")
    ] = 256,
    max_batch: Annotated[
        int, typer.Option(help="Largest batch of the TensorRT profile and Triton's max_batch_size.")
    ] = 1024,
    opt_batch: Annotated[int, typer.Option(help="Batch size TensorRT tunes for (and Triton prefers).")] = 64,
    engine: Annotated[
        bool, typer.Option("--engine", help="Also build a TensorRT engine per role (needs a GPU).")
    ] = False,
    triton: Annotated[Path | None, typer.Option(help="Also write a Triton model repository to this folder.")] = None,
    external_data: Annotated[
        bool | None,
        typer.Option(
            "--external-data/--no-external-data", help="Weights beside each graph (default: only over 2 GiB)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a bundle (and Triton repository, --json file) that "
            "bigmodel wrote before; a folder holding anything else is never replaced.",
        ),
    ] = False,
    allow_failing: Annotated[
        bool,
        typer.Option(
            "--allow-failing",
            help="fp16/int8: write the bundle even when its checks fail, with the failures "
            "recorded in its manifest (bigmodel info shows them).",
        ),
    ] = False,
    trust_pickles: Annotated[bool, typer.Option(
        "--trust-pickles",
        help="pythae folders: load custom nets' cloudpickle files (they run code when loaded).")] = False,
    json_out: JsonOutOpt = None,
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

    from bigmodel.errors import InputError
    from bigmodel.export import ExportOptions, export_bundle

    if (run_dir is None) == (module is None):
        raise InputError("bigmodel export: give a run directory (RUN_DIR) or --module FILE.py:FACTORY, not "
                         f"{'both' if module else 'neither'}")
    if module is not None and (out is None or data is None):
        raise InputError("--module needs --out BUNDLE (where to write) and --data (example images, e.g. mnist-5k)")
    from bigmodel.export.from_pythae import export_pythae, is_pythae_folder

    pythae = module is None and is_pythae_folder(run_dir)
    if pythae and (out is None or data is None):
        raise InputError(
            "a pythae model folder needs --data (example images of its input_dim, e.g. mnist-5k) and --out")
    if module is None and run_dir.is_dir() and not pythae and not (run_dir / "checkpoint.pt").is_file():
        from bigmodel.models.checkpoint import foreign

        raise InputError(foreign(run_dir, "no checkpoint.pt, and not a pythae model folder: no model_config.json "
                                          "+ model.pt"))
    if dataset is not None and (module is not None or pythae):
        raise InputError("--dataset goes with a bigmodel run directory; --module and pythae folders take --data")
    if module is None and any(v is not None for v in (weights, family, latent, classes)) or (
            module is None and not pythae and data is not None) or (
            module is None and image_logits):
        raise InputError("--weights, --family, --data, --latent, --classes and --image-logits go with --module")
    bundle = out or (run_dir if run_dir.is_dir() else run_dir.parent) / "bundle"  # export_bundle's default
    _check_outputs(force, (json_out, "export report", (), "--json"), reads=(run_dir or bundle, bundle, triton))
    console = ui.console()
    from bigmodel.export.options import split_precisions

    precision, forms = split_precisions(precision)
    opts = ExportOptions(
        out=out,
        opset=opset,
        precision=precision,
        forms=forms,
        io=io,
        int8_mode=int8_mode,
        calibration=calibration,
        max_batch=max_batch,
        opt_batch=opt_batch,
        engine=engine,
        triton=triton,
        force=force,
        external_data=external_data,
        allow_failing=allow_failing,
    )
    with _locked("bundle", bundle, triton):  # one writer per folder: a second export here exits 2
        if pythae:
            result = export_pythae(run_dir, data, out, value_range=_numbers(value_range, "--value-range"),
                                   trust_pickles=trust_pickles, options=opts, progress=ui.export_steps(console))
        elif module is None:
            result = export_bundle(run_dir, opts, progress=ui.export_steps(console), dataset=dataset)
        else:
            from bigmodel.export.modules import export_modules, load_factory

            roles = load_factory(module, weights)
            result = export_modules(roles, data, out, family=family, value_range=_numbers(value_range, "--value-range"),
                                    latent=_numbers(latent, "--latent", int) if latent else None, classes=classes,
                                    image_logits=image_logits, options=opts, progress=ui.export_steps(console))
    ui.print_export(console, result)
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, result.to_dict())


def _numbers(text: str, flag: str, kind=float) -> tuple:
    from bigmodel.errors import InputError

    try:
        return tuple(kind(v) for v in text.split(","))
    except ValueError as e:
        raise InputError(f"{flag}: expected comma-separated numbers, e.g. {'-1,1' if kind is float else '100,1,1'}; "
                         f"got {text!r}") from e
