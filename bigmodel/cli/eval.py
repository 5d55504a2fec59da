"""`bigmodel eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bigmodel import console as ui
from bigmodel import tables
from bigmodel.cli.app import BackendOpt, _check_outputs, app


@app.command("eval")
def eval_cmd(
    target: Annotated[
        Path, typer.Argument(help="A bundle folder, or a run folder (exported to a temporary fp32 bundle).")
    ],
    compare: Annotated[
        Path | None, typer.Option("--compare", help="Another bundle or run folder: print its deltas.")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="VAE: importance samples per image for the IWAE NLL bound.")] = 500,
    nll_images: Annotated[
        int, typer.Option(help="VAE: the fixed subset for -ELBO/IWAE: the first N validation images.")
    ] = 500,
    samples: Annotated[
        int, typer.Option(help="Generated images for FID, KID, precision/recall and class coverage.")
    ] = 10000,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Real images to score samples against: a .npz/.npy array or a folder of images of the model's "
            "shape, at least 500 (default: the whole training split of the model's dataset)."
        ),
    ] = None,
    metrics: Annotated[
        str,
        typer.Option(
            help="Comma-separated, from reconstruction, nll, fid, precision-recall, coverage (or all: every one that "
            "applies; on data without class labels, those that need none). What is left out is named."
        ),
    ] = "all",
    seed: Annotated[int, typer.Option(help="Seed of the samples and of the importance draws.")] = 0,
    backend: BackendOpt = "auto",
    precision: Annotated[str | None, typer.Option(
        help="Which verified precision of the bundle to score (e.g. int8), or fastest: per batch, what `bigmodel "
             "tune` measured fastest (default: the bundle's own).")] = None,
    compare_precision: Annotated[str | None, typer.Option(
        help="The same for --compare: `eval B --compare B --compare-precision fastest` is the quality cost of "
             "the forms `fastest` runs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the ort backends (default: physical cores).")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the feature classifier is cached (default $BIGMODEL_CACHE/eval or ~/.cache/bigmodel/eval)."
        ),
    ] = None,
    picture: Annotated[
        Path | None,
        typer.Option(
            help="Also draw the target's samples above their nearest training images into this new PNG "
            "(memorisation at a glance; nothing is drawn without it)."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report (and any comparison) as JSON.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing --json / --picture files.")] = False,
) -> None:
    """Generative quality through the runtime: reconstruction, -ELBO and IWAE NLL, FID, KID, precision/recall, coverage.

    Reconstruction and NLL use the validation split of the model's own dataset. Samples are
    compared with a reference, the whole training split or --reference: FID and KID (each with a
    standard error), precision/recall (Kynkaanniemi et al. 2019) and class coverage, in the feature
    space of a small classifier trained on the training split once and cached (its accuracy is
    printed); on data without class labels those are skipped, said so, and the rest computed.
    Works on every family, on every precision (--precision picks a form of a bundle) and backend.

    Example: bigmodel eval runs/vae/bundle --compare runs/vae/bundle --compare-precision int8
    """
    from bigmodel.eval import EvalOptions, evaluate, load_eval_data, same_data
    from bigmodel.eval import compare as compare_reports
    from bigmodel.eval.run import parse_metrics

    _check_outputs(
        force,
        (json_out, "eval report", (), "--json"),
        (picture, "nearest-neighbour picture", (".png",), "--picture"),
        reads=(target, compare, reference if reference is not None and reference.is_dir() else None),  # no PNG joins it
    )
    console = ui.console()
    paths = [target] + ([compare] if compare else [])
    opts = EvalOptions(
        k=k,
        nll_images=nll_images,
        samples=samples,
        seed=seed,
        backend=backend,
        device=device,
        threads=threads,
        cache_dir=cache_dir,
        metrics=parse_metrics(metrics),
        reference=reference,
    )
    opts.validate()
    with console.status("loading data and the feature classifier"):
        data = load_eval_data(same_data(paths), opts)  # one dataset and classifier for both sides
    reports = []
    for i, path in enumerate(paths):
        opts.picture = picture if i == 0 else None  # only the target's, and only when asked: eval writes no other file
        opts.precision = precision if i == 0 else compare_precision
        with console.status(f"evaluating {path}") as status:
            report = evaluate(path, opts, data, progress=ui.status_progress(status, f"{path}: "))
        reports.append(report)
        tables.print_eval(console, path, report)
    out = {"report": reports[0]}
    if compare:
        deltas = compare_reports(reports[0], reports[1])
        named = [f"{p} ({r['model']['precision']})" if precision or compare_precision else p
                 for p, r in zip(paths, reports, strict=True)]
        tables.print_eval_comparison(console, *named, deltas)
        out.update({"compare": reports[1], "deltas": deltas})
    if json_out:
        from bigmodel.fileio import write_json

        write_json(json_out, out)
        ui.print_saved(console, "report", json_out)
